"""Supervise one qcluster: restart it when it is stuck, kill it when it will not stop.

django-q2 has two failure modes a plain process manager does not see (DESIGN.md §6 and the
chaos suite): SIGTERM can hang the cluster, and a worker killed while holding the task
queue's lock freezes the whole cluster while it still looks alive. The watchdog restarts
the cluster when a task has waited longer than READY_QUEUE_MAX_WAIT_S while none of its
own workers finished one (or when it has no running cluster at all after start-up).
"""

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.db import close_old_connections
from django.utils import timezone

from aiworker.pipeline import oldest_ready_task_age_s
from outbox.models import Heartbeat

logger = logging.getLogger("aiworker.supervisor")
MANAGE = Path(__file__).resolve().parent.parent / "manage.py"


def cluster_stuck(*, cluster_id: str, started: float) -> str:
    """Why this cluster should be restarted, or "" when it is fine."""
    limit = settings.READY_QUEUE_MAX_WAIT_S
    if time.monotonic() - started < limit:
        return ""  # start-up grace
    now = timezone.now()
    waited = oldest_ready_task_age_s(now)
    if waited <= limit:
        return ""
    progress = Heartbeat.objects.filter(
        name__startswith=f"worker:{cluster_id}:", beat_at__gte=now - timedelta(seconds=limit)
    )
    if progress.exists():
        return ""  # busy, not stuck: the queue is long but moving
    return f"a task has waited {waited:.0f}s and this cluster finished none"


class Supervisor:
    """One qcluster in its own process group, watched and restarted as needed."""

    def __init__(self, *, stop_timeout: float, check_every: float) -> None:
        self.stop_timeout = stop_timeout
        self.check_every = check_every
        self.proc: subprocess.Popen | None = None
        self.cluster_id = ""
        self.started = 0.0
        self.restarts = 0

    def start(self) -> None:
        self.cluster_id = uuid.uuid4().hex[:12]
        env = {**os.environ, "WORKER_CLUSTER_ID": self.cluster_id}
        self.proc = subprocess.Popen(
            [sys.executable, str(MANAGE), "qcluster"], env=env, start_new_session=True
        )
        self.started = time.monotonic()
        logger.info("qcluster %s started (pid %d)", self.cluster_id, self.proc.pid)

    def _restart_reason(self) -> str:
        if self.proc is None:
            return "no qcluster running"
        if self.proc.poll() is not None:
            return f"qcluster exited with {self.proc.returncode}"
        close_old_connections()
        try:
            return cluster_stuck(cluster_id=self.cluster_id, started=self.started)
        except Exception as exc:  # the database may be down: that is not the cluster's fault
            logger.warning("watchdog check failed (%s); trying again", exc.__class__.__name__)
            return ""

    def stop(self, *, kill: bool = False) -> None:
        """SIGTERM the cluster's process group, SIGKILL it after the stop timeout."""
        if self.proc is None:
            return
        pgid = self.proc.pid
        try:
            os.killpg(pgid, signal.SIGKILL if kill else signal.SIGTERM)
            self.proc.wait(timeout=self.stop_timeout)
        except subprocess.TimeoutExpired:
            logger.warning("qcluster did not stop in %.0fs; killing it", self.stop_timeout)
            os.killpg(pgid, signal.SIGKILL)
            self.proc.wait()
        except ProcessLookupError:
            pass
        # Workers left behind in the group (the parent exited first) go too.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        self.proc = None

    def run(self, should_stop: Callable[[], bool]) -> None:
        self.start()
        next_check = time.monotonic() + self.check_every
        try:
            while not should_stop():
                time.sleep(0.2)  # short naps: a stop request is served at once
                if time.monotonic() < next_check:
                    continue
                next_check = time.monotonic() + self.check_every
                reason = self._restart_reason()
                if reason:
                    self.restarts += 1
                    logger.error("restarting qcluster %s: %s", self.cluster_id, reason)
                    self.stop(kill=True)
                    self.start()
        finally:
            self.stop()
