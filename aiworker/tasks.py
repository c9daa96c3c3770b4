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

from aiworker.jobs import TASK as ANALYZE_TASK
from aiworker.jobs import event_analyze
from aiworker.notify import TASK as NOTIFY_TASK
from aiworker.notify import alert_send
from aiworker.pipeline import sample_record
from outbox.services import events_hand_back, events_unfinished, heartbeat_beat

logger = logging.getLogger("aiworker")
DB_RETRIES = 3
PROGRESS_EVERY_S = 5.0
NEXT_EVENT_WITHIN_S = 5.0
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


def _run_all(handler: Callable[..., str], task: str, event_ids: tuple[str, ...]) -> str:
    """Handle a task's events in order (the relay gives one task the events of one key).

    An event often finishes others (a batch finishes its companions' events): one query then
    drops them instead of a locking look at each. Q_TIMEOUT leaves room for one more event
    after NEXT_EVENT_WITHIN_S, so none is started late enough to be killed by the timeout;
    the rest go back to the relay.
    """
    started = time.monotonic()
    outcomes: list[str] = []
    left = list(event_ids)
    while left:
        if outcomes and time.monotonic() - started > NEXT_EVENT_WITHIN_S:
            events_hand_back(event_ids=left)
            outcomes.append(f"{len(left)} handed back")
            break
        outcomes.append(_run(handler, left.pop(0)))
        if left:
            unfinished = events_unfinished(event_ids=left, task=task)
            outcomes += ["duplicate"] * (len(left) - len(unfinished))
            left = [event_id for event_id in left if event_id in unfinished]
    return ", ".join(outcomes)


def analyze_event(*event_ids: str) -> str:
    return _run_all(event_analyze, ANALYZE_TASK, event_ids)


def notify_event(*event_ids: str) -> str:
    return _run_all(alert_send, NOTIFY_TASK, event_ids)


def record_sample() -> None:
    """Scheduled every minute (migration 0003): one point of the operators' chart."""
    sample_record()
