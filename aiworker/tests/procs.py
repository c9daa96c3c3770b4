"""Start and stop the project's real processes (fake LLM, relay, qcluster) for tests.

The port, wait, /proc and spawn helpers are bench/stack.py's: one copy for bench and tests.
"""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from bench.stack import ROOT, descendants, free_port, http_ok, spawn, wait_for

# What the tests import from here (descendants and wait_for are re-exported from bench/stack.py).
__all__ = ["Stack", "descendants", "http_json", "wait_for"]


class Stack:
    """A set of real processes sharing one environment; everything is killed at the end."""

    def __init__(self, env: dict, log_dir: Path) -> None:
        self.env = dict(env)
        self.procs: dict[str, subprocess.Popen] = {}
        self.log_dir = log_dir
        log_dir.mkdir(parents=True, exist_ok=True)

    def start(self, name: str, *args: str) -> subprocess.Popen:
        argv = [sys.executable, str(ROOT / "manage.py"), *args]
        header = f"{time.strftime('%H:%M:%S')} manage.py {' '.join(args)}"
        proc = spawn(argv, self.env, self.log_dir / f"{name}.log", header)
        self.procs[name] = proc
        return proc

    def fake_llm(self, **flags: str) -> str:
        port = free_port()
        extra = [a for k, v in flags.items() for a in (f"--{k.replace('_', '-')}", str(v))]
        self.start("fake_llm", "fake_llm", "--port", str(port), "--force", *extra)
        url = f"http://127.0.0.1:{port}/v1"
        wait_for(lambda: http_ok(f"{url}/models"), 15, "fake_llm to listen")
        self.env.update(ANALYZER="openai", OPENAI_BASE_URL=url, OPENAI_API_KEY="test-key")
        return url

    def relay(self, *args: str) -> subprocess.Popen:
        return self.start("relay", "relay_outbox", "--poll-interval", "0.2", *args)

    def qcluster(self) -> subprocess.Popen:
        return self.start("qcluster", "qcluster")

    def log(self, name: str) -> str:
        return (self.log_dir / f"{name}.log").read_text(errors="replace")

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs.pop(name)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        proc.wait(timeout=20)

    def stop(self) -> None:
        for name in list(self.procs):
            proc = self.procs[name]
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=8)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)  # qcluster can hang on SIGTERM (DESIGN §6)
                proc.wait(timeout=5)
            except ProcessLookupError:
                pass
            self.procs.pop(name)


def http_json(method: str, url: str, body: dict | None = None, token: str = "") -> tuple[int, dict]:
    request = urllib.request.Request(
        url,
        method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={
            "Content-Type": "application/json",
            **({"Authorization": f"Token {token}"} if token else {}),
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")
