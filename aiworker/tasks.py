"""django-q2 entry points: thin wrappers the relay routes outbox events to."""

from aiworker.jobs import event_analyze
from aiworker.notify import alert_send


def analyze_event(event_id: str) -> str:
    return event_analyze(event_id=event_id)


def notify_event(event_id: str) -> str:
    return alert_send(event_id=event_id)


def record_sample() -> None:
    """Scheduled every minute (migration 0003): one point of the operators' chart."""
    from aiworker.pipeline import sample_record

    sample_record()
