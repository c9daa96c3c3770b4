"""The chaos suite's private world: its own PostgreSQL cluster and the project's processes.

Everything runs on 127.0.0.1. The PostgreSQL cluster lives in a temporary directory on a free
port and is started, crashed and restarted with Debian's `pg_ctl` (as the `postgres` user when
run as root), so the machine's shared PostgreSQL is never touched. Every process is started in
its own session (process group) and killed as a group at the end, even on errors or Ctrl-C.
The port, wait, /proc and spawn helpers are bench/stack.py's: one copy for bench and tests.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from stack import ROOT, free_port, spawn

VENV_BIN = Path(sys.executable).parent


class PrivatePostgres:
    """A throw-away PostgreSQL cluster: initdb in a temp dir, a free port, trust auth."""

    def __init__(self, *, log_dir: Path) -> None:
        bindirs = sorted(
            Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name)
        )
        if not bindirs:
            raise RuntimeError(
                "no PostgreSQL binaries under /usr/lib/postgresql/*/bin (apt-get install postgresql)"
            )
        self.bin = bindirs[-1]
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="chaos-pg-"))
        self.data = self.dir / "data"
        self.log = log_dir / "postgres.log"
        self.as_pg = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        self.url = f"postgres://postgres@127.0.0.1:{self.port}/reviews"

    def _run(
        self, *args: str, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess:
        return subprocess.run(
            [*self.as_pg, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=check,
            cwd="/",
        )

    def init(self) -> None:
        if self.as_pg:
            shutil.chown(self.dir, "postgres")
            self.log.touch()
            shutil.chown(self.log, "postgres")
        self._run(
            str(self.bin / "initdb"),
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
        )
        self.start()
        self._run(
            str(self.bin / "createdb"),
            "-h",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-U",
            "postgres",
            "reviews",
        )

    def _options(self) -> str:
        # Quick autovacuum so the idle-transaction scenario shows what vacuum can and cannot do.
        return (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.dir} -c max_connections=200 "
            "-c autovacuum_naptime=5s -c log_min_messages=warning -c shared_buffers=64MB"
        )

    def ctl(self, action: str, *extra: str, check: bool = True) -> subprocess.CompletedProcess:
        return self._run(
            str(self.bin / "pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            str(self.log),
            "-w",
            "-t",
            "60",
            "-o",
            self._options(),
            action,
            *extra,
            check=check,
        )

    def start(self) -> None:
        self.ctl("start")

    def stop_immediate(self) -> None:
        self.ctl("stop", "-m", "immediate")

    def restart_immediate(self) -> None:
        self.ctl("restart", "-m", "immediate")

    def destroy(self) -> None:
        try:
            if (self.data / "postmaster.pid").exists():
                self.ctl("stop", "-m", "immediate", check=False)
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


class WebhookReceiver:
    """A Slack-compatible webhook on 127.0.0.1 that counts POSTs per review."""

    def __init__(self) -> None:
        self.posts: Counter[int] = Counter()
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                try:
                    body = json.loads(self.rfile.read(length) or b"{}")
                    review_id = int(body.get("review_id"))
                except (ValueError, TypeError):
                    review_id = -1
                with receiver.lock:
                    receiver.posts[review_id] += 1
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(
            target=self.server.serve_forever, daemon=True, name="webhook"
        )
        self.thread.start()

    def snapshot(self) -> dict[int, int]:
        with self.lock:
            return dict(self.posts)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Procs:
    """The project's processes, each in its own process group, logging to files."""

    def __init__(self, env: dict, log_dir: Path) -> None:
        self.env = env
        self.log_dir = log_dir
        self.procs: dict[str, subprocess.Popen] = {}
        self.starts: Counter[str] = Counter()

    def start(self, name: str, argv: list[str], env: dict | None = None) -> subprocess.Popen:
        self.starts[name] += 1
        header = f"start #{self.starts[name]} at {time.strftime('%H:%M:%S')} ==="
        proc = spawn(argv, env or self.env, self.log_dir / f"{name}.log", header)
        self.procs[name] = proc
        return proc

    def manage(self, name: str, *args: str, env: dict | None = None) -> subprocess.Popen:
        return self.start(name, [sys.executable, str(ROOT / "manage.py"), *args], env=env)

    def alive(self, name: str) -> bool:
        proc = self.procs.get(name)
        return proc is not None and proc.poll() is None

    def pid(self, name: str) -> int:
        return self.procs[name].pid

    def kill(self, name: str, sig: int = signal.SIGKILL, wait: float = 20) -> None:
        proc = self.procs.pop(name, None)
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)

    def stop(self, name: str, timeout: float = 8) -> None:
        """SIGTERM, then SIGKILL after `timeout` (qcluster can hang on SIGTERM, DESIGN §6)."""
        proc = self.procs.pop(name, None)
        if proc is None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
        except ProcessLookupError:
            return
        with contextlib.suppress(ProcessLookupError):  # whatever is left of the group
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)

    def stop_all(self) -> None:
        for name in list(self.procs):
            self.stop(name, timeout=5)


def gunicorn_argv(port: int, workers: int) -> list[str]:
    return [
        str(VENV_BIN / "gunicorn"),
        "settings.wsgi:application",
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        str(workers),
        "--timeout",
        "30",
        "--graceful-timeout",
        "5",
        "--log-level",
        "warning",
    ]
