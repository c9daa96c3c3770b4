"""The benchmark's processes: start them in their own process groups, measure them, kill them.

Everything started here is killed at the end by process group (SIGTERM, then SIGKILL after a
timeout: qcluster can hang on SIGTERM, DESIGN.md §6), whatever happened in between.

Its stdlib-only helpers (free_port, wait_for, http_ok, children, descendants, spawn) are the copy
shared with bench/chaos_stack.py and aiworker/tests/procs.py: bench scripts import this module
as `stack` (their directory is on sys.path), tests as `bench.stack` (pytest runs from the root).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
BIN = Path(PY).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for[T](predicate: Callable[[], T], timeout: float, what: str, interval: float = 0.1) -> T:
    """Poll `predicate` until it returns something truthy, and return that.

    Raises RuntimeError on timeout: bench/chaos.py catches it to record a scenario that did not
    recover; in a test it fails the test like an assertion would.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise RuntimeError(f"timed out after {timeout:g}s waiting for {what}")


def http_ok(url: str, timeout: float = 1.0) -> bool:
    """A GET answered 200 (not any 2xx: every endpoint polled here answers exactly 200)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status == 200
    except OSError:  # refused, timed out, or an HTTPError (a subclass) for 4xx/5xx
        return False


# ----------------------------------------------------------------------------- /proc


def _stat_fields(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def _children_by_parent() -> dict[int, list[int]]:
    """parent pid -> child pids, from one pass over /proc (processes may exit meanwhile)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields:
                parents.setdefault(int(fields[1]), []).append(int(entry.name))
    return parents


def children(pid: int) -> list[int]:
    """Direct children of a process, read from /proc."""
    return _children_by_parent().get(pid, [])


def descendants(pid: int) -> list[int]:
    """All descendants of a process (children, grandchildren, ...), read from /proc.

    One snapshot of /proc for the whole tree, not one per level: the tree is consistent.
    """
    parents = _children_by_parent()
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def memory_kib(pid: int) -> tuple[int, int, int] | None:
    """(VmRSS, VmHWM, Pss) in KiB, None if the process is gone.

    VmRSS counts pages shared with forked siblings in every process; Pss divides them among
    the sharers, so summing Pss over a process tree gives its real footprint.
    """
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    values = {}
    for line in text.splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            name, value = line.split(":", 1)
            values[name] = int(value.split()[0])
    if "VmRSS" not in values:
        return None  # a zombie
    pss = values["VmRSS"]
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                pss = int(line.split()[1])
                break
    except OSError:
        pass
    return values["VmRSS"], values.get("VmHWM", values["VmRSS"]), pss


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of these processes (not of their reaped children)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields:
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


# ----------------------------------------------------------------------------- processes


def spawn(argv: list[str], env: dict[str, str], log_path: Path, header: str) -> subprocess.Popen:
    """Start `argv` in the repo root, its output appended to `log_path` after a `=== header` line.

    Its own session (process group), so that killpg also reaches the processes it forks; stdin
    is /dev/null, so that no child can read the terminal's input.
    """
    with open(log_path, "ab") as log:  # the child keeps its own copy of the descriptor
        log.write(f"\n=== {header}\n".encode())
        log.flush()
        return subprocess.Popen(
            argv,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=ROOT,
            start_new_session=True,
        )


class Procs:
    """Named processes sharing a log directory; `stop_all` kills every one of them."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: dict[str, subprocess.Popen] = {}
        log_dir.mkdir(parents=True, exist_ok=True)

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen:
        if name in self.procs:
            raise RuntimeError(f"{name} is already running")
        header = f"{time.strftime('%H:%M:%S')} {' '.join(argv)}"
        proc = spawn(argv, env, self.log_dir / f"{name}.log", header)
        self.procs[name] = proc
        return proc

    def manage(self, name: str, env: dict[str, str], *args: str) -> subprocess.Popen:
        return self.start(name, [PY, str(ROOT / "manage.py"), *args], env)

    def running(self, name: str) -> bool:
        proc = self.procs.get(name)
        return proc is not None and proc.poll() is None

    def pid(self, name: str) -> int:
        return self.procs[name].pid

    def log_tail(self, name: str, lines: int = 20) -> str:
        path = self.log_dir / f"{name}.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, name: str, *, timeout: float = 8.0, sig: int = signal.SIGTERM) -> None:
        proc = self.procs.pop(name, None)
        if proc is None:
            return
        # Every process of the group, including forked children whose parent died first.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=timeout)
        # The group may outlive its leader (forked workers): SIGKILL whatever is left.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)

    def stop_all(self) -> None:
        for name in list(self.procs):
            self.stop(name)
