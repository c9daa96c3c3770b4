"""Staff triage in the admin, replay safety, and model output that must stay data."""

import threading
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.urls import reverse

from aiworker.models import Budget, DeadLetter
from aiworker.services import dead_letters_replay
from aiworker.tests.conftest import drain
from outbox.models import OutboxEvent
from reviews.models import Review
from reviews.services import review_create, review_update

pytestmark = pytest.mark.django_db(transaction=True)


def fail_one(llm, restaurant, settings, text="Pedido frio") -> Review:
    settings.LLM_MAX_ATTEMPTS = 1
    llm.control(status=500)
    review = review_create(restaurant_id=restaurant.pk, rating=2, text=text)
    drain()
    llm.control(clear=True)
    return review


def test_replay_of_an_old_revision_never_overwrites_a_newer_one(llm, restaurant, settings):
    review = fail_one(llm, restaurant, settings)
    review_update(review=review, text="Na verdade chegou quente e estava ótimo", rating=5)
    drain()
    review.refresh_from_db()
    assert (review.revision, review.analysis_status, review.sentiment) == (2, "done", "POSITIVE")
    calls = llm.stats()["calls"]
    result = dead_letters_replay(ids=None)
    assert len(result.replayed) == 1
    drain()
    review.refresh_from_db()
    assert (review.revision, review.analysis_status, review.sentiment) == (2, "done", "POSITIVE")
    assert llm.stats()["calls"] == calls  # nothing paid for the stale revision


def test_two_replays_at_once_replay_a_letter_once(llm, restaurant, settings):
    fail_one(llm, restaurant, settings)
    results = []

    def replay():
        try:
            results.append(dead_letters_replay(ids=None))
        finally:
            connection.close()

    threads = [threading.Thread(target=replay) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(len(r.replayed) for r in results) == [0, 1]
    assert OutboxEvent.objects.filter(payload__has_key="replay_of").count() == 1


def test_replay_command_dry_run_and_bad_input(llm, restaurant, settings):
    fail_one(llm, restaurant, settings)
    letter = DeadLetter.objects.get()
    out = StringIO()
    call_command("replay_dead_letters", "--all", "--dry-run", stdout=out)
    assert f"would replay #{letter.pk}" in out.getvalue()
    assert DeadLetter.objects.get().status == "open"
    with pytest.raises(CommandError, match="either --all or"):
        call_command("replay_dead_letters", stdout=StringIO())
    with pytest.raises(CommandError, match="nothing replayed"):
        call_command("replay_dead_letters", "999999", stdout=StringIO(), stderr=StringIO())
    call_command("replay_dead_letters", str(letter.pk), stdout=out)
    assert DeadLetter.objects.get().status == "replayed"
    assert Review.objects.get().analysis_status == "pending"


def test_admin_replay_and_discard_record_who_and_when(client, staff, llm, restaurant, settings):
    fail_one(llm, restaurant, settings, text="um")
    fail_one(llm, restaurant, settings, text="dois")
    first, second = DeadLetter.objects.order_by("pk")
    client.force_login(staff)
    url = reverse("admin:aiworker_deadletter_changelist")
    page = client.get(url)
    assert page.status_code == 200 and b"TransientError" in page.content
    client.post(url, {"action": "replay", "_selected_action": [first.pk]})
    client.post(url, {"action": "discard", "_selected_action": [second.pk]})
    first.refresh_from_db()
    second.refresh_from_db()
    assert (first.status, first.resolved_by, second.status, second.resolved_by) == (
        "replayed",
        staff,
        "discarded",
        staff,
    )
    assert first.resolved_at and second.resolved_at


def test_raising_the_budget_in_the_admin_resumes_parked_events_at_once(
    client, staff, llm, restaurant, settings
):
    settings.LLM_BUDGET_REQUESTS_PER_HOUR = 0
    review = review_create(restaurant_id=restaurant.pk, rating=4, text="Bom")
    drain(until=lambda: OutboxEvent.objects.exclude(parked_reason="").exists())
    client.force_login(staff)
    response = client.post(
        reverse("admin:aiworker_budget_add"),
        {
            "requests_per_hour": "100",
            "tokens_per_hour": "",
            "tokens_per_day": "",
            "usd_per_day": "",
        },
    )
    assert response.status_code == 302
    assert Budget.objects.get().updated_by == staff
    assert not OutboxEvent.objects.exclude(parked_reason="").exists()
    drain()
    review.refresh_from_db()
    assert review.analysis_status == "done"


def test_model_output_with_markup_is_escaped_on_the_owners_page(client, llm, restaurant, owner):
    llm.control(mode="xss")
    review_create(restaurant_id=restaurant.pk, rating=3, text="Ok")
    drain()
    review = Review.objects.get()
    assert "<script>" in review.reply_draft  # stored as data...
    client.force_login(owner)
    html = client.get("/").content.decode()
    assert "<script>alert(1)</script>" not in html  # ...and never rendered as markup
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<img src=x onerror" not in html and '<a hx-get="/admin/">' not in html
