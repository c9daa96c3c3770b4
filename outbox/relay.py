"""The relay: claim unpublished outbox events, enqueue their tasks, mark them published.

Claim, enqueue and mark happen in one transaction on the database that also holds the
django-q2 queue (ORM broker), so an event is handed off exactly once or not at all, whatever
happens to this process. Events are claimed by state with SKIP LOCKED, never by an id cursor,
so relays share work and a long transaction elsewhere cannot make one skip an event.
"""

import logging
import os
import select
import signal
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

import psycopg
from django.conf import settings
from django.core import signing
from django.db import connection, transaction
from django.db.utils import DatabaseError, InterfaceError, OperationalError
from django.utils import timezone
from django.utils.module_loading import import_string
from django_q.brokers import get_broker
from django_q.conf import Conf
from django_q.models import OrmQ
from django_q.signing import PickleSerializer

from outbox.models import Heartbeat, OutboxEvent
from outbox.routes import routes_for
from outbox.services import heartbeat_beat

logger = logging.getLogger("outbox.relay")

CLAIM_SQL = """
WITH claimed AS (
    SELECT id FROM outbox_outboxevent
    WHERE published_at IS NULL AND available_at <= now()
    ORDER BY available_at
    LIMIT %s
    FOR UPDATE SKIP LOCKED
), handed AS (
    UPDATE outbox_outboxevent AS e
    SET published_at = now(), handoffs = e.handoffs + 1
    FROM claimed
    WHERE e.id = claimed.id
    RETURNING e.id, e.topic, e.key, e.available_at
)
SELECT id, topic, key FROM handed ORDER BY available_at
"""


@dataclass(frozen=True)
class HandOff:
    events: int
    tasks: int
    unrouted: int
    seconds: float


def task_package(
    *,
    func: str,
    event_ids: list[uuid.UUID],
    topic: str,
    signer: signing.TimestampSigner | None = None,
) -> str:
    """A signed django-q2 task package, byte for byte what `async_task(func, *event_ids)`
    would enqueue."""
    more = f"+{len(event_ids) - 1}" if len(event_ids) > 1 else ""
    task = {
        "id": uuid.uuid4().hex,
        "name": f"{topic}:{event_ids[0]}{more}",
        "func": func,
        "args": tuple(str(event_id) for event_id in event_ids),
        "kwargs": {},
        "ack_failure": True,
        "started": timezone.now(),
    }
    signer = signer or package_signer()
    return signer.sign_object(task, serializer=PickleSerializer, compress=Conf.COMPRESSED)


def package_signer() -> signing.TimestampSigner:
    # SignedPackage.dumps builds (and validates) a new signer per task; one per batch is
    # enough and measurably faster (docs/BENCHMARKS.md, relay variants).
    return signing.TimestampSigner(key=Conf.SECRET_KEY, salt=Conf.PREFIX)


def relay_once(*, batch_size: int) -> HandOff:
    """Hand off at most one batch. Returns what was done (events == 0: nothing to do)."""
    started = time.perf_counter()
    queue_key = get_broker().list_key or Conf.CLUSTER_NAME
    signer = package_signer()
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute(CLAIM_SQL, [batch_size])
            claimed = cursor.fetchall()
        unrouted = []
        # One task per route and key: a consumer sees the batch's events of one key together
        # (e.g. one restaurant's new reviews, analysed in one provider call).
        groups: dict[tuple[str, str], list[tuple[uuid.UUID, str]]] = defaultdict(list)
        for event_id, topic, key in claimed:
            funcs = routes_for(topic)
            if not funcs:
                unrouted.append(event_id)
            for func in funcs:
                groups[(func, key)].append((event_id, topic))
        per_task = settings.RELAY_TASK_EVENTS
        payloads = [
            task_package(
                func=func,
                event_ids=[event_id for event_id, _ in events[i : i + per_task]],
                topic=events[i][1],
                signer=signer,
            )
            for (func, _), events in groups.items()
            for i in range(0, len(events), per_task)
        ]
        if unrouted:
            _finish_unrouted(unrouted)
        _enqueue(queue_key, payloads)
    result = HandOff(len(claimed), len(payloads), len(unrouted), time.perf_counter() - started)
    if result.events:
        logger.info(
            "handed off %d events as %d tasks in %.1f ms%s",
            result.events,
            result.tasks,
            result.seconds * 1000,
            f" ({result.unrouted} without a route, marked finished)" if result.unrouted else "",
        )
    return result


def _enqueue(queue_key: str, payloads: list[str]) -> None:
    """Insert django-q2 queue rows (what the ORM broker's enqueue writes) with one COPY, in
    the caller's transaction: about twice the rate of bulk_create here (docs/BENCHMARKS.md)."""
    if not payloads:
        return
    now = timezone.now()
    with (
        connection.cursor() as cursor,
        cursor.cursor.copy(f"COPY {OrmQ._meta.db_table} (key, payload, lock) FROM STDIN") as copy,
    ):
        for payload in payloads:
            copy.write_row((queue_key, payload, now))


def _finish_unrouted(event_ids: list) -> None:
    # An event nobody listens to must not block the table or be handed off forever.
    logger.warning("no route for %d events, e.g. %s", len(event_ids), event_ids[0])
    OutboxEvent.objects.filter(pk__in=event_ids).update(finished_at=timezone.now())


def prune_once(*, older_than: timedelta, batch_size: int) -> int:
    """Delete one small batch of finished events older than the retention period."""
    cutoff = timezone.now() - older_than
    with transaction.atomic():
        ids = list(
            OutboxEvent.objects.filter(finished_at__lt=cutoff)
            .values_list("pk", flat=True)
            .select_for_update(skip_locked=True)[:batch_size]
        )
        if ids:
            OutboxEvent.objects.filter(pk__in=ids).delete()
    return len(ids)


def sweep_once(*, deadline: timedelta, batch_size: int = 500) -> int:
    """Hand off again events that were handed off but never finished before the deadline.

    A queued django-q2 row can vanish (its signed payload stops verifying after a SECRET_KEY
    change, or someone deletes it); the outbox stays the source of truth. Consumers are
    idempotent, so a second hand-off of an event that is merely slow is harmless.
    """
    cutoff = timezone.now() - deadline
    with transaction.atomic():
        ids = list(
            OutboxEvent.objects.filter(published_at__lt=cutoff, finished_at__isnull=True)
            .values_list("pk", flat=True)
            .select_for_update(skip_locked=True)[:batch_size]
        )
        if ids:
            OutboxEvent.objects.filter(pk__in=ids).update(
                published_at=None, available_at=timezone.now()
            )
    if ids:
        logger.warning(
            "sweeper: %d events handed off %s ago and not finished, handed off again",
            len(ids),
            deadline,
        )
    return len(ids)


class Listener:
    """A dedicated LISTEN connection that reconnects by itself; polling covers its gaps."""

    def __init__(self, channel: str, *, wakeup_fd: int | None = None) -> None:
        self.channel = channel
        self.conn: psycopg.Connection | None = None
        # A signal handler writes to this fd (signal.set_wakeup_fd) so SIGTERM ends a long wait.
        self.wakeup_fd = wakeup_fd

    def _connect(self) -> None:
        params = settings.DATABASES["default"]
        self.conn = psycopg.connect(
            dbname=params["NAME"],
            user=params.get("USER") or None,
            password=params.get("PASSWORD") or None,
            host=params.get("HOST") or None,
            port=params.get("PORT") or None,
            autocommit=True,
            connect_timeout=5,
        )
        self.conn.execute(f'LISTEN "{self.channel}"')

    def close(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            finally:
                self.conn = None

    def wait(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for a notification. True if one arrived."""
        extra = [self.wakeup_fd] if self.wakeup_fd is not None else []
        try:
            if self.conn is None or self.conn.closed:
                self._connect()
            assert self.conn is not None
            ready, _, _ = select.select([self.conn.fileno(), *extra], [], [], timeout)
            if self.wakeup_fd in ready:
                os.read(self.wakeup_fd, 512)
            if self.conn.fileno() not in ready:
                return False
            got = False
            for _ in self.conn.notifies(timeout=0):
                got = True  # drain: one batch claim serves all pending notifications
            return got
        except (psycopg.Error, OSError, ValueError) as exc:
            logger.warning("LISTEN connection lost (%s); polling until it is back", exc)
            self.close()
            select.select(extra, [], [], min(timeout, 1.0))
            return False


def run(
    *,
    batch_size: int,
    poll_interval: float,
    should_stop: Callable[[], bool],
    listen: bool = True,
    housekeeping_every: float | None = None,
    heartbeat_name: str = "relay",
) -> None:
    """The relay loop: hand off while there is work, otherwise wait for NOTIFY or the poll.

    Call it from the main thread: a wake-up pipe lets SIGTERM interrupt a long wait.
    """
    housekeeping_every = housekeeping_every or settings.RELAY_HOUSEKEEPING_S
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    previous_fd = signal.set_wakeup_fd(wake_w)
    listener = Listener(settings.OUTBOX_NOTIFY_CHANNEL, wakeup_fd=wake_r)
    last_beat = 0.0
    last_housekeeping = 0.0
    failures = 0
    try:
        while not should_stop():
            try:
                result = relay_once(batch_size=batch_size)
                if time.monotonic() - last_housekeeping > housekeeping_every:
                    housekeeping()
                    last_housekeeping = time.monotonic()
                if time.monotonic() - last_beat > settings.READY_HEARTBEAT_MAX_AGE_S / 3:
                    heartbeat_beat(name=heartbeat_name, detail={"pid": os.getpid()})
                    last_beat = time.monotonic()
                failures = 0
            except (OperationalError, InterfaceError, DatabaseError) as exc:
                failures += 1
                delay = min(0.2 * 2**failures, 5.0)
                logger.warning(
                    "database unavailable (%s); retrying in %.1fs", exc.__class__.__name__, delay
                )
                connection.close()
                time.sleep(delay)
                continue
            if result.events == batch_size:
                continue  # a full batch: there is probably more
            if listen:
                listener.wait(poll_interval)
            else:
                select.select([wake_r], [], [], poll_interval)
    finally:
        listener.close()
        signal.set_wakeup_fd(previous_fd)
        os.close(wake_r)
        os.close(wake_w)


def housekeeping() -> None:
    sweep_once(deadline=timedelta(seconds=settings.DELIVERY_DEADLINE_S))
    Heartbeat.objects.filter(beat_at__lt=timezone.now() - timedelta(days=1)).delete()
    pruned = prune_once(
        older_than=timedelta(hours=settings.OUTBOX_RETENTION_HOURS),
        batch_size=settings.OUTBOX_PRUNE_BATCH,
    )
    if pruned:
        logger.info("pruned %d finished events", pruned)


def run_inline(*, event_id: uuid.UUID) -> None:
    """Claim one event and run its tasks in this process (benchmark-only `sync` mode)."""
    with transaction.atomic():
        claimed = OutboxEvent.objects.filter(pk=event_id, published_at__isnull=True).update(
            published_at=timezone.now(), handoffs=1
        )
        event = OutboxEvent.objects.get(pk=event_id)
    if claimed:
        for func in routes_for(event.topic):
            import_string(func)(str(event_id))
