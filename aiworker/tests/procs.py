"""Start and stop the project's real processes (fake LLM, relay, qcluster) for tests."""

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def children(pid: int) -> list[int]:
    """All descendants of a process, from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                child = int(entry.name)
                found += [child, *children(child)]
    return found


class Stack:
    """A set of real processes sharing one environment; everything is killed at the end."""

    def __init__(self, env: dict, log_dir: Path) -> None:
        self.env = dict(env)
        self.procs: dict[str, subprocess.Popen] = {}
        self.log_dir = log_dir
        log_dir.mkdir(parents=True, exist_ok=True)

    def start(self, name: str, *args: str) -> subprocess.Popen:
        log = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "manage.py"), *args],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            start_new_session=True,
        )
        self.procs[name] = proc
        return proc

    def fake_llm(self, **flags: str) -> str:
        port = free_port()
        extra = [a for k, v in flags.items() for a in (f"--{k.replace('_', '-')}", str(v))]
        self.start("fake_llm", "fake_llm", "--port", str(port), "--force", *extra)
        url = f"http://127.0.0.1:{port}/v1"
        wait_for(lambda: _get_ok(f"{url}/models"), 15, "fake_llm to listen")
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


def _get_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return response.status == 200
    except OSError:
        return False


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
