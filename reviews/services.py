"""Every write to restaurants and reviews. Views, API views, commands and tasks call these."""

import json
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, connection, transaction
from django.db.models import F, Q
from django.utils import timezone

from outbox.relay import run_inline
from outbox.services import event_publish
from reviews.models import Restaurant, Review


def review_event_key(review: Review) -> str:
    """The outbox key of events about a review: its restaurant's. The relay gives a
    restaurant's new events one task, and the worker analyses them in one provider call."""
    return f"restaurant:{review.restaurant_id}"


def _publish(review: Review, topic: str) -> None:
    event = event_publish(
        topic=topic,
        key=review_event_key(review),
        payload={
            "review_id": review.pk,
            "revision": review.revision,
            "restaurant_id": review.restaurant_id,
        },
    )
    if settings.REVIEWS_ANALYSIS_MODE == "sync":
        # The anti-pattern kept for benchmarks: analyse inside the request, after commit.
        transaction.on_commit(lambda: run_inline(event_id=event.pk))


def review_create(
    *,
    restaurant_id: int,
    rating: int,
    text: str,
    author_name: str = "",
    submitted_by: AbstractBaseUser | None = None,
) -> Review:
    """Save a review and its `reviews.created` event in one transaction.

    Raises Restaurant.DoesNotExist, and writes nothing, for an unknown restaurant: the
    INSERT's foreign key checks it (immediately, migration 0003), saving a SELECT per review.
    """
    try:
        with transaction.atomic():
            review = Review.objects.create(
                restaurant_id=restaurant_id,
                rating=rating,
                text=text,
                author_name=author_name,
                submitted_by=submitted_by
                if submitted_by and submitted_by.is_authenticated
                else None,
            )
            _publish(review, "reviews.created")
    except IntegrityError:
        if not Restaurant.objects.filter(pk=restaurant_id).exists():
            raise Restaurant.DoesNotExist(f"no restaurant {restaurant_id}") from None
        raise
    return review


def review_update(*, review: Review, rating: int | None = None, text: str | None = None) -> Review:
    """Correct a review: new revision, pending again, `reviews.updated` in the same transaction."""
    with transaction.atomic():
        review = Review.objects.select_for_update().get(pk=review.pk)
        if rating is not None:
            review.rating = rating
        if text is not None:
            review.text = text
        return _reanalyse(review, "reviews.updated")


def reply_request(*, review: Review, tone: str) -> Review:
    """Ask for a new reply draft in a tone; goes through the outbox like any analysis."""
    with transaction.atomic():
        review = Review.objects.select_for_update().get(pk=review.pk)
        review.reply_tone = tone
        return _reanalyse(review, "reviews.reply_requested")


def _reanalyse(review: Review, topic: str) -> Review:
    """In the caller's transaction, row locked: a new revision, pending again, its event."""
    review.revision = F("revision") + 1
    review.analysis_status = Review.Status.PENDING
    review.analysis_waiting = ""
    review.analysis_claimed_until = None
    review.save()
    review.refresh_from_db()
    _publish(review, topic)
    return review


def reply_approve(*, review: Review, text: str, user: AbstractBaseUser) -> Review:
    """Record the owner's approved reply: the only way a reply is ever published."""
    text = text.strip()
    if not text:
        raise ValueError("an approved reply cannot be empty")
    with transaction.atomic():
        review = Review.objects.select_for_update().get(pk=review.pk)
        review.reply_text = text
        review.reply_approved_at = timezone.now()
        review.reply_approved_by = user
        review.save(
            update_fields=["reply_text", "reply_approved_at", "reply_approved_by", "updated_at"]
        )
    return review


def reply_draft_save(*, review: Review, text: str) -> Review:
    """Keep the owner's edits to a draft without approving it."""
    with transaction.atomic():
        review = Review.objects.select_for_update().get(pk=review.pk)
        review.reply_draft = text.strip()
        review.save(update_fields=["reply_draft", "updated_at"])
    return review


@dataclass(frozen=True)
class ClaimedReview:
    id: int
    revision: int
    rating: int
    text: str
    tone: str


def reviews_claim_for_analysis(
    *, review_id: int, revision: int, limit: int, lease: timedelta
) -> list[ClaimedReview]:
    """Lease the given review (if it still needs this revision analysed) plus up to
    `limit - 1` other pending reviews of the same restaurant and reply tone, oldest first.

    A lease instead of a row lock held across the provider call keeps transactions short;
    SKIP LOCKED and the lease make concurrent workers build disjoint batches.
    """
    now = timezone.now()
    free = Q(analysis_claimed_until__isnull=True) | Q(analysis_claimed_until__lt=now)
    # A provisional analysis (offline fallback) still needs the real one.
    needed = Q(analysis_status=Review.Status.PENDING) | Q(analysis_provisional=True)
    with transaction.atomic():
        own = (
            Review.objects.select_for_update(skip_locked=True)
            .filter(free, needed, pk=review_id, revision=revision)
            .first()
        )
        if own is None:
            return []
        others = list(
            Review.objects.select_for_update(skip_locked=True)
            .filter(free, needed, restaurant_id=own.restaurant_id, reply_tone=own.reply_tone)
            .exclude(pk=own.pk)
            .order_by("created_at")[: max(limit - 1, 0)]
        )
        batch = [own, *others]
        Review.objects.filter(pk__in=[r.pk for r in batch]).update(
            analysis_claimed_until=now + lease
        )
    return [ClaimedReview(r.pk, r.revision, r.rating, r.text, r.reply_tone) for r in batch]


def reviews_release(*, review_ids: list[int]) -> None:
    Review.objects.filter(pk__in=review_ids).update(analysis_claimed_until=None)


@dataclass(frozen=True)
class ReviewAnalysis:
    """An analysis computed for one revision of one review."""

    review_id: int
    revision: int
    sentiment: str
    tags: list[str]
    language: str
    reply_draft: str


# One statement per review, sent together through psycopg's pipeline by executemany:
# bulk_update's CASE expressions cost more Python time than the queries they save.
APPLY_SQL = """
UPDATE reviews_review SET
    analysis_status = %s, analysis_revision = %s, analysis_provisional = %s,
    analysis_waiting = %s, sentiment = %s, tags = %s::jsonb, language = %s,
    reply_draft = %s, analysis_model = %s, analyzed_at = %s, analysis_claimed_until = NULL,
    updated_at = %s
WHERE id = %s
"""


def reviews_apply_analyses(
    *,
    analyses: list[ReviewAnalysis],
    model: str,
    provisional: bool = False,
    waiting: str = "",
    analyzed_at: datetime | None = None,
) -> list[Review]:
    """Write analyses that are for their review's current revision; returns the reviews
    written (stale results are left out). One locking read and one UPDATE for the batch.

    Must run in the caller's transaction (with the event bookkeeping): the rows stay locked.
    """
    by_id = {a.review_id: a for a in analyses}
    now = analyzed_at or timezone.now()
    written = []
    # Locked in id order, so two transactions locking overlapping sets cannot deadlock.
    for review in Review.objects.select_for_update().filter(pk__in=by_id).order_by("pk"):
        analysis = by_id[review.pk]
        if review.revision != analysis.revision:
            continue
        if review.analysis_status == Review.Status.DONE and (
            provisional or not review.analysis_provisional
        ):
            continue  # already analysed at this revision: a late duplicate changes nothing
        review.analysis_status = Review.Status.DONE
        review.analysis_revision = analysis.revision
        review.analysis_provisional = provisional
        # A provisional analysis still waits for the real one, and says why.
        review.analysis_waiting = waiting
        review.sentiment = analysis.sentiment
        review.tags = analysis.tags
        review.language = analysis.language
        if not review.reply_approved_at:
            review.reply_draft = analysis.reply_draft
        review.analysis_model = model
        review.analyzed_at = now
        review.analysis_claimed_until = None
        review.updated_at = now
        written.append(review)
    if written:
        with connection.cursor() as cursor:
            cursor.executemany(
                APPLY_SQL,
                [
                    (
                        r.analysis_status,
                        r.analysis_revision,
                        r.analysis_provisional,
                        r.analysis_waiting,
                        r.sentiment,
                        json.dumps(r.tags),
                        r.language,
                        r.reply_draft,
                        r.analysis_model,
                        r.analyzed_at,
                        r.updated_at,
                        r.pk,
                    )
                    for r in written
                ],
            )
    return written


def review_apply_analysis(
    *,
    review_id: int,
    revision: int,
    sentiment: str,
    tags: list[str],
    language: str,
    reply_draft: str,
    model: str,
    provisional: bool = False,
    waiting: str = "",
    analyzed_at: datetime | None = None,
) -> Review | None:
    """`reviews_apply_analyses` for one review. Returns None for a stale result."""
    written = reviews_apply_analyses(
        analyses=[ReviewAnalysis(review_id, revision, sentiment, tags, language, reply_draft)],
        model=model,
        provisional=provisional,
        waiting=waiting,
        analyzed_at=analyzed_at,
    )
    return written[0] if written else None


def review_mark_failed(*, review_id: int, revision: int) -> bool:
    """Show a dead-lettered analysis honestly; a newer revision is left alone."""
    return bool(
        Review.objects.filter(pk=review_id, revision=revision)
        .exclude(analysis_status=Review.Status.DONE)
        .update(
            analysis_status=Review.Status.FAILED, analysis_claimed_until=None, analysis_waiting=""
        )
    )


def review_mark_pending(*, review_id: int, waiting: str = "") -> None:
    Review.objects.filter(pk=review_id).exclude(analysis_status=Review.Status.DONE).update(
        analysis_status=Review.Status.PENDING, analysis_waiting=waiting
    )
