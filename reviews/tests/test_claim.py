"""Claiming batches for analysis and applying the results: the two raw SQL statements the AI
worker runs per batch, checked against real PostgreSQL, concurrency included."""

import threading
import time
from datetime import timedelta

import pytest
from django.db import OperationalError, connection, transaction
from django.utils import timezone

from aiworker.notify import alert_raise
from reviews.models import Review
from reviews.services import (
    CLAIM_SQL,
    ClaimedReview,
    ReviewAnalysis,
    reviews_apply_analyses,
    reviews_claim_for_analysis,
)

LEASE = timedelta(minutes=5)


def make(restaurant, n: int, **fields) -> list[Review]:
    reviews = [
        Review.objects.create(restaurant=restaurant, rating=1 + i % 5, text=f"review {i}")
        for i in range(n)
    ]
    if fields:
        Review.objects.filter(pk__in=[r.pk for r in reviews]).update(**fields)
    return reviews


def claim(review: Review, *, limit: int = 10, revision: int | None = None) -> list[int]:
    claimed = reviews_claim_for_analysis(
        review_id=review.pk,
        revision=review.revision if revision is None else revision,
        limit=limit,
        lease=LEASE,
    )
    return [c.id for c in claimed]


def leased(restaurant) -> set[int]:
    return set(
        Review.objects.filter(
            restaurant=restaurant, analysis_claimed_until__isnull=False
        ).values_list("pk", flat=True)
    )


# ------------------------------------------------------------------------------------ claim


@pytest.mark.django_db
def test_claim_returns_own_first_then_others_oldest_first_and_leases_them(
    restaurant, other_restaurant
):
    own, *others = make(restaurant, 4)
    # Oldest first by created_at, not by id: the highest id is made the oldest.
    now = timezone.now()
    for age, review in enumerate(others):
        Review.objects.filter(pk=review.pk).update(created_at=now - timedelta(hours=age + 1))
    Review.objects.filter(pk=own.pk).update(created_at=now + timedelta(hours=1))  # newest
    make(other_restaurant, 2)
    make(restaurant, 2, reply_tone="formal")

    before = timezone.now()
    claimed = reviews_claim_for_analysis(review_id=own.pk, revision=1, limit=10, lease=LEASE)

    assert [c.id for c in claimed] == [own.pk, *[r.pk for r in reversed(others)]]
    assert claimed[0] == ClaimedReview(own.pk, 1, own.rating, own.text, "default")
    assert leased(restaurant) == {c.id for c in claimed}
    assert leased(other_restaurant) == set()
    for review in Review.objects.filter(pk__in=[c.id for c in claimed]):
        assert before + LEASE <= review.analysis_claimed_until <= timezone.now() + LEASE


@pytest.mark.django_db
def test_claim_respects_the_limit_and_the_tone(restaurant):
    formal = make(restaurant, 4, reply_tone="formal")
    make(restaurant, 3)  # default tone: another provider call

    claimed = reviews_claim_for_analysis(review_id=formal[2].pk, revision=1, limit=3, lease=LEASE)

    assert [c.id for c in claimed] == [formal[2].pk, formal[0].pk, formal[1].pk]
    assert {c.tone for c in claimed} == {"formal"}
    assert claim(formal[3], limit=1) == [formal[3].pk]
    assert leased(restaurant) == {r.pk for r in formal}


@pytest.mark.django_db
def test_claim_of_a_wrong_revision_is_empty_and_leases_nothing(restaurant):
    own, *_ = make(restaurant, 3)

    assert claim(own, revision=2) == []
    assert leased(restaurant) == set()


@pytest.mark.django_db
def test_claim_of_a_review_leased_by_another_worker_is_empty(restaurant):
    own, *_ = make(restaurant, 3)
    Review.objects.filter(pk=own.pk).update(analysis_claimed_until=timezone.now() + LEASE)

    assert claim(own) == []
    assert leased(restaurant) == {own.pk}


@pytest.mark.django_db
def test_claim_of_an_analysed_review_is_empty(restaurant):
    own, *_ = make(restaurant, 3)
    Review.objects.filter(pk=own.pk).update(analysis_status=Review.Status.DONE)

    assert claim(own) == []
    assert leased(restaurant) == set()


@pytest.mark.django_db
def test_claim_takes_expired_leases_and_provisional_analyses_but_not_live_or_done(restaurant):
    own, expired, live, done, provisional, failed = make(restaurant, 6)
    now = timezone.now()
    Review.objects.filter(pk__in=[own.pk, expired.pk]).update(
        analysis_claimed_until=now - timedelta(seconds=1)
    )
    Review.objects.filter(pk=live.pk).update(analysis_claimed_until=now + LEASE)
    Review.objects.filter(pk__in=[done.pk, provisional.pk]).update(
        analysis_status=Review.Status.DONE
    )
    Review.objects.filter(pk=provisional.pk).update(analysis_provisional=True)
    Review.objects.filter(pk=failed.pk).update(analysis_status=Review.Status.FAILED)

    assert claim(own) == [own.pk, expired.pk, provisional.pk]


@pytest.mark.django_db
def test_claim_of_a_provisionally_analysed_review_is_allowed(restaurant):
    (own,) = make(restaurant, 1, analysis_status=Review.Status.DONE, analysis_provisional=True)

    assert claim(own) == [own.pk]


@pytest.mark.django_db
def test_the_needs_analysis_index_can_serve_the_claim(restaurant):
    """The claim repeats the partial index's predicate: if it stops implying it, the planner
    cannot use the index at all, and a restaurant's backlog is read from the heap."""
    (own,) = make(restaurant, 1)
    params = {"review_id": own.pk, "revision": 1, "now": timezone.now(), "others": 9}
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute("EXPLAIN " + CLAIM_SQL, {**params, "until": timezone.now() + LEASE})
        plan = "\n".join(row[0] for row in cursor.fetchall())
    assert "review_needs_analysis_idx" in plan, plan


def _in_thread(fn):
    """Run fn on its own connection (Django's are per thread); return its result."""
    result: dict = {}

    def run():
        try:
            with connection.cursor() as cursor:
                cursor.execute("SET lock_timeout = '5s'")  # a wait, not SKIP LOCKED, fails
            result["value"] = fn()
        except Exception as exc:  # handed to the test thread
            result["error"] = exc
        finally:
            connection.close()

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(timeout=30)
    assert not thread.is_alive()
    if "error" in result:
        raise result["error"]
    return result["value"]


@pytest.mark.django_db(transaction=True)
def test_concurrent_claims_build_disjoint_batches(restaurant):
    reviews = make(restaurant, 6)
    with transaction.atomic():
        # Our claim's lease is not committed yet: only the row locks keep the other worker out.
        first = claim(reviews[0], limit=3)
        second = _in_thread(lambda: claim(reviews[3], limit=3))
        taken = _in_thread(lambda: claim(reviews[1], limit=3))

    assert first == [r.pk for r in reviews[:3]]
    assert second == [r.pk for r in reviews[3:]]
    assert taken == []  # its own review is in our batch
    assert leased(restaurant) == {r.pk for r in reviews}


# ------------------------------------------------------------------------------------ apply


def analysis(review: Review, *, revision: int = 1, sentiment: str = "NEGATIVE", **fields):
    values = {"tags": ["taste"], "language": "pt", "reply_draft": "Obrigado!", **fields}
    return ReviewAnalysis(review.pk, revision, sentiment, **values)


def apply(analyses: list[ReviewAnalysis], **kwargs) -> list[Review]:
    with transaction.atomic():
        return reviews_apply_analyses(analyses=analyses, model="gpt-test", **kwargs)


@pytest.mark.django_db
def test_apply_writes_the_analysis_clears_the_lease_and_returns_whole_reviews(restaurant):
    a, b = make(restaurant, 2, analysis_claimed_until=timezone.now() + LEASE)
    at = timezone.now() - timedelta(minutes=1)

    written = apply(
        [
            analysis(b, sentiment="CRITICAL", tags=["hygiene", "food_safety"]),
            analysis(a, sentiment="POSITIVE", reply_draft="Thanks!"),
        ],
        analyzed_at=at,
    )

    assert [r.pk for r in written] == [a.pk, b.pk]
    for returned in written:
        stored = Review.objects.get(pk=returned.pk)
        assert isinstance(returned, Review)
        assert {f.attname: getattr(returned, f.attname) for f in Review._meta.concrete_fields} == {
            f.attname: getattr(stored, f.attname) for f in Review._meta.concrete_fields
        }
        assert not returned._state.adding
        assert stored.analysis_status == Review.Status.DONE
        assert stored.analysis_revision == 1
        assert stored.analysis_claimed_until is None
        assert stored.analysis_model == "gpt-test"
        assert stored.analyzed_at == at
        assert stored.language == "pt"
    assert (written[0].sentiment, written[0].reply_draft) == ("POSITIVE", "Thanks!")
    assert (written[1].sentiment, written[1].tags) == ("CRITICAL", ["hygiene", "food_safety"])
    assert written[1].restaurant_id == restaurant.pk
    with transaction.atomic():
        assert alert_raise(review=written[1]) is not None  # as the worker uses what it gets


@pytest.mark.django_db
def test_apply_skips_a_stale_revision(restaurant):
    stale, fresh = make(restaurant, 2)
    Review.objects.filter(pk=stale.pk).update(revision=2)

    written = apply([analysis(stale, revision=1), analysis(fresh)])

    assert [r.pk for r in written] == [fresh.pk]
    stale.refresh_from_db()
    assert (stale.analysis_status, stale.sentiment) == (Review.Status.PENDING, None)


@pytest.mark.django_db
def test_apply_keeps_an_approved_reply(restaurant):
    (review,) = make(restaurant, 1)
    Review.objects.filter(pk=review.pk).update(
        reply_draft="Owner's words", reply_text="Owner's words", reply_approved_at=timezone.now()
    )

    (written,) = apply([analysis(review, reply_draft="The model's words")])

    review.refresh_from_db()
    assert review.reply_draft == written.reply_draft == "Owner's words"
    assert review.sentiment == "NEGATIVE"


@pytest.mark.django_db
def test_a_real_analysis_replaces_a_provisional_one_but_not_the_other_way(restaurant):
    (review,) = make(restaurant, 1)

    assert apply([analysis(review, sentiment="NEUTRAL")], provisional=True, waiting="budget")
    review.refresh_from_db()
    assert (review.analysis_provisional, review.analysis_waiting) == (True, "budget")
    assert apply([analysis(review, sentiment="POSITIVE")], provisional=True) == []
    review.refresh_from_db()
    assert review.sentiment == "NEUTRAL"  # one provisional analysis does not replace another

    assert apply([analysis(review, sentiment="CRITICAL")])
    review.refresh_from_db()
    assert (review.sentiment, review.analysis_provisional) == ("CRITICAL", False)
    assert review.analysis_waiting == ""

    assert apply([analysis(review, sentiment="POSITIVE")], provisional=True) == []
    assert apply([analysis(review, sentiment="POSITIVE")]) == []  # a late duplicate
    review.refresh_from_db()
    assert (review.sentiment, review.analysis_provisional) == ("CRITICAL", False)


@pytest.mark.django_db
def test_apply_writes_over_a_failed_analysis(restaurant):
    (review,) = make(restaurant, 1, analysis_status=Review.Status.FAILED)

    assert [r.pk for r in apply([analysis(review)])] == [review.pk]


@pytest.mark.django_db(transaction=True)
def test_apply_locks_rows_in_id_order_whatever_the_order_of_the_analyses(restaurant):
    """Two workers applying overlapping batches must not deadlock: each locks in id order.
    The row with the higher id is held elsewhere; the batch lists it first, yet the apply
    must already hold the lower one while it waits."""
    low, high = make(restaurant, 2)
    holding, release = threading.Event(), threading.Event()

    def hold_high():
        with transaction.atomic():
            Review.objects.select_for_update().get(pk=high.pk)
            holding.set()
            release.wait(10)
        connection.close()

    holder = threading.Thread(target=hold_high)
    holder.start()
    assert holding.wait(10)
    written: list[Review] = []
    applier = threading.Thread(
        target=lambda: (written.extend(apply([analysis(high), analysis(low)])), connection.close())
    )
    applier.start()
    try:
        _wait_for_a_lock_wait()
        with pytest.raises(OperationalError), transaction.atomic():
            Review.objects.select_for_update(nowait=True).get(pk=low.pk)
    finally:
        release.set()
        holder.join(10)
        applier.join(10)
    assert [r.pk for r in written] == [low.pk, high.pk]


def _wait_for_a_lock_wait() -> None:
    deadline = time.monotonic() + 10
    with connection.cursor() as cursor:
        while time.monotonic() < deadline:
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
            if cursor.fetchone()[0]:
                return
            time.sleep(0.02)
    raise AssertionError("the apply never waited for the held row")
