"""The worker's bookkeeping statements, one by one, on the real database: the admission look,
the breaker's row, the result store and the attempt count (each one statement per batch)."""

import logging
from datetime import timedelta

import pytest
from django.utils import timezone
from django_q.models import OrmQ

from aiworker.analysis import Analysis, ProviderAnswer
from aiworker.jobs import _count_attempts
from aiworker.ledger import (
    Denied,
    admission_check,
    call_begin,
    call_finish,
    results_lookup,
    results_store,
)
from aiworker.models import AnalysisJob, Breaker, LlmCall
from aiworker.providers import TransientError
from aiworker.tests.conftest import run_queued
from outbox import relay
from reviews.models import Review
from reviews.services import ClaimedReview, review_create

pytestmark = pytest.mark.django_db(transaction=True)

ANSWER = ProviderAnswer(model="m", raw="{}", prompt_tokens=10, completion_tokens=5)


def _breaker(**fields) -> Breaker:
    return Breaker.objects.create(name="llm", **fields)


def _call() -> LlmCall:
    call = call_begin(model="m", fingerprints=["f"], review_ids=[1], handed_off_at=None)
    assert isinstance(call, LlmCall)
    return call


def test_admission_reads_the_breaker_once_for_parking_and_probing(settings):
    now = timezone.now()
    assert admission_check().denied is None and admission_check().breaker_closed  # no row yet
    _breaker(state="open", open_until=now + timedelta(minutes=1), reason="503s")
    admission = admission_check()
    assert isinstance(admission.denied, Denied) and not admission.breaker_closed
    assert admission.denied.kind == "breaker" and "503s" in admission.denied.reason
    # Cool-down over, or a probe running: no early parking, but the next call is a probe.
    Breaker.objects.update(open_until=now - timedelta(seconds=1))
    assert admission_check().denied is None and not admission_check().breaker_closed
    Breaker.objects.update(state="half_open", probe_started_at=now)
    assert admission_check().denied is None and not admission_check().breaker_closed
    Breaker.objects.update(state="closed", open_until=None, probe_started_at=None)
    assert admission_check().denied is None and admission_check().breaker_closed
    settings.LLM_BUDGET_REQUESTS_PER_HOUR = 0
    admission = admission_check()
    assert admission.denied is not None and admission.denied.kind == "budget"
    assert admission.breaker_closed


def test_call_begin_creates_the_breaker_row_on_first_use():
    _call()
    assert Breaker.objects.get().state == "closed"
    _call()  # and finds it afterwards
    assert Breaker.objects.count() == 1 and LlmCall.objects.count() == 2


def test_a_successful_call_resets_failures_and_closes_the_breaker(caplog):
    _breaker(consecutive_failures=2)
    call_finish(_call(), status="ok", latency_ms=1, answer=ANSWER)
    assert Breaker.objects.values_list("state", "consecutive_failures").get() == ("closed", 0)
    # The probe after a cool-down succeeds: closed, and said so in the log.
    Breaker.objects.update(
        state="open", open_until=timezone.now() - timedelta(seconds=1), reason="t"
    )
    probe = _call()
    assert Breaker.objects.get().state == "half_open"
    with caplog.at_level(logging.WARNING, logger="aiworker.ledger"):
        call_finish(probe, status="ok", latency_ms=1, answer=ANSWER)
    breaker = Breaker.objects.get()
    assert (breaker.state, breaker.open_until, breaker.probe_started_at, breaker.reason) == (
        "closed",
        None,
        None,
        "",
    )
    assert "breaker closed after a successful call" in caplog.text
    # Already closed without failures: nothing is written (changed_at would move).
    changed_at = breaker.changed_at
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="aiworker.ledger"):
        call_finish(_call(), status="ok", latency_ms=1, answer=ANSWER)
    assert Breaker.objects.get().changed_at == changed_at and not caplog.text


def test_a_failed_call_still_counts_against_the_breaker(settings):
    settings.LLM_BREAKER_FAILURES = 2
    for _ in range(2):
        call_finish(_call(), status="error", latency_ms=1, error=TransientError("503"))
    assert Breaker.objects.values_list("state", "consecutive_failures").get() == ("open", 2)


def test_results_round_trip_and_the_first_writer_wins():
    first = Analysis(sentiment="POSITIVE", tags=["taste"], language="pt", reply_draft="Obrigado!")
    call = _call()
    results_store(call=call, results={"fp1": (7, first), "fp2": (8, first)})
    later = Analysis(sentiment="NEGATIVE", tags=[], language="en", reply_draft="Sorry.")
    results_store(call=_call(), results={"fp1": (7, later)})  # a zombie storing the same content
    results_store(call=call, results={})
    assert results_lookup(fingerprints=["fp1", "fp2", "fp3"]) == {"fp1": first, "fp2": first}
    assert set(call.results.values_list("review_id", flat=True)) == {7, 8}


def test_attempts_are_counted_once_per_pending_job_and_the_others_leave_the_batch(restaurant):
    reviews = [
        review_create(restaurant_id=restaurant.pk, rating=4, text=f"Bom {i}") for i in range(5)
    ]
    fresh, pending, solo, dead, own = (r.pk for r in reviews)
    AnalysisJob.objects.create(review_id=pending, revision=1, attempts=2)
    AnalysisJob.objects.create(review_id=pending, revision=0, attempts=4)  # another revision
    AnalysisJob.objects.create(review_id=solo, revision=1, attempts=1, solo=True)
    AnalysisJob.objects.create(review_id=dead, revision=1, attempts=1, state="dead")
    AnalysisJob.objects.create(review_id=own, revision=1, attempts=1, solo=True)
    leased = timezone.now() + timedelta(minutes=1)
    Review.objects.update(analysis_claimed_until=leased)
    claimed = [ClaimedReview(r.pk, 1, r.rating, r.text, r.reply_tone) for r in reviews]

    batch, jobs = _count_attempts(claimed, own_review_id=own)

    assert [c.id for c in batch] == [fresh, pending, own]  # an own solo job stays: it is alone
    by_review = {j.review_id: j for j in AnalysisJob.objects.filter(revision=1)}
    assert jobs == {r: by_review[r].pk for r in (fresh, pending, own)}
    attempts = {r: j.attempts for r, j in by_review.items()}
    assert attempts == {fresh: 1, pending: 3, solo: 1, dead: 1, own: 2}
    assert by_review[fresh].state == "pending" and not by_review[fresh].solo
    assert AnalysisJob.objects.get(review_id=pending, revision=0).attempts == 4
    still_leased = Review.objects.filter(analysis_claimed_until=leased)
    assert set(still_leased.values_list("pk", flat=True)) == {fresh, pending, own}


def test_a_batch_leaves_no_review_leased_whether_written_or_left_out(llm, restaurant, settings):
    settings.RELAY_TASK_EVENTS = 1
    for i in range(4):
        review_create(restaurant_id=restaurant.pk, rating=5, text=f"Muito bom #{i}")
    llm.control(mode="drop_last")
    relay.relay_once(batch_size=10)
    first = OrmQ.objects.order_by("id").first()
    OrmQ.objects.exclude(pk=first.pk).delete()
    run_queued()  # one call for the 4 reviews; the answer leaves the last one out
    assert Review.objects.filter(analysis_status="done").count() == 3
    assert not Review.objects.filter(analysis_claimed_until__isnull=False).exists()
