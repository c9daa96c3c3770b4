"""The ledger checker: states that must be flagged, states that must pass, and the command."""

import json
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone
from django_q.models import OrmQ
from django_q.signing import SignedPackage

from aiworker.audit import ledger_check
from aiworker.models import AnalysisJob, DeadLetter, LlmCall
from aiworker.tests.conftest import drain
from outbox import relay
from outbox.models import OutboxEvent
from reviews.models import Review
from reviews.services import review_create

pytestmark = pytest.mark.django_db(transaction=True)

ROOT = Path(__file__).resolve().parents[2]


def kinds(report) -> set[str]:
    return {f"{f.category}:{f.kind}" for f in report.findings}


def create(restaurant, text="Comida boa, entrega rápida.", rating=5) -> Review:
    return review_create(restaurant_id=restaurant.pk, rating=rating, text=text)


def event_of(review) -> OutboxEvent:
    return OutboxEvent.objects.get(payload__review_id=review.pk, topic="reviews.created")


# --------------------------------------------------------------------------- states that pass


def test_processed_reviews_pass(restaurant):
    reviews = [create(restaurant, text=f"Ótimo #{i}") for i in range(3)]
    drain()
    report = ledger_check()
    assert report.ok, report.findings
    assert (report.reviews, report.processed, report.lost, report.duplicated) == (3, 3, 0, 0)
    assert report.provider_calls == 1  # one batch of three
    assert ledger_check(accepted_ids=[r.pk for r in reviews]).ok


def test_critical_review_with_one_alert_and_one_webhook_post_passes(restaurant):
    review = create(restaurant, text="Tinha uma barata na comida e passei mal.", rating=1)
    drain()
    review.refresh_from_db()
    assert review.sentiment == "CRITICAL"
    assert ledger_check(webhook_posts={review.pk: 1}).ok


def test_dead_lettered_review_passes(llm, restaurant):
    llm.control(mode="truncate")
    review = create(restaurant)
    drain()
    review.refresh_from_db()
    assert review.analysis_status == "failed"
    report = ledger_check()
    assert report.ok, report.findings
    assert report.dead_lettered == 1 and report.provider_calls == 1
    assert llm.stats()["calls"] == 2  # the one counted call made a repair request too


def test_parked_and_scheduled_reviews_pass_as_parked(restaurant):
    parked, scheduled = create(restaurant), create(restaurant)
    OutboxEvent.objects.filter(pk=event_of(parked).pk).update(parked_reason="budget spent")
    OutboxEvent.objects.filter(pk=event_of(scheduled).pk).update(
        available_at=timezone.now() + timedelta(minutes=5)
    )
    report = ledger_check()
    assert report.ok, report.findings
    assert report.parked == 2


def test_in_flight_is_a_finding_unless_allowed(restaurant):
    create(restaurant)
    report = ledger_check()
    assert kinds(report) == {"unexpected:in_flight"}
    relay.relay_once(batch_size=10)  # handed off: still in flight
    report = ledger_check(allow_in_flight=True)
    assert report.ok and report.in_flight == 1


def test_rate_limited_calls_are_given_back_not_counted(llm, restaurant, settings):
    settings.LLM_MAX_ATTEMPTS = 2
    llm.control(status=429, retry_after_s=0, fail_first_n=3)
    create(restaurant)
    drain()
    report = ledger_check()
    assert report.ok, report.findings
    assert report.provider_calls == 4 and report.given_back_calls == 3


def test_since_and_accepted_ids_limit_the_scope(restaurant):
    old = Review.objects.create(restaurant=restaurant, rating=3, text="no event, long ago")
    Review.objects.filter(pk=old.pk).update(created_at=timezone.now() - timedelta(days=1))
    new = create(restaurant)
    drain()
    assert ledger_check(since=timezone.now() - timedelta(hours=1)).ok
    assert ledger_check(accepted_ids=[new.pk]).ok
    assert not ledger_check().ok


# ----------------------------------------------------------------------- states that are flagged


def test_review_without_its_event_is_lost(restaurant):
    Review.objects.create(restaurant=restaurant, rating=4, text="written around the service")
    report = ledger_check()
    assert kinds(report) == {"lost:no_event"} and report.lost == 1


def test_accepted_but_not_committed_is_lost(restaurant):
    review = create(restaurant)
    drain()
    report = ledger_check(accepted_ids=[review.pk, review.pk + 1000])
    assert kinds(report) == {"lost:not_committed"} and report.lost == 1


def test_committed_although_answered_with_an_error_is_unexpected(restaurant):
    review = create(restaurant)
    drain()
    report = ledger_check(refused_ids=[review.pk])
    assert kinds(report) == {"unexpected:committed_after_error"}


def test_review_stuck_pending_with_a_finished_event_is_lost(restaurant):
    review = create(restaurant)
    OutboxEvent.objects.filter(pk=event_of(review).pk).update(
        finished_at=timezone.now(),
        finished_tasks=["aiworker.tasks.analyze_event"],
        handoffs=1,
    )
    report = ledger_check()
    assert kinds(report) == {"lost:stuck_pending"} and report.lost == 1


def test_task_enqueued_twice_for_one_handoff_is_duplicated(restaurant):
    create(restaurant)
    relay.relay_once(batch_size=10)
    row = OrmQ.objects.get()
    assert ledger_check(allow_in_flight=True).ok
    OrmQ.objects.create(key=row.key, payload=row.payload, lock=row.lock)  # enqueued twice by hand
    report = ledger_check(allow_in_flight=True)
    assert kinds(report) == {"duplicated:enqueued_twice"} and report.duplicated == 1


def test_redelivery_after_a_killed_worker_is_not_a_second_handoff(restaurant):
    create(restaurant)
    relay.relay_once(batch_size=10)
    row = OrmQ.objects.get()
    # django-q2 dequeued it ten minutes ago (the lock moved forward by `retry`), the worker
    # died, the lock expired: django-q2 will deliver it again. Meanwhile the sweeper handed
    # the event off anew. Neither is a task enqueued twice for one hand-off.
    task = SignedPackage.loads(row.payload)
    task["started"] = timezone.now() - timedelta(minutes=10)
    row.payload = SignedPackage.dumps(task)
    row.lock = timezone.now() - timedelta(seconds=1)
    row.save()
    OrmQ.objects.create(
        key=row.key,
        payload=SignedPackage.dumps({**task, "started": timezone.now()}),
        lock=timezone.now(),
    )
    report = ledger_check(allow_in_flight=True)
    assert report.ok, report.findings
    assert report.redeliveries_pending == 1


def test_too_many_provider_calls_are_duplicated(restaurant, settings):
    settings.LLM_MAX_ATTEMPTS = 2
    review = create(restaurant)
    drain()
    for _ in range(2):
        LlmCall.objects.create(
            model="m",
            prompt_version="v",
            fingerprint="f",
            batch_size=1,
            review_ids=[review.pk],
            status="error",
            error_class="TransientError",
        )
    report = ledger_check()
    assert "duplicated:too_many_calls" in kinds(report)
    assert ledger_check(max_calls_per_review=5).duplicated == 1  # still paid twice, see below


def test_paying_again_for_a_stored_result_is_duplicated(restaurant):
    review = create(restaurant)
    drain()
    LlmCall.objects.create(
        model="m",
        prompt_version="v",
        fingerprint="f",
        batch_size=1,
        review_ids=[review.pk],
        status="ok",
        latency_ms=0,
    )
    report = ledger_check(max_calls_per_review=5)
    assert kinds(report) == {"duplicated:paid_twice"}


def test_processed_and_dead_lettered_is_duplicated(restaurant):
    review = create(restaurant)
    drain()
    job = AnalysisJob.objects.get(review=review)
    now = timezone.now()
    DeadLetter.objects.create(
        job=job,
        review=review,
        revision=1,
        topic="reviews.created",
        error_class="X",
        error_message="x",
        failure_fingerprint="x",
        attempts=1,
        first_failure_at=now,
        last_failure_at=now,
    )
    assert kinds(ledger_check()) == {"duplicated:processed_and_dead_lettered"}


def test_failed_without_a_dead_letter_is_unexpected(restaurant):
    review = create(restaurant)
    drain()
    Review.objects.filter(pk=review.pk).update(analysis_status="failed")
    assert kinds(ledger_check()) == {"unexpected:failed_without_letter"}


def test_two_webhook_posts_for_one_alert_are_duplicated(restaurant):
    review = create(restaurant, text="Encontrei um cabelo no prato, que nojo.", rating=1)
    drain()
    assert kinds(ledger_check(webhook_posts={review.pk: 2})) == {"duplicated:webhook_twice"}


def test_critical_review_without_alert_is_lost(restaurant):
    review = create(restaurant)
    drain()
    Review.objects.filter(pk=review.pk).update(sentiment="CRITICAL")
    assert kinds(ledger_check()) == {"lost:alert_missing"}


def test_finished_event_never_handed_off_is_unexpected(restaurant):
    review = create(restaurant)
    drain()
    OutboxEvent.objects.filter(pk=event_of(review).pk).update(handoffs=0)
    assert kinds(ledger_check()) == {"unexpected:finished_without_handoff"}


# --------------------------------------------------------------------------- the command


def test_command_prints_counts_and_exits_zero_when_clean(restaurant, capsys):
    create(restaurant)
    drain()
    call_command("check_ledger")
    assert capsys.readouterr().out.startswith(
        "lost=0 duplicated=0 unexpected=0 (reviews=1 processed=1"
    )
    call_command("check_ledger", "--json", "--since", "15m")
    assert json.loads(capsys.readouterr().out)["processed"] == 1


def test_command_fails_with_a_one_line_message(restaurant, capsys):
    Review.objects.create(restaurant=restaurant, rating=4, text="no event")
    with pytest.raises(
        CommandError, match=r"^ledger check failed: lost=1 duplicated=0 unexpected=0$"
    ):
        call_command("check_ledger")
    assert "no_event" in capsys.readouterr().out
    with pytest.raises(CommandError, match="not an ISO date"):
        call_command("check_ledger", "--since", "yesterday-ish")


@pytest.mark.slow
def test_command_exit_codes_as_a_process(proc_env, restaurant):
    def run(*args):
        return subprocess.run(
            [sys.executable, str(ROOT / "manage.py"), "check_ledger", *args],
            env=proc_env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )

    create(restaurant)
    drain()
    ok = run("--since", "15m")
    assert ok.returncode == 0, ok.stderr
    Review.objects.create(restaurant=restaurant, rating=4, text="no event")
    bad = run("--json")
    assert bad.returncode == 1
    assert json.loads(bad.stdout)["lost"] == 1
    assert bad.stderr.strip().splitlines() == [
        "CommandError: ledger check failed: lost=1 duplicated=0 unexpected=0"
    ]
