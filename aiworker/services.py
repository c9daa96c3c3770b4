"""Staff-facing writes of the worker: dead letters (file, replay, discard), budget, breaker."""

import hashlib
import re
import uuid
from dataclasses import dataclass

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.utils import timezone

from aiworker.ledger import BREAKER_NAME
from aiworker.models import AnalysisJob, Breaker, Budget, DeadLetter
from outbox.services import event_publish, events_unpark
from reviews.models import Review
from reviews.services import review_event_key, review_mark_failed, review_mark_pending

_VARIABLE = re.compile(r"\d+|[0-9a-f]{8,}|'[^']*'|\"[^\"]*\"")


def failure_fingerprint(*, error_class: str, message: str) -> str:
    """Letters that failed the same way share this, whatever ids or numbers they mention."""
    shape = _VARIABLE.sub("#", message.lower())[:200]
    return hashlib.sha256(f"{error_class}:{shape}".encode()).hexdigest()[:16]


def dead_letter_file(
    *,
    job: AnalysisJob,
    event_id: uuid.UUID | str | None,
    topic: str,
    error_class: str,
    message: str,
    raw_response: str,
) -> DeadLetter:
    """Settle a job as dead-lettered (inside the caller's transaction, job row locked)."""
    now = timezone.now()
    job.state = AnalysisJob.State.DEAD
    job.finished_at = now
    job.last_error = f"{error_class}: {message}"
    job.first_failure_at = job.first_failure_at or now
    job.last_failure_at = now
    job.save()
    letter, _ = DeadLetter.objects.get_or_create(
        job=job,
        status=DeadLetter.Status.OPEN,
        defaults={
            "review_id": job.review_id,
            "revision": job.revision,
            "event_id": event_id,
            "topic": topic or "reviews.created",
            "error_class": error_class,
            "error_message": message[:2000],
            "failure_fingerprint": failure_fingerprint(error_class=error_class, message=message),
            "attempts": job.attempts,
            "first_failure_at": job.first_failure_at,
            "last_failure_at": now,
            "raw_response": raw_response[:20000],
        },
    )
    review_mark_failed(review_id=job.review_id, revision=job.revision)
    return letter


@dataclass(frozen=True)
class ReplayResult:
    replayed: list[int]
    skipped: list[int]


def dead_letters_replay(
    *, ids: list[int] | None, user: AbstractBaseUser | None = None, dry_run: bool = False
) -> ReplayResult:
    """Replay open letters through the outbox, the same path as new events.

    Each letter is locked with SKIP LOCKED and closed in the transaction that publishes its
    event, so two replays running at once replay a letter once.
    """
    with transaction.atomic():
        letters = DeadLetter.objects.select_for_update(skip_locked=True).filter(
            status=DeadLetter.Status.OPEN
        )
        if ids is not None:
            letters = letters.filter(pk__in=ids)
        letters = list(letters.order_by("pk"))
        replayed = [letter.pk for letter in letters]
        skipped = sorted(set(ids or []) - set(replayed))
        if dry_run:
            return ReplayResult(replayed, skipped)
        now = timezone.now()
        for letter in letters:
            letter.status = DeadLetter.Status.REPLAYED
            letter.resolved_at = now
            letter.resolved_by = user if user and user.is_authenticated else None
            letter.save(update_fields=["status", "resolved_at", "resolved_by"])
            review = Review.objects.filter(pk=letter.review_id).first()
            if review is None or review.revision != letter.revision:
                continue  # the review changed since; its newer revision has its own event
            AnalysisJob.objects.filter(pk=letter.job_id).update(
                state=AnalysisJob.State.PENDING, attempts=0, solo=False, finished_at=None
            )
            review_mark_pending(review_id=review.pk)
            event_publish(
                topic=letter.topic,
                key=review_event_key(review),
                payload={
                    "review_id": review.pk,
                    "revision": review.revision,
                    "restaurant_id": review.restaurant_id,
                    "replay_of": letter.pk,
                },
            )
    return ReplayResult(replayed, skipped)


def dead_letters_discard(*, ids: list[int], user: AbstractBaseUser | None) -> int:
    """Close letters without replaying; the review stays failed."""
    with transaction.atomic():
        return DeadLetter.objects.filter(pk__in=ids, status=DeadLetter.Status.OPEN).update(
            status=DeadLetter.Status.DISCARDED,
            resolved_at=timezone.now(),
            resolved_by=user if user and user.is_authenticated else None,
        )


def budget_update(
    *,
    user: AbstractBaseUser | None,
    requests_per_hour: int | None,
    tokens_per_hour: int | None,
    tokens_per_day: int | None,
    usd_per_day=None,
) -> Budget:
    """Staff change the run-time budget; events parked for budget get another look at once."""
    with transaction.atomic():
        budget, _ = Budget.objects.select_for_update().get_or_create(name=BREAKER_NAME)
        budget.requests_per_hour = requests_per_hour
        budget.tokens_per_hour = tokens_per_hour
        budget.tokens_per_day = tokens_per_day
        budget.usd_per_day = usd_per_day
        budget.updated_by = user if user and user.is_authenticated else None
        budget.save()
        events_unpark(reason_prefix="budget")
    return budget


def breaker_close(*, user: AbstractBaseUser | None) -> int:
    """Staff close the breaker by hand (e.g. after fixing the API key); parked events resume."""
    with transaction.atomic():
        Breaker.objects.filter(name=BREAKER_NAME).update(
            state=Breaker.State.CLOSED,
            consecutive_failures=0,
            open_until=None,
            probe_started_at=None,
            reason=f"closed by {getattr(user, 'username', 'staff')}",
        )
        return events_unpark(reason_prefix="breaker")
