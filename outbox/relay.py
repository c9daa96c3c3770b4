"""The relay: claim unpublished outbox events, enqueue their tasks, mark them published.

Claim, enqueue and mark happen in one transaction on the database that also holds the
django-q2 queue (ORM broker), so an event is handed off exactly once or not at all, whatever
happens to this process. Events are claimed by state with SKIP LOCKED, never by an id cursor,
so relays share work and a long transaction elsewhere cannot make one skip an event.
"""

import copyreg
import datetime as dt
import io
import logging
import os
import pickle
import secrets
import select
import signal
import time
import uuid
import zlib
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import timedelta

import psycopg
from django.conf import settings
from django.core import signing
from django.db import connection, transaction
from django.db.utils import DatabaseError, InterfaceError, OperationalError
from django.utils import timezone
from django.utils.crypto import salted_hmac
from django.utils.module_loading import import_string
from django_q.brokers import get_broker
from django_q.conf import Conf
from django_q.models import OrmQ

from outbox.models import NOTIFY_CHANNEL, Heartbeat, OutboxEvent
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
SELECT id::text, topic, key FROM handed ORDER BY available_at
"""


# How many queue rows (waiting or being worked on) there are, counting no further than the
# limit: the relay's backpressure (relay_once).
QUEUE_DEPTH_SQL = "SELECT count(*) FROM (SELECT 1 FROM django_q_ormq WHERE key = %s LIMIT %s) q"


@dataclass(frozen=True)
class HandOff:
    events: int
    tasks: int
    unrouted: int
    seconds: float
    held: bool = False  # the queue was full: nothing claimed


class TaskPacker:
    """Signed django-q2 task packages for one batch: what `SignedPackage.dumps` makes of the
    task `async_task(func, *event_ids)` builds, read back by `SignedPackage.loads`.

    Pickling and signing were most of the relay's Python time (docs/BENCHMARKS.md, relay
    profile), so what does not depend on the task is done once per batch: the signer's key
    derivation and timestamp, the task's `started`, the pickler. The format is Django's
    `TimestampSigner.sign_object` (outbox/tests/test_relay.py compares them byte for byte).
    """

    def __init__(self) -> None:
        self.started = timezone.now()
        signer = signing.TimestampSigner(key=Conf.SECRET_KEY, salt=Conf.PREFIX)
        self._stamp = signer.timestamp()
        # Signer.signature's salted_hmac(salt + "signer", value, key), before `value` is fed.
        self._mac = salted_hmac(f"{signer.salt}signer", b"", signer.key, algorithm=signer.algorithm)
        self._compress = Conf.COMPRESSED
        self._buffer = io.BytesIO()
        self._pickler = _TaskPickler(self._buffer, pickle.HIGHEST_PROTOCOL)

    def pack(self, *, func: str, event_ids: list[str], topic: str) -> str:
        more = f"+{len(event_ids) - 1}" if len(event_ids) > 1 else ""
        task = {
            # django-q2 uses the id only as a unique name: 32 random hex digits, as uuid4().hex.
            "id": secrets.token_hex(16),
            "name": f"{topic}:{event_ids[0]}{more}",
            "func": func,
            "args": tuple(event_ids),
            "kwargs": {},
            "ack_failure": True,
            "started": self.started,
        }
        data = self._pickle(task)
        flag = ""
        if self._compress:
            compressed = zlib.compress(data)
            if len(compressed) < len(data) - 1:
                data, flag = compressed, "."
        value = f"{flag}{signing.b64_encode(data).decode()}:{self._stamp}"
        mac = self._mac.copy()
        mac.update(value.encode())
        return f"{value}:{signing.b64_encode(mac.digest()).decode()}"

    def _pickle(self, task: dict) -> bytes:
        # One pickler with a cleared memo writes a complete pickle per task, as pickle.dumps.
        self._buffer.seek(0)
        self._buffer.truncate()
        self._pickler.clear_memo()
        self._pickler.dump(task)
        return self._buffer.getvalue()


class _TaskPickler(pickle.Pickler):
    # The default reduction of datetime.timezone goes through copyreg in Python and cost
    # more than the rest of the task together; this one pickles to the same bytes.
    dispatch_table = copyreg.dispatch_table.copy()
    dispatch_table[dt.timezone] = lambda tz: (dt.timezone, (tz.utcoffset(None),))


def relay_once(*, batch_size: int, queue_max: int | None = None) -> HandOff:
    """Hand off at most one batch. Returns what was done (events == 0: nothing to do).

    While the queue holds `queue_max` tasks (RELAY_QUEUE_MAX; 0: no limit) nothing is
    claimed: when the workers fall behind, new events wait in the outbox, where the next
    claim groups a restaurant's events into one task, instead of waiting in the queue as one
    task each (a task costs the cluster several ms of CPU however little it does).
    """
    started = time.perf_counter()
    queue_key = get_broker().list_key or Conf.CLUSTER_NAME
    queue_max = settings.RELAY_QUEUE_MAX if queue_max is None else queue_max
    with transaction.atomic():
        with connection.cursor() as cursor:
            if queue_max:
                cursor.execute(QUEUE_DEPTH_SQL, [queue_key, queue_max])
                if cursor.fetchone()[0] >= queue_max:
                    return HandOff(0, 0, 0, time.perf_counter() - started, held=True)
            cursor.execute(CLAIM_SQL, [batch_size])
            claimed = cursor.fetchall()
        if not claimed:
            return HandOff(0, 0, 0, time.perf_counter() - started)
        groups, unrouted = _route(claimed)
        packer = TaskPacker()
        # A generator: COPY sends each 32 KiB of rows while later packages are still being
        # built, so the server inserts them on the other core meanwhile.
        tasks = _enqueue(queue_key, _packages(groups, packer), now=packer.started)
        if unrouted:
            _finish_unrouted(unrouted)
    result = HandOff(len(claimed), tasks, len(unrouted), time.perf_counter() - started)
    if result.events:
        logger.info(
            "handed off %d events as %d tasks in %.1f ms%s",
            result.events,
            result.tasks,
            result.seconds * 1000,
            f" ({result.unrouted} without a route, marked finished)" if result.unrouted else "",
        )
    return result


def _route(claimed: list[tuple[str, str, str]]) -> tuple[dict, list[str]]:
    """Claimed (id, topic, key) rows grouped by route and key, and the ids without a route.

    One task per route and key: a consumer sees the batch's events of one key together (e.g.
    one restaurant's new reviews, analysed in one provider call).
    """
    groups: dict[tuple[str, str], list[tuple[str, str]]] = defaultdict(list)
    unrouted = []
    for event_id, topic, key in claimed:
        funcs = routes_for(topic)
        if not funcs:
            unrouted.append(event_id)
        for func in funcs:
            groups[(func, key)].append((event_id, topic))
    return groups, unrouted


def _packages(groups: dict, packer: "TaskPacker") -> Iterator[str]:
    """One signed package per group, split into tasks of at most RELAY_TASK_EVENTS events."""
    per_task = settings.RELAY_TASK_EVENTS
    for (func, _), events in groups.items():
        for i in range(0, len(events), per_task):
            chunk = events[i : i + per_task]
            yield packer.pack(
                func=func, event_ids=[event_id for event_id, _ in chunk], topic=chunk[0][1]
            )


def _enqueue(queue_key: str, payloads: Iterable[str], *, now: dt.datetime) -> int:
    """Insert django-q2 queue rows (what the ORM broker's enqueue writes) with one COPY, in
    the caller's transaction: about twice the rate of bulk_create here (docs/BENCHMARKS.md).
    Returns the number of rows."""
    rows = 0
    with (
        connection.cursor() as cursor,
        cursor.cursor.copy(f"COPY {OrmQ._meta.db_table} (key, payload, lock) FROM STDIN") as copy,
    ):
        for payload in payloads:
            copy.write_row((queue_key, payload, now))
            rows += 1
    return rows


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
    listener = Listener(NOTIFY_CHANNEL, wakeup_fd=wake_r)
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
            if result.held:
                # Look again soon rather than at the next NOTIFY: the workers free room
                # without notifying, and new events alone would not be worth a look each.
                select.select([wake_r], [], [], settings.RELAY_HOLD_RECHECK_S)
                continue
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
