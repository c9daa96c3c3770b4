"""Writes to the outbox, and the quick look a task takes before them. Functions that call
`_require_transaction()` run inside the caller's transaction; the others need none of theirs."""

from collections import defaultdict
from datetime import datetime

from django.db import connection, transaction
from django.db.models import Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from outbox.models import NOTIFY_CHANNEL, Heartbeat, OutboxEvent
from outbox.routes import routes_for


def _require_transaction() -> None:
    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError("outbox writes must run inside the caller's transaction.atomic()")


def _wake_relays() -> None:
    """Events made available again by an UPDATE (new ones notify through their INSERT)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_notify(%s, '')", [NOTIFY_CHANNEL])


def event_publish(*, topic: str, key: str, payload: dict) -> OutboxEvent:
    """Record an event; it becomes visible to the relay only when the caller commits."""
    _require_transaction()
    # The table's INSERT trigger sends the NOTIFY that Postgres delivers at commit.
    return OutboxEvent.objects.create(topic=topic, key=key, payload=payload)


def event_lock(*, event_id: str) -> OutboxEvent | None:
    """Lock an event for the rest of the caller's transaction (None if it was pruned)."""
    _require_transaction()
    return OutboxEvent.objects.select_for_update().filter(pk=event_id).first()


def events_unfinished(*, event_ids: list[str], task: str) -> set[str]:
    """Which of these events still wait for `task` (a quick look, no locks)."""
    rows = OutboxEvent.objects.filter(pk__in=event_ids, finished_at__isnull=True).values_list(
        "pk", "finished_tasks"
    )
    return {str(pk) for pk, done in rows if task not in done}


def event_finish(*, event: OutboxEvent, task: str) -> bool:
    """Record that one routed task is done with a locked event. Returns False if it already was."""
    return bool(events_finish(events=[event], task=task))


def events_finish(*, events: list[OutboxEvent], task: str) -> list[OutboxEvent]:
    """`event_finish` for many locked events in one statement; returns those it changed."""
    _require_transaction()
    now = timezone.now()
    changed = []
    for event in events:
        if task in event.finished_tasks:
            continue
        event.finished_tasks = [*event.finished_tasks, task]
        if set(routes_for(event.topic)) <= set(event.finished_tasks):
            event.finished_at = now
            # A consumer may finish an event that waits for a retry: the relay must not hand
            # it off again.
            event.published_at = event.published_at or now
        event.parked_reason = ""
        changed.append(event)
    # One UPDATE per distinct outcome (usually one): much cheaper than bulk_update's CASEs.
    groups: dict[tuple, list] = defaultdict(list)
    for event in changed:
        groups[(tuple(event.finished_tasks), event.finished_at)].append(event.pk)
    for (tasks, finished_at), ids in groups.items():
        fields = {"finished_tasks": list(tasks), "finished_at": finished_at, "parked_reason": ""}
        if finished_at is not None:
            fields["published_at"] = Coalesce("published_at", Value(now))
        OutboxEvent.objects.filter(pk__in=ids).update(**fields)
    return changed


def event_retry_at(*, event: OutboxEvent, when: datetime, parked_reason: str = "") -> None:
    """Hand a locked event back to the relay at `when` (retry, backoff, or parking)."""
    _require_transaction()
    event.published_at = None
    event.available_at = when
    event.parked_reason = parked_reason
    event.save(update_fields=["published_at", "available_at", "parked_reason"])
    if when <= timezone.now():
        _wake_relays()


def events_hand_back(*, event_ids: list[str]) -> int:
    """Give unfinished handed-off events back to the relay now (a task that ran out of time)."""
    with transaction.atomic():
        count = OutboxEvent.objects.filter(
            pk__in=event_ids, published_at__isnull=False, finished_at__isnull=True
        ).update(published_at=None, available_at=timezone.now())
        if count:
            _wake_relays()
    return count


def events_unpark(*, reason_prefix: str = "") -> int:
    """Make parked events available now, e.g. when staff raise a budget."""
    with transaction.atomic():
        count = (
            OutboxEvent.objects.filter(
                published_at__isnull=True, parked_reason__startswith=reason_prefix
            )
            .exclude(parked_reason="")
            .update(available_at=timezone.now(), parked_reason="")
        )
        if count:
            _wake_relays()
    return count


def heartbeat_beat(*, name: str, detail: dict | None = None) -> None:
    Heartbeat.objects.update_or_create(
        name=name, defaults={"beat_at": timezone.now(), "detail": detail or {}}
    )
