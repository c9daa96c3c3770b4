"""django-q2 entry points: thin wrappers the relay routes outbox events to.

The handlers are idempotent, so a task whose database connection broke (a restart, a killed
backend) runs again at once instead of waiting for the sweeper's deadline.
"""

import logging
import os
import socket
import time
from collections.abc import Callable

from django.db import close_old_connections, connection
from django.db.utils import InterfaceError, OperationalError

from aiworker.jobs import event_analyze
from aiworker.notify import alert_send
from aiworker.pipeline import sample_record
from outbox.services import heartbeat_beat

logger = logging.getLogger("aiworker")
DB_RETRIES = 3
PROGRESS_EVERY_S = 5.0
_last_progress = 0.0
# Set by run_worker for the cluster it supervises, so it can tell its own progress apart.
CLUSTER_ID = os.environ.get("WORKER_CLUSTER_ID") or socket.gethostname()


def _run(handler: Callable[..., str], event_id: str) -> str:
    for attempt in range(1, DB_RETRIES + 1):
        try:
            outcome = handler(event_id=event_id)
        except (OperationalError, InterfaceError) as exc:
            if attempt == DB_RETRIES:
                raise
            logger.warning(
                "database connection lost (%s); running event %s again",
                exc.__class__.__name__,
                event_id,
            )
            connection.close()
            time.sleep(0.5 * attempt)
            close_old_connections()
            continue
        _progress()
        return outcome
    raise AssertionError("unreachable")


def _progress() -> None:
    """A worker heartbeat at most every few seconds: proof that tasks finish, for /readyz."""
    global _last_progress
    if time.monotonic() - _last_progress > PROGRESS_EVERY_S:
        heartbeat_beat(name=f"worker:{CLUSTER_ID}:{os.getpid()}")
        _last_progress = time.monotonic()


def analyze_event(event_id: str) -> str:
    return _run(event_analyze, event_id)


def notify_event(event_id: str) -> str:
    return _run(alert_send, event_id)


def record_sample() -> None:
    """Scheduled every minute (migration 0003): one point of the operators' chart."""
    sample_record()
