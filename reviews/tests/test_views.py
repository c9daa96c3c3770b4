"""The owners' web app and the public review form, through Django's test client.

Real PostgreSQL, real services; the AI worker is stood in for only by calling the same
service it calls (`review_apply_analysis`).
"""

import re
from datetime import timedelta
from pathlib import Path

import pytest
from django.db.models import F
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from aiworker.models import LlmCall
from outbox.models import OutboxEvent
from reviews.models import Review
from reviews.services import review_mark_failed, review_mark_pending
from reviews.trends import restaurant_trends

pytestmark = pytest.mark.django_db

HTMX = {"HTTP_HX_REQUEST": "true"}
XSS = (
    '<script>alert(1)</script><img src=x onerror="alert(2)">'
    '<div hx-get="/evil" hx-trigger="load">x</div>'
)


@pytest.fixture
def alice(client, owner) -> Client:
    client.force_login(owner)
    return client


@pytest.fixture
def bob(other_owner) -> Client:
    client = Client()
    client.force_login(other_owner)
    return client


def row_html(content: bytes, review: Review) -> str:
    """The <article> of one review in a page."""
    html = content.decode()
    start = html.index(f'<article id="review-{review.pk}"')
    return html[start : html.index("</article>", start)]


# --- Log in and out -----------------------------------------------------------------------------


def test_login_page_and_login_lead_to_the_inbox(client, owner):
    page = client.get(reverse("login"))
    assert page.status_code == 200
    assert b'<label for="id_username">' in page.content
    answer = client.post(reverse("login"), {"username": "alice", "password": "alice-pass-123"})
    assert answer.status_code == 302
    assert answer["Location"] == reverse("inbox")
    assert client.get(reverse("inbox")).status_code == 200


def test_password_reset_page_is_djangos_own(client, db):
    assert client.get(reverse("password_reset")).status_code == 200


def test_logout_is_a_post_and_ends_the_session(alice):
    assert alice.post(reverse("logout")).status_code == 302
    assert alice.get(reverse("inbox")).status_code == 302


@pytest.mark.parametrize(
    "name,kwargs",
    [
        ("inbox", {}),
        ("review-detail", {"review_id": 1}),
        ("trends-index", {}),
        ("trends", {"restaurant_id": 1}),
    ],
)
def test_owner_pages_need_a_login(client, name, kwargs):
    answer = client.get(reverse(name, kwargs=kwargs))
    assert answer.status_code == 302
    assert answer["Location"].startswith(reverse("login") + "?next=")


def test_an_expired_session_sends_a_polling_row_to_the_login_page_not_into_the_row(client):
    answer = client.get(
        reverse("review-detail", args=[1]),
        HTTP_HX_CURRENT_URL="http://testserver/?tag=price",
        **HTMX,
    )
    assert answer.status_code == 200
    assert answer["HX-Redirect"] == "/accounts/login/?next=/%3Ftag%3Dprice"
    assert answer.content == b""


# --- The inbox ----------------------------------------------------------------------------------


def test_inbox_renders_rows_server_side_newest_first(alice, restaurant, make_review):
    old = make_review(restaurant, "Older review")
    new = make_review(restaurant, "Newer review")
    Review.objects.filter(pk=old.pk).update(created_at=timezone.now() - timedelta(hours=2))
    page = alice.get(reverse("inbox"))
    html = page.content.decode()
    assert page.status_code == 200
    assert "<html" in html
    assert html.index(f'id="review-{new.pk}"') < html.index(f'id="review-{old.pk}"')
    assert "2 reviews" in html
    # The page works without JS: htmx is only loaded from our own static files.
    assert '<script src="/static/vendor/htmx.min.js" defer></script>' in html
    assert "<script>" not in html
    assert (
        "includeIndicatorStyles&quot;: false" in html or '"includeIndicatorStyles": false' in html
    )


def test_inbox_sends_a_content_security_policy_allowing_only_own_scripts(alice):
    csp = alice.get(reverse("inbox"))["Content-Security-Policy"]
    assert "script-src 'self'" in csp
    assert "unsafe-inline" not in csp


def test_pending_row_says_so_with_its_age_and_polls_every_two_seconds(
    alice, restaurant, make_review
):
    review = make_review(restaurant, "Chegou frio.")
    row = row_html(alice.get(reverse("inbox")).content, review)
    assert "Analysis pending" in row
    assert re.search(r"Analysis pending · \d+ s", row)
    assert f'hx-get="{reverse("review-detail", args=[review.pk])}"' in row
    assert 'hx-trigger="every 2s"' in row
    # While pending there is no draft to approve.
    assert "Approve reply" not in row


def test_polling_partial_is_only_the_row_and_stops_polling_once_analysed(
    alice, restaurant, make_review, land_analysis
):
    review = make_review(restaurant, "Comida ótima!")
    url = reverse("review-detail", args=[review.pk])
    pending = alice.get(url, **HTMX)
    assert pending.status_code == 200
    assert pending.content.decode().lstrip().startswith(f'<article id="review-{review.pk}"')
    assert "<html" not in pending.content.decode()
    assert b'hx-trigger="every 2s"' in pending.content
    assert "HX-Request" in pending["Vary"]

    land_analysis(
        review, sentiment="POSITIVE", tags=["taste", "delivery_time"], draft="Obrigado, Marina!"
    )
    done = alice.get(url, **HTMX).content.decode()
    assert "hx-trigger" not in done
    assert "every 2s" not in done
    assert "Positive" in done
    assert "Taste" in done and "Delivery time" in done
    assert "Obrigado, Marina!" in done
    assert "Draft · not published" in done


def test_failed_waiting_and_provisional_states_are_shown_honestly(
    alice, restaurant, make_review, land_analysis
):
    failed = make_review(restaurant, "failed one")
    review_mark_failed(review_id=failed.pk, revision=failed.revision)
    waiting = make_review(restaurant, "waiting one")
    review_mark_pending(review_id=waiting.pk, waiting="waiting for AI budget")
    provisional = land_analysis(
        make_review(restaurant, "provisional one"), provisional=True, model="local-lexicon"
    )
    html = alice.get(reverse("inbox")).content
    failed_row = row_html(html, failed)
    assert "Analysis failed — staff notified" in failed_row
    assert "hx-trigger" not in failed_row
    # The owner can still write a reply by hand.
    assert "Approve reply" in failed_row
    waiting_row = row_html(html, waiting)
    assert "Waiting for AI budget" in waiting_row
    assert "hx-trigger=" in waiting_row  # parked work resumes by itself, so the row keeps asking
    provisional_row = row_html(html, provisional)
    assert "Provisional analysis by local-lexicon" in provisional_row
    assert "hx-trigger=" in provisional_row  # the real analysis will replace it


def test_critical_reviews_stand_out_and_are_counted(alice, restaurant, make_review):
    critical = make_review(
        restaurant,
        "Encontrei um cabelo na comida",
        rating=1,
        analysed={"sentiment": "CRITICAL", "tags": ["hygiene"]},
    )
    fine = make_review(restaurant, "Muito bom", analysed={"sentiment": "POSITIVE"})
    html = alice.get(reverse("inbox")).content
    assert "review--critical" in row_html(html, critical)
    assert "review--critical" not in row_html(html, fine)
    assert b"1 critical review without reply" in html
    assert b'href="?sentiment=CRITICAL&amp;replied=no"' in html


@pytest.fixture
def varied(restaurant, owner, make_review, land_analysis):
    """A spread of reviews of alice's restaurant and a second restaurant of hers."""
    from reviews.models import Restaurant
    from reviews.services import reply_approve

    second = Restaurant.objects.create(name="Segunda Casa", owner=owner)
    reviews = {
        "critical": make_review(
            restaurant,
            "Passei mal",
            rating=1,
            analysed={"sentiment": "CRITICAL", "tags": ["food_safety"]},
        ),
        "late": make_review(
            restaurant,
            "Atrasou muito",
            rating=2,
            analysed={"sentiment": "NEGATIVE", "tags": ["delivery_time"]},
        ),
        "great": make_review(
            second,
            "Great burger",
            rating=5,
            author_name="Sam",
            analysed={"sentiment": "POSITIVE", "tags": ["taste"]},
        ),
        "pending": make_review(second, "Ainda não analisado", rating=3),
    }
    reply_approve(review=reviews["great"], text="Thanks Sam!", user=owner)
    reviews["second"] = second
    return reviews


def inbox_ids(client, **params) -> set[int]:
    html = client.get(reverse("inbox"), params).content.decode()
    return {int(pk) for pk in re.findall(r'<article id="review-(\d+)"', html)}


@pytest.mark.parametrize(
    "params,expected",
    [
        ({}, {"critical", "late", "great", "pending"}),
        ({"status": "pending"}, {"pending"}),
        ({"status": "done"}, {"critical", "late", "great"}),
        ({"sentiment": "CRITICAL"}, {"critical"}),
        ({"sentiment": "NEGATIVE"}, {"late"}),
        ({"tag": "delivery_time"}, {"late"}),
        ({"rating": "5"}, {"great"}),
        ({"replied": "yes"}, {"great"}),
        ({"replied": "no"}, {"critical", "late", "pending"}),
        ({"q": "atrasou"}, {"late"}),
        ({"q": "sam"}, {"great"}),
        ({"sentiment": "CRITICAL", "replied": "no"}, {"critical"}),
    ],
)
def test_filters(alice, varied, params, expected):
    assert inbox_ids(alice, **params) == {varied[name].pk for name in expected}


def test_restaurant_filter_and_htmx_answer_only_the_results(alice, varied):
    second = varied["second"]
    assert inbox_ids(alice, restaurant=second.pk) == {varied["great"].pk, varied["pending"].pk}
    partial = alice.get(reverse("inbox"), {"restaurant": second.pk}, **HTMX)
    html = partial.content.decode()
    assert html.lstrip().startswith('<section id="results"')
    assert "<html" not in html and 'id="filters"' not in html
    assert "2 reviews" in html
    assert "HX-Request" in partial["Vary"]


def test_filter_form_updates_the_list_with_htmx_and_pushes_the_url(alice, varied):
    html = alice.get(reverse("inbox")).content.decode()
    form = html[
        html.index('<form id="filters"') : html.index("</form>", html.index('<form id="filters"'))
    ]
    assert 'hx-get="/"' in form and 'hx-target="#results"' in form and 'hx-push-url="true"' in form
    # Only tags that occur in alice's reviews are offered.
    assert '<option value="delivery_time">Delivery time</option>' in form
    assert 'value="hygiene"' not in form


def test_invalid_filter_values_are_ignored_and_reported(alice, varied):
    answer = alice.get(reverse("inbox"), {"sentiment": "EVIL", "rating": "9"})
    assert answer.status_code == 200
    assert b"Select a valid choice" in answer.content
    assert len(re.findall(rb'<article id="review-', answer.content)) == 4


def test_pagination_keeps_the_filters(alice, restaurant, make_review):
    for n in range(23):
        make_review(restaurant, f"review number {n}", rating=3)
    first = alice.get(reverse("inbox"), {"rating": "3"}).content.decode()
    assert first.count('<article id="review-') == 20
    assert "Page 1 of 2" in first
    assert 'href="?rating=3&amp;page=2"' in first
    second = alice.get(reverse("inbox"), {"rating": "3", "page": "2"}).content.decode()
    assert second.count('<article id="review-') == 3


# --- The reply workflow ---------------------------------------------------------------------------


def test_save_draft_keeps_edits_without_approving(alice, restaurant, make_review):
    review = make_review(restaurant, analysed={"draft": "AI draft"})
    answer = alice.post(
        reverse("reply-save", args=[review.pk]), {"text": "My edited draft"}, **HTMX
    )
    assert answer.status_code == 200
    assert b"Draft saved" in answer.content
    review.refresh_from_db()
    assert review.reply_draft == "My edited draft"
    assert review.reply_approved_at is None and review.reply_text == ""


def test_approval_records_text_who_and_when(alice, owner, restaurant, make_review):
    review = make_review(restaurant, analysed={"draft": "AI draft"})
    before = timezone.now()
    answer = alice.post(
        reverse("reply-approve", args=[review.pk]), {"text": "  Thank you, Marina!  "}, **HTMX
    )
    assert answer.status_code == 200
    review.refresh_from_db()
    assert review.reply_text == "Thank you, Marina!"
    assert review.reply_approved_by == owner
    assert before <= review.reply_approved_at <= timezone.now()
    row = answer.content.decode()
    assert "Approved reply" in row and "Approved by alice" in row
    assert f'data-copy-target="reply-text-{review.pk}"' in row
    assert f'id="reply-text-{review.pk}"' in row
    # Once approved: no draft editor, no tone regeneration, no deadline nagging.
    assert "Save draft" not in row and "Request new draft" not in row and "Reply by" not in row


def test_an_empty_approval_is_refused_and_records_nothing(alice, restaurant, make_review):
    review = make_review(restaurant, analysed={})
    answer = alice.post(reverse("reply-approve", args=[review.pk]), {"text": "   "}, **HTMX)
    assert answer.status_code == 200
    assert b"Write a reply before approving it." in answer.content
    review.refresh_from_db()
    assert review.reply_approved_at is None


def test_without_htmx_an_action_redirects_to_the_review_page(alice, restaurant, make_review):
    review = make_review(restaurant, analysed={})
    answer = alice.post(reverse("reply-approve", args=[review.pk]), {"text": "Thanks!"})
    assert answer.status_code == 302
    assert answer["Location"] == reverse("review-detail", args=[review.pk])
    page = alice.get(answer["Location"])
    assert b"Reply approved." in page.content
    assert b"<html" in page.content


def test_reply_deadline_is_shown_and_overdue_stands_out(alice, restaurant, make_review):
    fresh = make_review(restaurant, analysed={})
    late = make_review(restaurant, analysed={})
    Review.objects.filter(pk=late.pk).update(created_at=timezone.now() - timedelta(days=8))
    html = alice.get(reverse("inbox")).content
    assert "Reply by" in row_html(html, fresh)
    assert "6\xa0days" in row_html(html, fresh)
    assert "Reply overdue" in row_html(html, late)


def test_asking_for_a_new_draft_goes_through_the_outbox_not_the_request(
    alice, restaurant, make_review
):
    review = make_review(restaurant, analysed={"sentiment": "NEGATIVE", "draft": "Old draft"})
    revision = review.revision
    answer = alice.post(reverse("reply-request", args=[review.pk]), {"tone": "apologetic"}, **HTMX)
    assert answer.status_code == 200
    event = OutboxEvent.objects.get(topic="reviews.reply_requested")
    assert event.payload["review_id"] == review.pk
    assert event.payload["revision"] == revision + 1
    review.refresh_from_db()
    assert review.analysis_status == Review.Status.PENDING
    assert review.reply_tone == "apologetic"
    assert LlmCall.objects.count() == 0  # nothing analysed synchronously
    row = answer.content.decode()
    assert 'hx-trigger="every 2s"' in row
    assert "New draft requested, tone: apologetic." in row


def test_a_bad_tone_or_an_approved_reply_requests_nothing(alice, owner, restaurant, make_review):
    from reviews.services import reply_approve

    review = make_review(restaurant, analysed={})
    answer = alice.post(reverse("reply-request", args=[review.pk]), {"tone": "sarcastic"}, **HTMX)
    assert b"Select a valid choice" in answer.content
    reply_approve(review=review, text="Done", user=owner)
    answer = alice.post(reverse("reply-request", args=[review.pk]), {"tone": "formal"}, **HTMX)
    assert b"already has an approved reply" in answer.content
    assert not OutboxEvent.objects.filter(topic="reviews.reply_requested").exists()


def test_actions_accept_only_post(alice, restaurant, make_review):
    review = make_review(restaurant, analysed={})
    for name in ("reply-save", "reply-approve", "reply-request"):
        assert alice.get(reverse(name, args=[review.pk])).status_code == 405


# --- CSRF and XSS -------------------------------------------------------------------------------


def test_csrf_is_enforced_on_actions(owner, restaurant, make_review):
    review = make_review(restaurant, analysed={})
    client = Client(enforce_csrf_checks=True)
    client.force_login(owner)
    url = reverse("reply-approve", args=[review.pk])
    assert client.post(url, {"text": "Forged"}, **HTMX).status_code == 403
    review.refresh_from_db()
    assert review.reply_approved_at is None

    # The page puts the token in hx-headers on <body>; htmx sends it as X-CSRFToken.
    page = client.get(reverse("inbox")).content.decode()
    token = re.search(r"hx-headers='\{&quot;X-CSRFToken&quot;: &quot;(\w+)&quot;\}'", page)
    token = token or re.search(r"""hx-headers='\{"X-CSRFToken": "(\w+)"\}'""", page)
    assert token, "the CSRF token is missing from hx-headers"
    answer = client.post(url, {"text": "Real"}, HTTP_X_CSRFTOKEN=token.group(1), **HTMX)
    assert answer.status_code == 200
    review.refresh_from_db()
    assert review.reply_text == "Real"


@pytest.mark.parametrize("name", ["reply-save", "reply-request"])
def test_csrf_is_enforced_on_every_action(owner, restaurant, make_review, name):
    review = make_review(restaurant, analysed={})
    client = Client(enforce_csrf_checks=True)
    client.force_login(owner)
    assert (
        client.post(reverse(name, args=[review.pk]), {"text": "x", "tone": "formal"}).status_code
        == 403
    )


def assert_inert(html: str) -> None:
    assert "<script>alert(1)</script>" not in html
    assert "<img src=x" not in html
    assert 'hx-get="/evil"' not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&lt;img src=x onerror=&quot;alert(2)&quot;&gt;" in html
    assert "&lt;div hx-get=&quot;/evil&quot; hx-trigger=&quot;load&quot;&gt;" in html


def test_review_text_author_and_ai_draft_render_as_text(alice, owner, restaurant, make_review):
    review = make_review(restaurant, XSS, author_name=XSS, analysed={"draft": XSS})
    for url, kwargs in [
        (reverse("inbox"), {}),
        (reverse("review-detail", args=[review.pk]), {}),
        (reverse("review-detail", args=[review.pk]), HTMX),
    ]:
        html = alice.get(url, **kwargs).content.decode()
        assert_inert(row_html(html.encode(), review))
    # The approved reply (copied to the clipboard from the page) is inert as well.
    approved = alice.post(reverse("reply-approve", args=[review.pk]), {"text": XSS}, **HTMX)
    assert_inert(approved.content.decode().split('id="reply-text-', 1)[1])


def test_templates_never_turn_autoescaping_off():
    root = Path(__file__).resolve().parents[2] / "templates"
    for template in root.rglob("*.html"):
        text = template.read_text()
        assert "|safe" not in text and "autoescape off" not in text, template


# --- Owner isolation ------------------------------------------------------------------------------


def test_owner_isolation_matrix(alice, owner_api, other_restaurant, restaurant, make_review):
    """Alice asking for any of Bob's URLs gets 404 and learns nothing, not even counts."""
    bobs = make_review(
        other_restaurant,
        "Bob's secret review",
        analysed={"sentiment": "CRITICAL", "tags": ["hygiene"], "draft": "Bob's draft"},
    )
    bobs_pending = make_review(other_restaurant, "Bob's pending review")
    gets = [
        reverse("review-detail", args=[bobs.pk]),
        reverse("trends", args=[other_restaurant.pk]),
        reverse("trends-index") + f"?restaurant={other_restaurant.pk}",
        reverse("inbox") + f"?restaurant={other_restaurant.pk}",
    ]
    for url in gets:
        assert alice.get(url).status_code == 404, url
        assert alice.get(url, **HTMX).status_code == 404, url
    assert alice.get(reverse("review-detail", args=[bobs_pending.pk]), **HTMX).status_code == 404
    posts = [
        (reverse("reply-save", args=[bobs.pk]), {"text": "hijack"}),
        (reverse("reply-approve", args=[bobs.pk]), {"text": "hijack"}),
        (reverse("reply-request", args=[bobs.pk]), {"tone": "formal"}),
    ]
    for url, data in posts:
        assert alice.post(url, data).status_code == 404, url
        assert alice.post(url, data, **HTMX).status_code == 404, url
    bobs.refresh_from_db()
    assert bobs.reply_draft == "Bob's draft" and bobs.reply_approved_at is None
    assert bobs.revision == 1
    assert not OutboxEvent.objects.filter(topic="reviews.reply_requested").exists()

    # The API says the same.
    assert owner_api.get(f"/api/reviews/{bobs.pk}/").status_code == 404

    # Alice's own pages show none of Bob's data, not even in counts or filter options.
    html = alice.get(reverse("inbox")).content.decode()
    assert "Bob" not in html
    assert "summary__item" not in html  # no pending/critical/failed counts at all
    assert "0 reviews" in html
    assert 'value="hygiene"' not in html
    trends = alice.get(reverse("trends", args=[restaurant.pk])).content.decode()
    assert "Bob" not in trends
    assert f'value="{other_restaurant.pk}"' not in trends


def test_staff_can_pick_any_restaurant(staff, restaurant, other_restaurant, make_review):
    bobs = make_review(other_restaurant, "Bob's review")
    client = Client()
    client.force_login(staff)
    html = client.get(reverse("inbox")).content.decode()
    assert f'<option value="{other_restaurant.pk}">Bob&#x27;s Burgers</option>' in html
    assert f'<option value="{restaurant.pk}">Cantina da Alice</option>' in html
    assert inbox_ids(client, restaurant=other_restaurant.pk) == {bobs.pk}
    assert client.get(reverse("review-detail", args=[bobs.pk])).status_code == 200
    assert client.get(reverse("trends", args=[other_restaurant.pk])).status_code == 200


# --- Trends -------------------------------------------------------------------------------------


def test_trends_page_counts_sentiments_tags_and_reply_speed(alice, owner, restaurant, make_review):
    from reviews.services import reply_approve

    now = timezone.now()
    recent = make_review(
        restaurant, "ótimo", analysed={"sentiment": "POSITIVE", "tags": ["taste", "price"]}
    )
    older = make_review(restaurant, "ruim", analysed={"sentiment": "NEGATIVE", "tags": ["taste"]})
    make_review(restaurant, "pendente")
    Review.objects.filter(pk=older.pk).update(created_at=now - timedelta(days=20))
    reply_approve(review=recent, text="Obrigado!", user=owner)
    Review.objects.filter(pk=recent.pk).update(
        reply_approved_at=F("created_at") + timedelta(hours=2)
    )

    trends = restaurant_trends(restaurant=restaurant)
    week, month = trends.windows
    assert (week.days, week.total, month.total) == (7, 2, 3)
    assert week.by_sentiment == {"POSITIVE": 1, "NEUTRAL": 0, "NEGATIVE": 0, "CRITICAL": 0}
    assert month.by_sentiment["NEGATIVE"] == 1
    assert month.pending == 1
    assert month.replied == 1 and round(month.response_rate, 2) == 0.33
    assert month.median_reply == timedelta(hours=2)
    assert [(t.tag, t.counts) for t in trends.tags] == [
        ("taste", {7: 1, 30: 2}),
        ("price", {7: 1, 30: 1}),
    ]
    assert sum(w.total for w in trends.weeks) == 2 and len(trends.weeks) == 12

    page = alice.get(reverse("trends", args=[restaurant.pk]))
    html = page.content.decode()
    assert page.status_code == 200
    assert '<svg class="chart"' in html and 'class="seg seg--positive"' in html
    assert "33 %" in html and "2 h 00 min" in html
    assert "Taste" in html


def test_trends_index_goes_to_the_first_restaurant(alice, restaurant):
    answer = alice.get(reverse("trends-index"))
    assert answer.status_code == 302
    assert answer["Location"] == reverse("trends", args=[restaurant.pk])


def test_trends_of_an_owner_without_restaurants(bob):
    page = bob.get(reverse("trends-index"))
    assert page.status_code == 200
    assert b"You have no restaurants yet." in page.content


def test_trends_without_analysed_reviews_draws_no_empty_chart(alice, restaurant):
    html = alice.get(reverse("trends", args=[restaurant.pk])).content.decode()
    assert "No analysed reviews in the last 12 weeks." in html
    assert "<svg" not in html


# --- The public review form ---------------------------------------------------------------------


def test_public_form_shows_no_reviews(client, restaurant, make_review):
    make_review(restaurant, "A secret opinion")
    page = client.get(reverse("review-form", args=[restaurant.pk]))
    assert page.status_code == 200
    assert b"Cantina da Alice" in page.content
    assert b"A secret opinion" not in page.content
    assert b'name="csrfmiddlewaretoken"' in page.content


def test_public_form_accepts_a_review_through_the_service(client, restaurant):
    answer = client.post(
        reverse("review-form", args=[restaurant.pk]),
        {"rating": "5", "text": "Comida excelente, chegou rápido!", "author_name": "Ana"},
    )
    assert answer.status_code == 302
    assert answer["Location"] == reverse("review-thanks", args=[restaurant.pk])
    review = Review.objects.get()
    assert (review.rating, review.text, review.author_name) == (
        5,
        "Comida excelente, chegou rápido!",
        "Ana",
    )
    assert review.analysis_status == Review.Status.PENDING
    assert OutboxEvent.objects.get().topic == "reviews.created"
    thanks = client.get(answer["Location"])
    assert b"Obrigado!" in thanks.content and b"Thank you!" in thanks.content


@pytest.mark.parametrize(
    "data,message",
    [
        ({"text": "no rating"}, b"Choose a rating from 1 to 5 stars."),
        ({"rating": "0", "text": "zero"}, b"Select a valid choice"),
        ({"rating": "6", "text": "six"}, b"Select a valid choice"),
        ({"rating": "abc", "text": "letters"}, b"Select a valid choice"),
        ({"rating": "4"}, b"Tell us about your order."),
        ({"rating": "4", "text": "   "}, b"Tell us about your order."),
        ({"rating": "4", "text": "x" * 5001}, b"at most 5000 characters"),
        ({"rating": "4", "text": "ok", "author_name": "n" * 101}, b"at most 100 characters"),
    ],
)
def test_public_form_rejects_bad_input_and_writes_nothing(client, restaurant, data, message):
    answer = client.post(reverse("review-form", args=[restaurant.pk]), data)
    assert answer.status_code == 200
    assert message in answer.content
    assert b"Please correct the errors below." in answer.content
    assert not Review.objects.exists()
    assert not OutboxEvent.objects.exists()


def test_public_form_of_an_unknown_restaurant_is_404(client, db):
    assert client.get(reverse("review-form", args=[999999])).status_code == 404
    assert (
        client.post(reverse("review-form", args=[999999]), {"rating": "5", "text": "x"}).status_code
        == 404
    )
    assert not Review.objects.exists()
