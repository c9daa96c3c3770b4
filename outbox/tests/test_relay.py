"""The relay hands every committed event to the queue exactly once: with several relays,
with relays killed at any instant, and with transactions committing out of order."""

import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest
from django.db import connection, transaction
from django.test import override_settings
from django.utils import timezone
from django_q.conf import Conf
from django_q.models import OrmQ
from django_q.signing import BadSignature, SignedPackage

from outbox import relay
from outbox.models import OutboxEvent
from outbox.services import event_publish

ROOT = Path(__file__).resolve().parents[2]


def publish(n: int, topic: str = "reviews.created") -> list:
    with transaction.atomic():
        return [
            event_publish(
                topic=topic, key=f"review:{i}", payload={"review_id": i, "revision": 1}
            ).pk
            for i in range(n)
        ]


def bulk_events(n: int) -> None:
    """Many unpublished events at once (faster than publish() for thousands). Seven keys, so
    relays also hand off tasks that carry several events."""
    OutboxEvent.objects.bulk_create(
        OutboxEvent(
            topic="reviews.created",
            key=f"restaurant:{i % 7}",
            payload={"review_id": i, "revision": 1},
        )
        for i in range(n)
    )


def tasks_per_event() -> Counter:
    return Counter(
        event_id
        for p in OrmQ.objects.values_list("payload", flat=True)
        for event_id in SignedPackage.loads(p)["args"]
    )


def assert_exactly_once(expected: int) -> None:
    per_event = tasks_per_event()
    events = OutboxEvent.objects.all()
    assert events.count() == expected
    assert events.filter(published_at__isnull=True).count() == 0, "event left unpublished"
    assert set(per_event) == {str(pk) for pk in events.values_list("pk", flat=True)}, (
        "task without event or event without task"
    )
    duplicated = {k: v for k, v in per_event.items() if v != 1}
    assert not duplicated, f"{len(duplicated)} events handed off more than once"
    assert not events.exclude(handoffs=1).exists()


def relay_cmd(*args: str) -> list[str]:
    return [sys.executable, str(ROOT / "manage.py"), "relay_outbox", *args]


def without_consumer(env: dict) -> dict:
    # No qcluster consumes the queue in these tests: backpressure off, so the relays hand off
    # everything and the test can count it.
    return {**env, "RELAY_QUEUE_MAX": "0"}


@pytest.mark.django_db(transaction=True)
def test_relay_once_hands_off_each_event_once_with_its_route():
    ids = publish(3)
    result = relay.relay_once(batch_size=10)
    assert (result.events, result.tasks) == (3, 3)
    packages = [SignedPackage.loads(p) for p in OrmQ.objects.values_list("payload", flat=True)]
    assert sorted(p["args"][0] for p in packages) == sorted(str(i) for i in ids)
    assert {p["func"] for p in packages} == {"aiworker.tasks.analyze_event"}
    assert relay.relay_once(batch_size=10).events == 0
    assert_exactly_once(3)


@pytest.mark.django_db(transaction=True)
@override_settings(RELAY_TASK_EVENTS=10)
def test_events_of_one_key_share_a_task_of_at_most_relay_task_events():
    with transaction.atomic():
        same = [
            event_publish(topic="reviews.created", key="restaurant:1", payload={"n": i}).pk
            for i in range(23)
        ]
        other = event_publish(topic="reviews.created", key="restaurant:2", payload={}).pk
    result = relay.relay_once(batch_size=100)
    assert (result.events, result.tasks) == (24, 4)
    args = sorted(
        (SignedPackage.loads(p)["args"] for p in OrmQ.objects.values_list("payload", flat=True)),
        key=len,
    )
    assert [len(a) for a in args] == [1, 3, 10, 10]
    assert args[0] == (str(other),)
    assert sorted(e for a in args[1:] for e in a) == sorted(str(pk) for pk in same)
    assert_exactly_once(24)


@pytest.mark.django_db(transaction=True)
def test_unrouted_event_is_finished_with_a_warning_and_fan_out_enqueues_each_route(caplog):
    routes = {"fan.out": ["aiworker.tasks.analyze_event", "aiworker.tasks.notify_event"]}
    with override_settings(OUTBOX_ROUTES=routes):
        publish(1, topic="fan.out")
        publish(1, topic="nobody.listens")
        result = relay.relay_once(batch_size=10)
    assert (result.events, result.tasks, result.unrouted) == (2, 2, 1)
    assert OutboxEvent.objects.get(topic="nobody.listens").finished_at is not None
    assert "no route" in caplog.text
    funcs = sorted(
        SignedPackage.loads(p)["func"] for p in OrmQ.objects.values_list("payload", flat=True)
    )
    assert funcs == routes["fan.out"]


@pytest.mark.parametrize("compressed", [False, True])
def test_packer_signs_what_django_q2_signs(monkeypatch, compressed):
    """The batch packer's packages are django-q2's own: the same pickle bytes (compressed
    when the cluster compresses) under a signature `SignedPackage.loads` verifies."""
    monkeypatch.setattr(Conf, "COMPRESSED", compressed)
    ids = [str(uuid.uuid4()) for _ in range(10)]
    packer = relay.TaskPacker()
    packages = [
        packer.pack(func="aiworker.tasks.analyze_event", event_ids=ids[:n], topic="t")
        for n in (1, 10)
    ]
    for n, package in zip((1, 10), packages, strict=True):
        task = SignedPackage.loads(package)
        assert task["args"] == tuple(ids[:n])
        assert task["name"] == f"t:{ids[0]}" + (f"+{n - 1}" if n > 1 else "")
        assert task["started"] == packer.started and task["started"].tzinfo is not None
        # Django's signer over the same task: identical up to the signature's timestamp.
        expected = SignedPackage.dumps(task, compressed=compressed)
        assert package.rsplit(":", 2)[0] == expected.rsplit(":", 2)[0]
    assert packages[1].startswith(".") == compressed  # ten ids compress well
    tampered = packages[0].replace(packages[0][5], "A" if packages[0][5] != "A" else "B", 1)
    with pytest.raises(BadSignature):
        SignedPackage.loads(tampered)


@pytest.mark.django_db(transaction=True)
def test_event_scheduled_for_later_waits():
    with transaction.atomic():
        event = event_publish(topic="reviews.created", key="k", payload={})
    OutboxEvent.objects.filter(pk=event.pk).update(
        available_at=timezone.now() + timedelta(minutes=5)
    )
    assert relay.relay_once(batch_size=10).events == 0


@pytest.mark.django_db(transaction=True)
@override_settings(RELAY_TASK_EVENTS=10)
def test_a_full_queue_holds_events_in_the_outbox_where_a_key_shares_tasks():
    with transaction.atomic():
        for i in range(3):
            event_publish(topic="reviews.created", key=f"restaurant:{i}", payload={})
    assert relay.relay_once(batch_size=100, queue_max=3).tasks == 3
    with transaction.atomic():
        later = [
            event_publish(topic="reviews.created", key="restaurant:9", payload={"n": i}).pk
            for i in range(12)
        ]
    held = relay.relay_once(batch_size=100, queue_max=3)
    assert held.held and held.events == 0
    assert OutboxEvent.objects.filter(pk__in=later, published_at__isnull=True).count() == 12
    OrmQ.objects.all().delete()  # the workers took the three tasks
    result = relay.relay_once(batch_size=100, queue_max=3)
    assert (result.held, result.events, result.tasks) == (False, 12, 2)  # not 12 tasks
    assert relay.relay_once(batch_size=100, queue_max=0).events == 0  # 0: no limit, none left
    assert tasks_per_event() == Counter({str(pk): 1 for pk in later})
    assert not OutboxEvent.objects.exclude(handoffs=1).exists()


@pytest.mark.slow
def test_a_held_relay_looks_again_soon_without_a_notify(proc_env):
    proc = subprocess.Popen(
        relay_cmd("--poll-interval", "30"),
        env={**proc_env, "RELAY_QUEUE_MAX": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(2)  # let it start and LISTEN
        [first] = publish(1)
        wait_until(lambda: OrmQ.objects.exists(), 5)
        [second] = publish(1)  # NOTIFY, but the queue is full
        time.sleep(1)
        assert not published(second)
        OrmQ.objects.all().delete()  # a worker took the task: no NOTIFY for that
        lag = wait_until(lambda: published(second), 5)
        assert lag < 1, f"held relay should look again within RELAY_HOLD_RECHECK_S, took {lag:.2f}s"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    assert OutboxEvent.objects.get(pk=first).handoffs == 1


@pytest.mark.slow
@pytest.mark.parametrize("relays", [2, 4])
def test_parallel_relays_hand_off_5000_events_exactly_once(proc_env, relays):
    bulk_events(5000)
    # A table lock holds every relay at its first claim until all of them wait there, so a
    # slow process start cannot let one relay do all the work before the others begin.
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("LOCK TABLE outbox_outboxevent IN EXCLUSIVE MODE")
        procs = [
            subprocess.Popen(
                relay_cmd("--once", "--batch-size", "100"),
                env=without_consumer(proc_env),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(relays)
        ]
        deadline = time.monotonic() + 60
        waiting = 0
        while waiting < relays and time.monotonic() < deadline:
            time.sleep(0.1)
            cursor.execute(
                "SELECT count(*) FROM pg_locks"
                " WHERE relation = 'outbox_outboxevent'::regclass AND NOT granted"
            )
            waiting = cursor.fetchone()[0]
        assert waiting == relays, f"only {waiting} of {relays} relays reached the claim"
    outputs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    handed = [int(out.split()[2]) for out, _ in outputs]
    assert sum(handed) == 5000
    assert sum(1 for h in handed if h > 0) >= 2, f"relays did not share the work: {handed}"
    assert_exactly_once(5000)


@pytest.mark.slow
def test_relay_killed_repeatedly_loses_and_duplicates_nothing(proc_env):
    stop = threading.Event()
    produced = []

    def produce():
        # A separate thread: its own database connection, committing while relays die.
        try:
            while not stop.is_set():
                produced.extend(publish(5))
                time.sleep(0.01)
        finally:
            connection.close()

    producer = threading.Thread(target=produce)
    producer.start()
    rng = random.Random(7)
    kills = 0
    try:
        while kills < 20:
            proc = subprocess.Popen(
                relay_cmd("--batch-size", "50", "--poll-interval", "0.1"),
                env=without_consumer(proc_env),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            time.sleep(rng.uniform(0.3, 1.2))  # includes start-up, so kills land at any stage
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            kills += 1
    finally:
        stop.set()
        producer.join()
    subprocess.run(
        relay_cmd("--once"), env=without_consumer(proc_env), check=True, capture_output=True
    )
    assert kills == 20 and len(produced) > 100
    assert_exactly_once(len(produced))


@pytest.mark.django_db(transaction=True)
def test_out_of_order_commits_are_not_skipped():
    a_inserted, b_committed, relay_ran = threading.Event(), threading.Event(), threading.Event()

    def transaction_a():
        try:
            with transaction.atomic():
                event_publish(topic="reviews.created", key="A", payload={})
                a_inserted.set()
                relay_ran.wait(10)  # commits only after the relay has run
        finally:
            connection.close()

    thread = threading.Thread(target=transaction_a)
    thread.start()
    a_inserted.wait(10)
    with transaction.atomic():
        event_publish(topic="reviews.created", key="B", payload={})
    b_committed.set()
    first = relay.relay_once(batch_size=10)
    relay_ran.set()
    thread.join()
    second = relay.relay_once(batch_size=10)
    assert (first.events, second.events) == (1, 1)
    assert_exactly_once(2)


def published(event_id) -> bool:
    return OutboxEvent.objects.filter(pk=event_id, published_at__isnull=False).exists()


def wait_until(predicate, timeout: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if predicate():
            return time.monotonic() - started
        time.sleep(0.01)
    raise AssertionError("condition not met in time")


@pytest.mark.slow
def test_notify_wakes_the_relay_and_polling_covers_a_broken_listen(proc_env):
    proc = subprocess.Popen(
        relay_cmd("--poll-interval", "30"),
        env=proc_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(2)  # let it start and LISTEN
        [event_id] = publish(1)
        lag = wait_until(lambda: published(event_id), 5)
        assert lag < 0.5, f"NOTIFY should hand off in well under a second, took {lag:.2f}s"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0

    # LISTEN broken: kill the relay's LISTEN backend; the short poll still delivers.
    proc = subprocess.Popen(
        relay_cmd("--poll-interval", "0.5"),
        env=proc_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(2)
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query ILIKE 'LISTEN%%' AND pid <> pg_backend_pid()"
            )
            assert cursor.rowcount >= 1
        # Events committed without any NOTIFY reaching the relay.
        bulk_events(3)
        wait_until(lambda: not OutboxEvent.objects.filter(published_at__isnull=True).exists(), 5)
        # And the listener came back by itself.
        wait_until(lambda: _listening(), 5)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0


def _listening() -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE query ILIKE 'LISTEN%%'")
        return cursor.fetchone()[0] > 0


@pytest.mark.django_db(transaction=True)
def test_prune_removes_only_old_finished_events():
    ids = publish(4)
    old = timezone.now() - timedelta(hours=100)
    OutboxEvent.objects.filter(pk=ids[0]).update(
        published_at=old, finished_at=old
    )  # old, finished: pruned
    OutboxEvent.objects.filter(pk=ids[1]).update(published_at=old)  # old but unfinished: kept
    OutboxEvent.objects.filter(pk=ids[2]).update(
        published_at=timezone.now(), finished_at=timezone.now()
    )  # recent: kept
    assert relay.prune_once(older_than=timedelta(hours=72), batch_size=100) == 1
    assert set(OutboxEvent.objects.values_list("pk", flat=True)) == set(ids[1:])


@pytest.mark.django_db(transaction=True)
def test_sweeper_hands_off_again_an_event_whose_task_vanished():
    [event_id] = publish(1)
    relay.relay_once(batch_size=10)
    OrmQ.objects.all().delete()  # e.g. a payload signed with an old SECRET_KEY, dropped by django-q2
    assert relay.sweep_once(deadline=timedelta(minutes=10)) == 0  # not yet overdue
    OutboxEvent.objects.filter(pk=event_id).update(
        published_at=timezone.now() - timedelta(minutes=11)
    )
    assert relay.sweep_once(deadline=timedelta(minutes=10)) == 1
    assert relay.relay_once(batch_size=10).events == 1
    assert list(tasks_per_event().values()) == [1]
    assert OutboxEvent.objects.get().handoffs == 2
