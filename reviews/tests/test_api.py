"""The review API contract: 202 on success with both rows committed, 400 and nothing written otherwise."""

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from outbox.models import OutboxEvent
from reviews.models import Review

URL = "/api/reviews/"


def counts():
    return Review.objects.count(), OutboxEvent.objects.count()


@pytest.mark.django_db
def test_post_accepts_and_writes_review_and_event(api, restaurant):
    response = api.post(
        URL,
        {"restaurant": restaurant.pk, "rating": 4, "text": "Muito bom!", "author_name": "Ana"},
        format="json",
    )
    assert response.status_code == 202
    body = response.json()
    assert body["status"] == "received" and body["analysis_status"] == "pending"
    review = Review.objects.get(pk=body["id"])
    assert (review.rating, review.text, review.author_name) == (4, "Muito bom!", "Ana")
    event = OutboxEvent.objects.get()
    assert event.topic == "reviews.created"
    assert event.payload == {"review_id": review.pk, "revision": 1, "restaurant_id": restaurant.pk}
    assert event.published_at is None


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"rating": 0, "text": "x"}, "rating"),
        ({"rating": 6, "text": "x"}, "rating"),
        ({"rating": "5", "text": "x"}, "rating"),
        ({"rating": 4.5, "text": "x"}, "rating"),
        ({"rating": True, "text": "x"}, "rating"),
        ({"text": "x"}, "rating"),
        ({"rating": 3, "text": ""}, "text"),
        ({"rating": 3, "text": "   "}, "text"),
        ({"rating": 3}, "text"),
        ({"rating": 3, "text": "x" * 5001}, "text"),
        ({"rating": 3, "text": ["a"]}, "text"),
        ({"rating": 3, "text": "ok", "author_name": "n" * 101}, "author_name"),
        # JSON types are checked, not coerced (schemathesis found a number accepted as a name).
        ({"rating": 3, "text": 123}, "text"),
        ({"rating": 3, "text": "ok", "author_name": 5}, "author_name"),
        ({"rating": 3, "text": "ok", "author_name": False}, "author_name"),
        ({"restaurant": "1", "rating": 3, "text": "ok"}, "restaurant"),
        ({"restaurant": 1.0, "rating": 3, "text": "ok"}, "restaurant"),
        ({"restaurant": True, "rating": 3, "text": "ok"}, "restaurant"),
        ({"restaurant": 0, "rating": 3, "text": "ok"}, "restaurant"),
    ],
)
@pytest.mark.django_db
def test_bad_input_is_400_with_field_errors_and_writes_nothing(api, restaurant, payload, field):
    response = api.post(URL, {"restaurant": restaurant.pk, **payload}, format="json")
    assert response.status_code == 400
    assert field in response.json()
    assert counts() == (0, 0)


@pytest.mark.django_db
def test_unknown_restaurant_is_400(api, restaurant):
    response = api.post(URL, {"restaurant": 999999, "rating": 3, "text": "ok"}, format="json")
    assert response.status_code == 400 and "restaurant" in response.json()
    assert counts() == (0, 0)


@pytest.mark.django_db
def test_malformed_json_is_400(api, restaurant):
    response = api.post(URL, data="{not json", content_type="application/json")
    assert response.status_code == 400
    assert counts() == (0, 0)


@pytest.mark.django_db
def test_unauthenticated_is_rejected(client, restaurant):
    response = client.post(
        URL,
        {"restaurant": restaurant.pk, "rating": 3, "text": "ok"},
        content_type="application/json",
    )
    assert response.status_code in (401, 403)
    assert counts() == (0, 0)


@pytest.mark.django_db
def test_mass_assignment_of_analysis_fields_is_ignored(api, restaurant, other_owner):
    response = api.post(
        URL,
        {
            "restaurant": restaurant.pk,
            "rating": 5,
            "text": "Ótimo",
            "sentiment": "POSITIVE",
            "analysis_status": "done",
            "reply_draft": "spam",
            "tags": ["price"],
            "revision": 9,
            "owner": other_owner.pk,
        },
        format="json",
    )
    assert response.status_code == 202
    review = Review.objects.get()
    assert (
        review.sentiment,
        review.analysis_status,
        review.reply_draft,
        review.tags,
        review.revision,
    ) == (None, "pending", "", [], 1)
    assert review.restaurant.owner != other_owner


@pytest.mark.django_db(transaction=True)
def test_failing_event_insert_leaves_no_review(api, restaurant):
    # Make the outbox insert fail inside the same transaction: the review must roll back too.
    with connection.cursor() as cursor:
        cursor.execute(
            "ALTER TABLE outbox_outboxevent ADD CONSTRAINT reject_all CHECK (topic = 'never')"
        )
    try:
        with pytest.raises(Exception):
            api.post(URL, {"restaurant": restaurant.pk, "rating": 3, "text": "ok"}, format="json")
        assert counts() == (0, 0)
    finally:
        with connection.cursor() as cursor:
            cursor.execute("ALTER TABLE outbox_outboxevent DROP CONSTRAINT reject_all")


@pytest.mark.django_db
def test_owner_reads_own_review_not_others(api, owner_api, restaurant, other_restaurant):
    mine = api.post(
        URL, {"restaurant": restaurant.pk, "rating": 5, "text": "a"}, format="json"
    ).json()["id"]
    theirs = api.post(
        URL, {"restaurant": other_restaurant.pk, "rating": 5, "text": "b"}, format="json"
    ).json()["id"]
    response = owner_api.get(f"{URL}{mine}/")
    assert response.status_code == 200
    body = response.json()
    assert body["analysis_status"] == "pending" and body["sentiment"] is None and body["tags"] == []
    assert set(body) >= {"id", "analysis_status", "sentiment", "tags", "reply_draft", "analyzed_at"}
    assert owner_api.get(f"{URL}{theirs}/").status_code == 404
    assert [r["id"] for r in owner_api.get(URL).json()] == [mine]


@pytest.mark.django_db
def test_staff_reads_everything(api, staff, restaurant):
    from conftest import token_client

    rid = api.post(
        URL, {"restaurant": restaurant.pk, "rating": 5, "text": "a"}, format="json"
    ).json()["id"]
    assert token_client(staff).get(f"{URL}{rid}/").status_code == 200


@pytest.mark.django_db
def test_patch_by_submitter_bumps_revision_and_publishes_update(api, owner_api, restaurant):
    rid = api.post(
        URL, {"restaurant": restaurant.pk, "rating": 2, "text": "ruim"}, format="json"
    ).json()["id"]
    response = api.patch(f"{URL}{rid}/", {"text": "na verdade foi bom", "rating": 4}, format="json")
    assert response.status_code == 202
    review = Review.objects.get(pk=rid)
    assert (review.revision, review.rating, review.text, review.analysis_status) == (
        2,
        4,
        "na verdade foi bom",
        "pending",
    )
    assert list(OutboxEvent.objects.order_by("created_at").values_list("topic", flat=True)) == [
        "reviews.created",
        "reviews.updated",
    ]
    assert OutboxEvent.objects.get(topic="reviews.updated").payload["revision"] == 2
    # The restaurant's owner reads it but may not rewrite the customer's review.
    assert owner_api.patch(f"{URL}{rid}/", {"rating": 1}, format="json").status_code == 403
    assert api.patch(f"{URL}{rid}/", {"rating": 9}, format="json").status_code == 400
    assert api.patch(f"{URL}{rid}/", {}, format="json").status_code == 400
    assert api.patch(f"{URL}{rid}/", {"text": 5}, format="json").status_code == 400
    assert api.patch(f"{URL}{rid}/", {"rating": "4"}, format="json").status_code == 400
    assert Review.objects.get(pk=rid).revision == 2


@pytest.mark.django_db
def test_schema_is_served(api):
    response = api.get("/api/schema/")
    assert response.status_code == 200
    assert b"/api/reviews/" in response.content


@pytest.mark.django_db
def test_post_is_the_token_lookup_and_two_inserts(api, restaurant, settings):
    settings.API_REVIEW_RATE = "off"  # the rate limit's cache queries are tested below
    # The restaurant is checked by the INSERT's foreign key and the relay woken by the outbox
    # table's trigger (outbox/tests/test_notify.py): no other round trip per review.
    with CaptureQueriesContext(connection) as ctx:
        api.post(URL, {"restaurant": restaurant.pk, "rating": 3, "text": "ok"}, format="json")
    sql = [
        q["sql"] for q in ctx.captured_queries if not q["sql"].startswith(("SAVEPOINT", "RELEASE"))
    ]
    assert len(sql) == 3, [q[:60] for q in sql]
    assert 'FROM "authtoken_token"' in sql[0]
    assert sql[1].startswith('INSERT INTO "reviews_review"')
    assert sql[2].startswith('INSERT INTO "outbox_outboxevent"')


@pytest.mark.django_db(transaction=True)
def test_unknown_restaurant_is_400_outside_a_test_transaction_too(api, restaurant):
    # No test transaction around the request: review_create's own transaction is the outer one.
    response = api.post(URL, {"restaurant": 999999, "rating": 3, "text": "ok"}, format="json")
    assert response.status_code == 400
    assert response.json() == {"restaurant": ['Invalid pk "999999" - object does not exist.']}
    assert counts() == (0, 0)


@pytest.mark.django_db
def test_submissions_are_rate_limited_per_token_through_the_shared_cache(
    api, owner_api, restaurant, settings
):
    from django.core.cache import cache

    cache.clear()
    settings.API_REVIEW_RATE = "3/min"
    body = {"restaurant": restaurant.pk, "rating": 3, "text": "ok"}
    assert [api.post(URL, body, format="json").status_code for _ in range(3)] == [202] * 3
    limited = api.post(URL, body, format="json")
    assert limited.status_code == 429 and int(limited["Retry-After"]) > 0
    assert Review.objects.count() == 3
    assert (
        owner_api.post(URL, body, format="json").status_code == 202
    )  # another token has its own budget
    assert api.get(URL).status_code == 200  # reads are not limited
    cache.clear()


@pytest.mark.django_db
def test_unknown_api_paths_answer_json_404(owner_api):
    for path in ("/api/reviews/null%2Cnull/", "/api/nope"):
        response = owner_api.get(path)
        assert response.status_code == 404 and response.json() == {"detail": "Not found."}


@pytest.mark.parametrize("method", ["post", "put", "patch", "delete"])
@pytest.mark.django_db
def test_unknown_api_paths_answer_json_404_to_writes_too(owner, method):
    # A real client gets CSRF checks (the test client skips them): unknown paths must still
    # answer the documented JSON 404, not Django's HTML "CSRF verification failed" page.
    from rest_framework.authtoken.models import Token
    from rest_framework.test import APIClient

    client = APIClient(enforce_csrf_checks=True)
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=owner).key}")
    response = getattr(client, method)("/api/reviews/null%2Cnull/", {"rating": 1}, format="json")
    assert response.status_code == 404 and response["Content-Type"] == "application/json"
    assert response.json() == {"detail": "Not found."}


@pytest.mark.django_db
def test_schema_documents_error_answers(api):
    import yaml

    schema = yaml.safe_load(api.get("/api/schema/").content)
    post = schema["paths"]["/api/reviews/"]["post"]["responses"]
    assert {"202", "400", "401", "403", "429", "503"} <= set(post)
    assert {"200", "404"} <= set(schema["paths"]["/api/reviews/{review_id}/"]["get"]["responses"])
