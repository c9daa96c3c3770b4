"""Fixtures of the owners' web app tests: review factories and a real headless Chromium."""

import os
from datetime import datetime
from pathlib import Path

import pytest
from django.db import transaction

from reviews.models import Restaurant, Review
from reviews.services import review_apply_analysis, review_create

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


def analyse(
    review: Review,
    *,
    sentiment: str = "POSITIVE",
    tags: list[str] | None = None,
    draft: str = "Thank you for your review!",
    language: str = "en",
    model: str = "gpt-4o-mini",
    provisional: bool = False,
    analyzed_at: datetime | None = None,
) -> Review:
    """Land an analysis exactly as the AI worker does: the service, inside a transaction."""
    with transaction.atomic():
        done = review_apply_analysis(
            review_id=review.pk,
            revision=review.revision,
            sentiment=sentiment,
            tags=tags if tags is not None else ["food_quality"],
            language=language,
            reply_draft=draft,
            model=model,
            provisional=provisional,
            analyzed_at=analyzed_at,
        )
    assert done is not None
    return done


@pytest.fixture
def land_analysis():
    return analyse


@pytest.fixture
def make_review():
    """make_review(restaurant, text=..., rating=..., analysed=dict(...) or None)."""

    def make(
        restaurant: Restaurant,
        text: str = "Good food.",
        *,
        rating: int = 4,
        author_name: str = "Marina",
        analysed: dict | None = None,
    ) -> Review:
        review = review_create(
            restaurant_id=restaurant.pk, rating=rating, text=text, author_name=author_name
        )
        if analysed is not None:
            review = analyse(review, **analysed)
        return review

    return make


@pytest.fixture(scope="module")
def browser():
    """Debian's chromium driven by Playwright's sync API (no downloaded browser builds)."""
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is missing: install Debian's chromium (make test does)")
    from playwright.sync_api import sync_playwright

    # Playwright's sync API runs an event loop in this thread; Django's ORM calls from the
    # test itself are still synchronous, so this only silences the async-context check, and
    # only while this module's browser lives (subprocesses started later must not inherit it).
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    try:
        yield from _chromium(sync_playwright)
    finally:
        os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)


def _chromium(sync_playwright):
    with sync_playwright() as p:
        chromium = p.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, live_server):
    context = browser.new_context(
        base_url=live_server.url, viewport={"width": 1280, "height": 900}, locale="en-US"
    )
    context.set_default_timeout(10_000)
    page = context.new_page()
    errors: list[str] = []
    # A CSP violation or a script error shows up here; the tests assert there were none.
    page.on("console", lambda msg: msg.type == "error" and errors.append(msg.text))
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.console_errors = errors
    yield page
    context.close()


@pytest.fixture
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


@pytest.fixture
def browser_login():
    def login(page, username: str, password: str) -> None:
        page.goto("/accounts/login/")
        page.get_by_label("Username").fill(username)
        page.get_by_label("Password").fill(password)
        page.get_by_role("button", name="Log in").click()
        page.wait_for_url("**/")

    return login
