"""Processing one analysis event.

Claim a batch of pending reviews of one restaurant, count attempts (committed before the
call), reuse results from the ledger or call the provider once, write the ledger right after
the call, then apply results, raise alerts and finish the event in one transaction. Failures
retry through the outbox with backoff, wait for a rate limit, or end in a dead letter.
"""

import logging
import random
import time
from datetime import timedelta

from django.conf import settings
from django.db import connection, transaction
from django.db.models import F
from django.utils import timezone

from aiworker import notify
from aiworker.analysis import (
    Analysis,
    AnalysisRejected,
    ReviewInput,
    content_fingerprint,
    parse_batch,
    split_batch,
)
from aiworker.ledger import (
    Denied,
    admission_check,
    breaker_open_until,
    call_begin,
    call_finish,
    results_lookup,
    results_store,
)
from aiworker.models import AnalysisJob, LlmCall
from aiworker.providers import (
    PermanentError,
    ProviderError,
    ProviderUnavailable,
    RateLimited,
    TransientError,
    get_provider,
)
from aiworker.providers.local import MODEL as LOCAL_MODEL
from aiworker.providers.local import analyze_text, is_food_safety
from aiworker.services import dead_letter_file
from outbox.models import OutboxEvent
from outbox.routes import routes_for
from outbox.services import event_finish, event_lock, event_retry_at, events_finish
from reviews.models import Review
from reviews.services import (
    ClaimedReview,
    ReviewAnalysis,
    review_mark_pending,
    reviews_apply_analyses,
    reviews_claim_for_analysis,
    reviews_release,
)

logger = logging.getLogger("aiworker")

TASK = "aiworker.tasks.analyze_event"
BUSY_RETRY = timedelta(seconds=2)
PARK_JITTER_S = 5.0


def backoff(attempts: int) -> timedelta:
    """Exponential backoff with full jitter on the upper half, capped."""
    base = settings.LLM_BACKOFF_BASE_S * 2 ** max(attempts - 1, 0)
    delay = min(base, settings.LLM_BACKOFF_MAX_S)
    return timedelta(seconds=delay / 2 + random.uniform(0, delay / 2))  # noqa: S311 - jitter, not crypto


def event_analyze(*, event_id: str) -> str:
    """Handle one delivery of an analysis event. Returns a short outcome for logs and tests."""
    with transaction.atomic():
        event = event_lock(event_id=event_id)
        if event is None or TASK in event.finished_tasks:
            return "duplicate"
        review_id, revision = event.payload["review_id"], event.payload["revision"]
        review = Review.objects.filter(pk=review_id).first()
        job = AnalysisJob.objects.filter(review_id=review_id, revision=revision).first()
        if review is None or review.revision != revision or _analysed(review, revision):
            event_finish(event=event, task=TASK)
            return "skipped"
        if job is not None and job.state != AnalysisJob.State.PENDING:
            event_finish(event=event, task=TASK)
            return job.state
        if job is not None and job.attempts >= settings.LLM_MAX_ATTEMPTS:
            # Attempts were counted but never settled: its workers died or timed out each time.
            dead_letter_file(
                job=AnalysisJob.objects.select_for_update().get(pk=job.pk),
                event_id=event_id,
                topic=event.topic,
                error_class="PoisonEvent",
                message=f"{job.attempts} attempts without an outcome (worker killed or timed out)",
                raw_response="",
            )
            event_finish(event=event, task=TASK)
            return "dead"
        admission = admission_check()
        if admission.denied is not None:
            # Cheap early exit while the breaker is open or the budget spent: no batch claimed.
            own = ClaimedReview(review.pk, revision, review.rating, review.text, review.reply_tone)
            return _park(event_id, [own], admission.denied, refund=False)
        created_at, handed_off_at = event.created_at, event.published_at

    # Let a batch fill for a moment, never longer than the configured wait.
    wait = settings.LLM_BATCH_WAIT_MS / 1000 - (timezone.now() - created_at).total_seconds()
    if wait > 0:
        time.sleep(wait)

    # A breaker that is not closed lets one probe call through: it carries only this review.
    # A provider still down then costs one review one call, and the next probe (another
    # event's) carries another review, not the same batch again and again. The breaker was
    # read before the batch-fill wait; a change since then is seen by call_begin, which decides.
    solo = (job is not None and job.solo) or not admission.breaker_closed
    limit = 1 if solo else settings.LLM_BATCH_SIZE
    claimed = reviews_claim_for_analysis(
        review_id=review_id,
        revision=revision,
        limit=limit,
        lease=timedelta(seconds=settings.Q_TIMEOUT_S),
    )
    if not claimed:
        # Another worker holds this review in its batch; look again shortly.
        _retry_event(event_id, timezone.now() + BUSY_RETRY)
        return "busy"

    batch, jobs = _count_attempts(claimed, own_review_id=review_id)
    if review_id not in jobs:
        # Settled by someone else between our look and our claim; the next look finishes it.
        reviews_release(review_ids=[c.id for c in batch])
        _retry_event(event_id, timezone.now())
        return "busy"
    provider = get_provider()
    fingerprints = {
        c.id: content_fingerprint(
            model=provider.model, review_id=c.id, text=c.text, rating=c.rating, tone=c.tone
        )
        for c in batch
    }
    reused = results_lookup(fingerprints=list(fingerprints.values()))
    results: dict[int, Analysis] = {
        c.id: reused[fingerprints[c.id]] for c in batch if fingerprints[c.id] in reused
    }
    to_call = [c for c in batch if c.id not in results]
    problems: dict[int, str] = {}
    raw = ""
    model = provider.model
    if to_call:
        refs = {f"r{i}": c for i, c in enumerate(to_call, start=1)}
        items = [ReviewInput(ref=ref, rating=c.rating, text=c.text) for ref, c in refs.items()]
        admitted = call_begin(
            model=provider.model,
            fingerprints=[fingerprints[c.id] for c in to_call],
            review_ids=[c.id for c in to_call],
            handed_off_at=handed_off_at,
        )
        if isinstance(admitted, Denied):
            return _park(event_id, batch, admitted, refund=True)
        call = admitted
        started = time.perf_counter()
        try:
            answer = provider.complete(items, tone=to_call[0].tone)
        except ProviderError as exc:
            call_finish(
                call,
                status=LlmCall.Status.RATE_LIMITED
                if isinstance(exc, RateLimited)
                else LlmCall.Status.ERROR,
                latency_ms=int((time.perf_counter() - started) * 1000),
                error=exc,
                raw_response=exc.raw,
            )
            if isinstance(exc, ProviderUnavailable):
                # The ledger has opened the breaker; these reviews wait with the others.
                denied = Denied("breaker", f"AI provider unavailable: {exc}", breaker_open_until())
                return _park(event_id, batch, denied, refund=True)
            denied = admission_check().denied
            if isinstance(exc, TransientError) and denied is not None and denied.kind == "breaker":
                # This failure opened the breaker (or was its failed probe): the provider is
                # down, not these reviews, so they wait without spending the attempt.
                return _park(event_id, batch, denied, refund=True)
            return _handle_failure(event_id, review_id, batch, jobs, exc)
        latency_ms = int((time.perf_counter() - started) * 1000)
        try:
            ok, bad = split_batch(parse_batch(answer.raw), list(refs))
        except AnalysisRejected as exc:
            ok, bad = {}, {ref: str(exc) for ref in refs}
        raw, model = answer.raw, answer.model or provider.model
        call_finish(
            call,
            status=LlmCall.Status.OK if ok else LlmCall.Status.REJECTED,
            latency_ms=latency_ms,
            answer=answer,
            raw_response=answer.raw if bad else "",
        )
        results_store(
            call=call, results={fingerprints[refs[r].id]: (refs[r].id, a) for r, a in ok.items()}
        )
        results.update({refs[r].id: a for r, a in ok.items()})
        problems = {refs[r].id: reason for r, reason in bad.items()}
    return _apply(event_id, review_id, batch, results, problems, model=model, raw=raw)


def _analysed(review: Review, revision: int) -> bool:
    return (
        review.analysis_status == Review.Status.DONE
        and review.analysis_revision == revision
        and not review.analysis_provisional
    )


# Creates the batch's missing jobs and counts one attempt on each pending one, in one
# statement: the ORM took three (INSERT, locking SELECT, UPDATE) and ten times the CPU. Rows
# are locked in (review, revision) order, as _apply and _handle_failure lock them. A companion
# that must be retried alone, or is no longer pending, is neither counted nor returned.
COUNT_ATTEMPTS_SQL = """
INSERT INTO aiworker_analysisjob AS job
    (review_id, revision, state, attempts, solo, last_error, created_at)
SELECT batch.review_id, batch.revision, %s, 1, false, '', %s
FROM unnest(%s::bigint[], %s::integer[]) AS batch(review_id, revision)
ORDER BY batch.review_id, batch.revision
ON CONFLICT (review_id, revision) DO UPDATE SET attempts = job.attempts + 1
WHERE job.state = %s AND (NOT job.solo OR job.review_id = %s)
RETURNING job.review_id, job.id
"""


def _count_attempts(
    claimed: list[ClaimedReview], *, own_review_id: int
) -> tuple[list[ClaimedReview], dict[int, int]]:
    """Count one attempt for every review in the batch, committed before the provider call.

    Returns the batch left and its job ids by review id; the reviews that left it are released.
    """
    pending = AnalysisJob.State.PENDING
    with connection.cursor() as cursor:
        cursor.execute(
            COUNT_ATTEMPTS_SQL,
            [
                pending,
                timezone.now(),
                [c.id for c in claimed],
                [c.revision for c in claimed],
                pending,
                own_review_id,
            ],
        )
        jobs = dict(cursor.fetchall())
    batch = [c for c in claimed if c.id in jobs]
    left_out = [c.id for c in claimed if c.id not in jobs]
    if left_out:
        reviews_release(review_ids=left_out)
    return batch, jobs


def _park(event_id: str, batch: list[ClaimedReview], denied: Denied, *, refund: bool) -> str:
    """Breaker open or budget spent: give attempts back, wait, and never fail the review.

    Food-safety alerts do not wait for the budget: the offline keyword rule raises them now.
    With LLM_FALLBACK_LOCAL, the offline analyzer writes a provisional analysis meanwhile.
    """
    with transaction.atomic():
        event = event_lock(event_id=event_id)
        if refund:  # attempts counted for a call that was not made (or not our fault)
            AnalysisJob.objects.filter(
                review_id__in=[c.id for c in batch], state=AnalysisJob.State.PENDING, attempts__gt=0
            ).update(attempts=F("attempts") - 1)
        reviews_release(review_ids=[c.id for c in batch])
        waiting = (
            "waiting for AI budget" if denied.kind == "budget" else "waiting for the AI provider"
        )
        for c in batch:
            review_mark_pending(review_id=c.id, waiting=waiting)
            if settings.LLM_FALLBACK_LOCAL:
                local = analyze_text(text=c.text, rating=c.rating, tone=c.tone)
                written = reviews_apply_analyses(
                    analyses=[_review_analysis(c, local)],
                    model=LOCAL_MODEL,
                    provisional=True,
                    waiting=waiting,
                )
                review = written[0] if written else None
            else:
                review = (
                    Review.objects.select_for_update().filter(pk=c.id, revision=c.revision).first()
                )
            if review is not None and is_food_safety(c.text):
                notify.alert_raise(review=review)
        if event is not None and TASK not in event.finished_tasks:
            # Spread the wake-ups so parked events do not all return in the same second.
            when = denied.until + timedelta(seconds=random.uniform(0, PARK_JITTER_S))  # noqa: S311
            event_retry_at(event=event, when=when, parked_reason=f"{denied.kind}: {denied.reason}")
    logger.info("event %s parked until %s: %s", event_id, denied.until, denied.reason)
    return "parked"


def _retry_event(event_id: str, when) -> None:
    with transaction.atomic():
        event = event_lock(event_id=event_id)
        if event is not None and TASK not in event.finished_tasks:
            event_retry_at(event=event, when=when)


def _handle_failure(
    event_id: str,
    own_review_id: int,
    batch: list[ClaimedReview],
    jobs: dict[int, int],
    exc: ProviderError,
) -> str:
    now = timezone.now()
    ids = [c.id for c in batch]
    with transaction.atomic():
        event = event_lock(event_id=event_id)
        locked = {
            j.review_id: j
            for j in AnalysisJob.objects.select_for_update()
            .filter(pk__in=list(jobs.values()))
            .order_by("review_id", "revision")
        }
        if isinstance(exc, RateLimited):
            # Nothing is wrong with these reviews: give the attempts back and wait.
            for job in locked.values():
                job.attempts = max(job.attempts - 1, 0)
                job.save(update_fields=["attempts"])
            reviews_release(review_ids=ids)
            when = now + timedelta(seconds=exc.retry_after + random.uniform(0, 0.5))  # noqa: S311
            logger.info("rate limited: event %s waits %.1fs", event_id, exc.retry_after)
            if event is not None and TASK not in event.finished_tasks:
                event_retry_at(event=event, when=when)
            return "rate_limited"

        own = locked[own_review_id]
        for job in locked.values():
            job.last_error = f"{exc.__class__.__name__}: {exc}"
            job.first_failure_at = job.first_failure_at or now
            job.last_failure_at = now
            job.save(update_fields=["last_error", "first_failure_at", "last_failure_at"])
        if isinstance(exc, PermanentError) and len(batch) > 1:
            # One review may have caused it: every review in the batch is retried alone.
            AnalysisJob.objects.filter(pk__in=[j.pk for j in locked.values()]).update(solo=True)
            reviews_release(review_ids=ids)
            if event is not None:
                event_retry_at(event=event, when=now)
            return "retry_alone"
        topic = event.topic if event is not None else ""
        for job in locked.values():
            if isinstance(exc, PermanentError) or job.attempts >= settings.LLM_MAX_ATTEMPTS:
                dead_letter_file(
                    job=job,
                    event_id=event_id if job is own else None,
                    topic=topic,
                    error_class=exc.__class__.__name__,
                    message=str(exc),
                    raw_response=exc.raw,
                )
        reviews_release(review_ids=ids)
        if event is None:
            return "gone"
        if own.state == AnalysisJob.State.DEAD:
            event_finish(event=event, task=TASK)
            return "dead"
        assert isinstance(exc, TransientError)
        event_retry_at(event=event, when=now + backoff(own.attempts))
        return "retry"


def _apply(
    event_id: str,
    own_review_id: int,
    batch: list[ClaimedReview],
    results: dict[int, Analysis],
    problems: dict[int, str],
    *,
    model: str,
    raw: str,
) -> str:
    """Apply results, raise alerts and finish the event, all in one transaction.

    The events of the batch's other reviews are finished too, so their tasks, queued or
    waiting for a retry, end at their first look instead of analysing again.
    """
    now = timezone.now()
    with transaction.atomic():
        event = event_lock(event_id=event_id)
        topic = event.topic if event is not None else ""
        locked = {
            (j.review_id, j.revision): j
            for j in AnalysisJob.objects.select_for_update()
            .filter(review_id__in=[c.id for c in batch])
            .order_by("review_id", "revision")
        }
        done: list[ReviewAnalysis] = []
        done_jobs: list[int] = []
        alone: list[int] = []
        for c in batch:
            job = locked[(c.id, c.revision)]
            if job.state != AnalysisJob.State.PENDING:
                continue  # a zombie finishing late: someone already settled this job
            analysis = results.get(c.id)
            if analysis is not None:
                done.append(_review_analysis(c, analysis))
                done_jobs.append(job.pk)
                job.state = AnalysisJob.State.DONE
            elif job.solo or len(batch) == 1:
                dead_letter_file(
                    job=job,
                    event_id=event_id if c.id == own_review_id else None,
                    topic=topic,
                    error_class="InvalidOutput",
                    message=problems.get(c.id, "no result"),
                    raw_response=raw,
                )
            else:
                alone.append(job.pk)
        written = reviews_apply_analyses(analyses=done, model=model, analyzed_at=now)
        for review in written:
            if review.sentiment == Review.Sentiment.CRITICAL:
                notify.alert_raise(review=review)
        AnalysisJob.objects.filter(pk__in=done_jobs).update(
            state=AnalysisJob.State.DONE, finished_at=now
        )
        if alone:
            AnalysisJob.objects.filter(pk__in=alone).update(solo=True)
        # Writing an analysis also ended its review's lease; only the others need releasing.
        unwritten = {c.id for c in batch} - {r.pk for r in written}
        if unwritten:
            reviews_release(review_ids=list(unwritten))
        own = None
        if event is not None and TASK not in event.finished_tasks:
            own = locked[(own_review_id, event.payload["revision"])]
        finished = _companion_events(done, own_event_id=event_id)
        if own is not None and own.state != AnalysisJob.State.PENDING:
            finished.append(event)  # settled: finished in the same statement as its companions
        events_finish(events=finished, task=TASK)
        if own is None:
            return "done"
        if own.state == AnalysisJob.State.PENDING:
            event_retry_at(event=event, when=now)  # left out of the answer: retried alone
            return "retry_alone"
        return "done" if own.state == AnalysisJob.State.DONE else "dead"


def _review_analysis(review: ClaimedReview, analysis: Analysis) -> ReviewAnalysis:
    return ReviewAnalysis(
        review_id=review.id,
        revision=review.revision,
        sentiment=analysis.sentiment,
        tags=analysis.tags,
        language=analysis.language,
        reply_draft=analysis.reply_draft,
    )


def _companion_events(done: list[ReviewAnalysis], *, own_event_id: str) -> list[OutboxEvent]:
    """The handed-off analysis events of reviews this batch analysed (not our own), locked, to
    be finished with ours, so their tasks end at their first look instead of analysing again.

    Events locked by their own running task are skipped: that task sees the analysis and
    finishes its event itself. The filter matches the partial index of in-flight events.
    """
    revisions = {(a.review_id, a.revision) for a in done}
    if not revisions:
        return []
    events = (
        OutboxEvent.objects.select_for_update(skip_locked=True)
        .filter(
            published_at__isnull=False,
            finished_at__isnull=True,
            payload__review_id__in=[review_id for review_id, _ in revisions],
        )
        .exclude(pk=own_event_id)
    )
    return [
        e
        for e in events
        if TASK in routes_for(e.topic)
        and (e.payload.get("review_id"), e.payload.get("revision")) in revisions
    ]
