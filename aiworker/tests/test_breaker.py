"""Budget and circuit breaker: a runaway producer cannot burn the budget, a failing provider
parks events instead of dead-lettering them, and everything resumes by itself or by staff."""

import logging
import time
from datetime import timedelta

import pytest
from django.utils import timezone

from aiworker.ledger import budget_usage
from aiworker.models import Alert, Breaker, DeadLetter, LlmCall
from aiworker.services import breaker_close, budget_update
from aiworker.tests.conftest import drain
from outbox.models import OutboxEvent
from reviews.models import Review
from reviews.services import review_create

pytestmark = pytest.mark.django_db(transaction=True)


def parked() -> int:
    return OutboxEvent.objects.filter(published_at__isnull=True).exclude(parked_reason="").count()


def all_parked_or_done(total: int):
    return (
        lambda: parked() + Review.objects.filter(analysis_status="done").count() >= total
        and not OutboxEvent.objects.filter(
            published_at__isnull=True,
            parked_reason="",
            finished_at__isnull=True,
            available_at__lte=timezone.now(),
        ).exists()
    )


@pytest.mark.slow
def test_runaway_producer_cannot_spend_more_than_the_budget(llm, restaurant, settings, staff):
    settings.LLM_BUDGET_REQUESTS_PER_HOUR = 20
    total = 5000
    for i in range(total):
        review_create(
            restaurant_id=restaurant.pk, rating=4, text=f"Pedido {i}: bom, chegou no horário."
        )
    drain(
        timeout=300,
        until=lambda: not OutboxEvent.objects.filter(
            published_at__isnull=True, parked_reason=""
        ).exists()
        and not OutboxEvent.objects.filter(
            published_at__isnull=False, finished_at__isnull=True
        ).exists(),
    )
    assert llm.stats()["calls"] == 20
    assert LlmCall.objects.count() == 20
    done = Review.objects.filter(analysis_status="done").count()
    assert done == 200  # 20 calls × batches of 10
    waiting = Review.objects.filter(analysis_status="pending")
    assert waiting.count() == total - done
    assert set(waiting.values_list("analysis_waiting", flat=True)) == {"waiting for AI budget"}
    assert not Review.objects.filter(analysis_status="failed").exists()
    assert not DeadLetter.objects.exists()
    assert parked() > 0

    # Staff raise the budget: parked events resume at once, and everything is analysed.
    budget_update(user=staff, requests_per_hour=10_000, tokens_per_hour=None, tokens_per_day=None)
    drain(timeout=600)
    assert Review.objects.filter(analysis_status="done").count() == total
    assert llm.stats()["calls"] == total // 10
    assert budget_usage()["requests_per_hour"] == total // 10


def test_food_safety_alert_does_not_wait_for_the_budget(llm, restaurant, settings):
    settings.LLM_BUDGET_REQUESTS_PER_HOUR = 0
    review = review_create(
        restaurant_id=restaurant.pk, rating=1, text="Tinha uma barata na marmita!"
    )
    drain(
        until=lambda: parked() == 1
        and OutboxEvent.objects.filter(
            topic="reviews.critical_alert", finished_at__isnull=False
        ).exists()
    )
    assert llm.stats()["calls"] == 0
    assert Alert.objects.get().review_id == review.pk
    review.refresh_from_db()
    assert (
        review.analysis_status == "pending" and review.analysis_waiting == "waiting for AI budget"
    )


def test_breaker_opens_after_failures_probes_after_cooldown_and_closes(
    llm, restaurant, owner, settings, caplog
):
    from reviews.models import Restaurant

    settings.LLM_BREAKER_FAILURES = 3
    settings.LLM_BREAKER_COOLDOWN_S = 1.0
    # Few attempts: failed probes and the failure that opens the breaker must not spend them.
    settings.LLM_MAX_ATTEMPTS = 2
    restaurants = [Restaurant.objects.create(name=f"R{i}", owner=owner) for i in range(6)]
    llm.control(status=503)
    for r in restaurants:
        review_create(restaurant_id=r.pk, rating=5, text="Muito bom")
    drain(until=lambda: Breaker.objects.filter(state="open").exists())
    breaker = Breaker.objects.get()
    assert breaker.consecutive_failures == 3 and "503" in breaker.reason
    calls_when_opened = llm.stats()["calls"]
    assert calls_when_opened == 3
    # While open: events wait, the provider is not called, nothing is dead-lettered.
    drain(until=lambda: parked() >= 3)
    assert llm.stats()["calls"] == calls_when_opened
    # After the cool-down one probe goes through; it fails, so the breaker opens again.
    time.sleep(1.1)
    drain(
        until=lambda: llm.stats()["calls"] == calls_when_opened + 1
        and Breaker.objects.get().state == "open"
    )
    assert llm.stats()["calls"] == calls_when_opened + 1
    # The provider heals: the next probe succeeds and closes the breaker; all reviews finish.
    llm.control(clear=True)
    time.sleep(1.1)
    drain(timeout=60)
    assert Breaker.objects.get().state == "closed"
    assert Review.objects.filter(analysis_status="done").count() == 6
    assert not DeadLetter.objects.exists()


def test_a_probe_call_carries_only_its_own_review(llm, restaurant, settings):
    settings.LLM_BREAKER_COOLDOWN_S = 1.0
    for i in range(4):
        review_create(restaurant_id=restaurant.pk, rating=4, text=f"Pedido {i}: bom")
    # Cool-down over: the next call is the probe.
    Breaker.objects.create(
        name="llm", state="open", open_until=timezone.now() - timedelta(seconds=1), reason="t"
    )
    llm.control(status=503)
    drain(until=lambda: LlmCall.objects.exists() and Breaker.objects.get().state == "open")
    assert list(LlmCall.objects.values_list("batch_size", flat=True)) == [1]
    llm.control(clear=True)
    time.sleep(1.1)
    drain(timeout=60)
    assert Breaker.objects.get().state == "closed"
    assert Review.objects.filter(analysis_status="done").count() == 4
    probes = LlmCall.objects.order_by("created_at")[:2]
    assert [c.batch_size for c in probes] == [1, 1]  # the failed probe and the one that closed it
    assert sum(LlmCall.objects.values_list("batch_size", flat=True)) >= 4


def test_401_opens_the_breaker_at_once_logs_loudly_and_fails_nothing(
    llm, restaurant, settings, caplog, staff
):
    llm.control(status=401)
    review = review_create(restaurant_id=restaurant.pk, rating=2, text="Demorou muito")
    with caplog.at_level(logging.ERROR, logger="aiworker"):
        drain(until=lambda: parked() == 1)
    breaker = Breaker.objects.get()
    assert breaker.state == "open" and breaker.open_until > timezone.now() + timedelta(seconds=60)
    assert "REFUSED OUR CREDENTIALS" in caplog.text and "test-key" not in caplog.text
    assert llm.stats()["calls"] == 1 and not DeadLetter.objects.exists()
    review.refresh_from_db()
    assert (
        review.analysis_status == "pending"
        and review.analysis_waiting == "waiting for the AI provider"
    )
    # Staff fix the key and close the breaker: the parked event resumes at once.
    llm.control(clear=True)
    assert breaker_close(user=staff) == 1
    drain()
    review.refresh_from_db()
    assert review.analysis_status == "done" and review.analysis_waiting == ""


def test_offline_fallback_is_provisional_and_replaced_by_the_llm(llm, restaurant, settings, staff):
    settings.LLM_FALLBACK_LOCAL = True
    settings.LLM_BUDGET_REQUESTS_PER_HOUR = 0
    review = review_create(restaurant_id=restaurant.pk, rating=5, text="Excelente, tudo perfeito!")
    drain(until=lambda: parked() == 1)
    review.refresh_from_db()
    assert (review.analysis_status, review.analysis_provisional, review.analysis_model) == (
        "done",
        True,
        "local-lexicon",
    )
    assert review.sentiment == "POSITIVE" and review.analysis_waiting == "waiting for AI budget"
    budget_update(user=staff, requests_per_hour=None, tokens_per_hour=None, tokens_per_day=None)
    settings.LLM_BUDGET_REQUESTS_PER_HOUR = None
    drain()
    review.refresh_from_db()
    assert (review.analysis_status, review.analysis_provisional, review.analysis_model) == (
        "done",
        False,
        "gpt-4o-mini",
    )
    assert llm.stats()["calls"] == 1
