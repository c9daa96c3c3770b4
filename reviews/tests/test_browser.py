"""The owners' page in real headless Chromium (Debian's package, driven by Playwright).

What only a browser can show: htmx swaps a pending row in place when the analysis lands and
then stops polling, filters update the list and the URL without a navigation, the reply
workflow works by mouse and keyboard, and the CSP blocks nothing of ours.
"""

import re
import time
from datetime import timedelta

import pytest
from django.db import transaction
from django.utils import timezone

from reviews.models import Review
from reviews.services import reply_approve, review_apply_analysis

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

MARKER = "window.__noReload"


def land(review: Review, **fields) -> None:
    """What the AI worker does when an analysis is ready."""
    values = {
        "sentiment": "POSITIVE",
        "tags": ["taste"],
        "language": "pt",
        "reply_draft": "Obrigado pela avaliação!",
        "model": "gpt-4o-mini",
    }
    values.update(fields)
    with transaction.atomic():
        assert review_apply_analysis(review_id=review.pk, revision=review.revision, **values)


def polls_of(page, review: Review) -> list[float]:
    """Times at which the page asked for this review's row."""
    times: list[float] = []
    path = f"/reviews/{review.pk}/"
    page.on("request", lambda r: r.url.endswith(path) and times.append(time.monotonic()))
    return times


def test_pending_review_turns_analysed_in_place_and_stops_polling(
    page, browser_login, owner, restaurant, make_review
):
    review = make_review(restaurant, "A pizza chegou fria e sem o refrigerante.", rating=2)
    browser_login(page, "alice", "alice-pass-123")
    row = page.locator(f"#review-{review.pk}")
    assert "Analysis pending" in row.inner_text()
    assert row.get_attribute("hx-trigger") == "every 2s"
    polls = polls_of(page, review)
    page.evaluate(f"{MARKER} = 'still here'")

    land(
        review,
        sentiment="NEGATIVE",
        tags=["temperature", "missing_items"],
        reply_draft="Sentimos muito!",
    )

    row.locator(".badge--negative").wait_for(timeout=8_000)
    assert page.evaluate(MARKER) == "still here", "the page reloaded"
    text = row.inner_text()
    assert "Negative" in text and "Temperature" in text and "Missing items" in text
    assert row.locator("textarea").input_value() == "Sentimos muito!"
    assert row.get_attribute("hx-trigger") is None
    assert polls, "the pending row never polled"
    seen = len(polls)
    page.wait_for_timeout(2_500)
    assert len(polls) == seen, "the row kept polling after the analysis landed"
    assert page.console_errors == []


def test_filter_by_tag_updates_list_and_url_without_reload(
    page, browser_login, restaurant, make_review
):
    late = make_review(
        restaurant,
        "Demorou duas horas.",
        analysed={"sentiment": "NEGATIVE", "tags": ["delivery_time"]},
    )
    tasty = make_review(
        restaurant, "Delicious and hot.", analysed={"sentiment": "POSITIVE", "tags": ["taste"]}
    )
    browser_login(page, "alice", "alice-pass-123")
    assert page.locator("article.review").count() == 2
    page.evaluate(f"{MARKER} = 'still here'")

    page.get_by_label("Tag", exact=True).select_option("delivery_time")
    page.wait_for_url(re.compile(r"\?tag=delivery_time$"))
    page.locator(f"#review-{tasty.pk}").wait_for(state="detached")
    assert page.locator("article.review").count() == 1
    assert page.locator(f"#review-{late.pk}").is_visible()
    assert page.evaluate(MARKER) == "still here", "filtering reloaded the page"
    assert page.locator("#results-count").inner_text() == "1 review"

    # The pushed URL is shareable: opened afresh it shows the same list and filter.
    page.goto(page.url)
    assert page.get_by_label("Tag", exact=True).input_value() == "delivery_time"
    assert page.locator("article.review").count() == 1

    # Typing in the search box filters as well, after a short pause.
    page.get_by_label("Tag", exact=True).select_option("")
    page.get_by_label("Search").press_sequentially("delicious")
    page.wait_for_url(re.compile(r"\?q=delicious$"))
    page.locator(f"#review-{late.pk}").wait_for(state="detached")
    assert page.locator(f"#review-{tasty.pk}").is_visible()
    assert page.console_errors == []


def test_edit_and_approve_a_draft_then_copy_it(page, browser_login, owner, restaurant, make_review):
    review = make_review(restaurant, "Great burger!", analysed={"draft": "Thanks for your review!"})
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    browser_login(page, "alice", "alice-pass-123")
    row = page.locator(f"#review-{review.pk}")
    draft = row.get_by_label("Suggested reply")
    assert draft.input_value() == "Thanks for your review!"
    assert "Draft · not published" in row.inner_text()

    draft.fill("Thanks, glad you liked the burger!")
    row.get_by_role("button", name="Save draft").click()
    row.get_by_text("Draft saved").wait_for()
    review.refresh_from_db()
    assert review.reply_draft == "Thanks, glad you liked the burger!"
    assert review.reply_approved_at is None

    row.get_by_label("Suggested reply").fill("Thanks, Marina — see you soon!")
    # Keyboard only: focus the approve button and press Enter.
    row.get_by_role("button", name="Approve reply").focus()
    page.keyboard.press("Enter")
    row.get_by_role("heading", name="Approved reply").wait_for()
    review.refresh_from_db()
    assert review.reply_text == "Thanks, Marina — see you soon!"
    assert review.reply_approved_by == owner
    assert "Approved by alice" in row.inner_text()

    row.get_by_role("button", name="Copy reply").click()
    row.get_by_text("Copied to the clipboard").wait_for()
    assert page.evaluate("navigator.clipboard.readText()") == "Thanks, Marina — see you soon!"
    assert page.console_errors == []


def test_request_a_new_draft_in_a_tone(page, browser_login, restaurant, make_review):
    review = make_review(restaurant, "Veio errado.", analysed={"sentiment": "NEGATIVE"})
    browser_login(page, "alice", "alice-pass-123")
    row = page.locator(f"#review-{review.pk}")
    row.get_by_label("New AI draft, tone").select_option("apologetic")
    row.get_by_role("button", name="Request new draft").click()
    row.get_by_text("Analysis pending").wait_for()
    assert row.get_attribute("hx-trigger") == "every 2s"
    review.refresh_from_db()
    assert (review.analysis_status, review.reply_tone) == ("pending", "apologetic")


def test_inbox_screenshots(page, browser_login, owner, restaurant, make_review, artifacts):
    """A realistic inbox, saved for people to look at (desktop and phone width)."""
    reviews = [
        (
            "Entrega super rápida e a comida chegou quentinha. Voltarei a pedir!",
            5,
            "Marina",
            {
                "sentiment": "POSITIVE",
                "tags": ["delivery_time", "temperature"],
                "language": "pt",
                "draft": "Olá, Marina! Que bom que gostou. Esperamos você de novo!",
            },
        ),
        (
            "The burger was fine but the fries were soggy and cold.",
            3,
            "Sam",
            {
                "sentiment": "NEUTRAL",
                "tags": ["temperature", "food_quality"],
                "language": "en",
                "draft": "Hi Sam, thanks for the feedback: we are checking how we pack fries.",
            },
        ),
        (
            "Pedido atrasou mais de uma hora e veio faltando o refrigerante.",
            2,
            "João",
            {
                "sentiment": "NEGATIVE",
                "tags": ["delivery_time", "missing_items"],
                "language": "pt",
                "draft": "Olá, João. Pedimos desculpas pelo atraso e pelo item faltando.",
            },
        ),
        (
            "Encontrei um cabelo na comida e passei mal depois.",
            1,
            "Paula",
            {
                "sentiment": "CRITICAL",
                "tags": ["hygiene", "food_safety"],
                "language": "pt",
                "draft": "Paula, sentimos muito. Entre em contato para que possamos resolver.",
            },
        ),
        ("Ótimo custo-benefício, porção generosa.", 5, "Rafael", None),
    ]
    made = []
    for n, (text, rating, author, analysis) in enumerate(reviews):
        review = make_review(restaurant, text, rating=rating, author_name=author)
        Review.objects.filter(pk=review.pk).update(
            created_at=timezone.now() - timedelta(hours=30 - 6 * n)
        )
        if analysis:
            land(
                review,
                sentiment=analysis["sentiment"],
                tags=analysis["tags"],
                language=analysis["language"],
                reply_draft=analysis["draft"],
            )
        made.append(review)
    reply_approve(review=made[0], text="Olá, Marina! Obrigado, volte sempre!", user=owner)

    browser_login(page, "alice", "alice-pass-123")
    page.locator(".badge--critical").wait_for()
    page.screenshot(path=str(artifacts / "inbox.png"), full_page=True)

    page.set_viewport_size({"width": 390, "height": 844})
    page.reload()
    page.locator(".badge--critical").wait_for()
    # Nothing may stick out sideways at phone width.
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    page.screenshot(path=str(artifacts / "inbox-mobile.png"), full_page=True)

    page.set_viewport_size({"width": 1280, "height": 900})
    page.goto(f"/restaurants/{restaurant.pk}/trends/")
    page.locator("svg.chart").wait_for()
    page.screenshot(path=str(artifacts / "trends.png"), full_page=True)
    page.goto(f"/r/{restaurant.pk}/")
    page.screenshot(path=str(artifacts / "review-form.png"), full_page=True)
    assert page.console_errors == []
