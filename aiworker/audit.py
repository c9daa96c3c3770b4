"""The ledger checker: did every accepted review end exactly once, and was nothing done twice?

Read-only. It looks at the database (reviews, outbox events, the django-q2 queue, analysis
jobs, dead letters, the LLM call ledger, alerts) and sorts every review in scope into exactly
one outcome, plus findings in three categories that must all be zero:

lost
    An accepted review that nobody will ever finish: it does not exist although its request
    got a 2xx, it has no outbox event, or it is pending while no unfinished event for its
    current revision exists (e.g. its event was finished without analysing it). Also a
    CRITICAL review whose alert was never raised or never sent.
duplicated
    Something done twice: a task enqueued twice for one hand-off ("published twice", defined
    below), a review whose stored result was paid for again, more provider calls than its
    attempts allow, both analysed and dead-lettered, two open letters, two alerts or two
    webhook POSTs for one review.
unexpected
    States that the design has no place for: failed without a dead letter, processed without
    an event, an event finished or published without a hand-off, a review committed although
    its request was answered with an error, a review still in flight when that is not allowed.

Outcomes (each review has exactly one): processed (analysis done for its current revision),
dead_lettered (failed, with an open or discarded letter for that revision), parked (pending,
its event unpublished and parked with a reason or scheduled for a later retry: the outbox still
owns it and will resume it), in_flight (pending, its event ready for the relay or handed off),
lost, or unexpected.

"Published twice". A hand-off is the relay's claim of an event (published_at set,
handoffs + 1), which enqueues exactly one task per route in the same transaction. Handing an
event back (a retry, a rate limit, parking, the sweeper) unpublishes it first, so `handoffs`
grows with retries and is not itself a duplicate. A duplicate hand-off shows in the queue: two
tasks for the same event and route that were never dequeued (django-q2's lock still equals
their enqueue time) and were enqueued within the sweeper's deadline of each other. A task that
was dequeued and whose lock expired (a worker killed mid-task) is django-q2 redelivering, not a
hand-off: it is reported as `redeliveries_pending`, and whatever it does must be absorbed by the
consumer, which the effect checks (paid twice, two letters, two alerts) prove.

Provider calls per review. Every call that includes a review is counted (LlmCall.review_ids).
Each attempt is committed before its call and allows one call; 429s and "provider
unavailable" calls give their attempt back. So a review may appear in at most
LLM_MAX_ATTEMPTS * (1 + replays of its dead letters) calls per revision, plus the calls that
were given back. A provider-side count (e.g. the fake LLM's `/_stats`) may be larger per
counted call: the SDK's own retries and one repair request for schema-invalid output.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from itertools import pairwise

from django.conf import settings
from django.core.signing import BadSignature
from django.utils import timezone
from django_q.models import OrmQ
from django_q.signing import SignedPackage

from aiworker.models import Alert, AnalysisJob, DeadLetter, LlmCall, LlmResult
from outbox.models import OutboxEvent
from reviews.models import Review

ANALYSIS_TASK = "aiworker.tasks.analyze_event"
ALERT_TOPIC = "reviews.critical_alert"
GIVEN_BACK_ERRORS = {"ProviderUnavailable"}
LOST, DUPLICATED, UNEXPECTED = "lost", "duplicated", "unexpected"
OUTCOMES = ("processed", "dead_lettered", "parked", "in_flight", "lost", "unexpected")
_CHUNK = 5000


@dataclass(frozen=True)
class Finding:
    category: str  # lost | duplicated | unexpected
    kind: str
    detail: str
    review_id: int | None = None
    event_id: str | None = None


@dataclass
class LedgerReport:
    reviews: int = 0
    outcomes: dict[str, int] = field(default_factory=lambda: dict.fromkeys(OUTCOMES, 0))
    provider_calls: int = 0
    given_back_calls: int = 0
    max_calls_seen: int = 0
    redeliveries_pending: int = 0
    # Why parked reviews wait: "scheduled" (a retry time) or the parking reason.
    waiting: Counter = field(default_factory=Counter)
    findings: list[Finding] = field(default_factory=list)
    checked_at: datetime = field(default_factory=timezone.now)

    def _count(self, category: str) -> int:
        return sum(1 for f in self.findings if f.category == category)

    @property
    def lost(self) -> int:
        return self._count(LOST)

    @property
    def duplicated(self) -> int:
        return self._count(DUPLICATED)

    @property
    def unexpected(self) -> int:
        return self._count(UNEXPECTED)

    @property
    def processed(self) -> int:
        return self.outcomes["processed"]

    @property
    def dead_lettered(self) -> int:
        return self.outcomes["dead_lettered"]

    @property
    def parked(self) -> int:
        return self.outcomes["parked"]

    @property
    def in_flight(self) -> int:
        return self.outcomes["in_flight"]

    @property
    def ok(self) -> bool:
        return not self.findings

    def kinds(self) -> dict[str, int]:
        return dict(Counter(f"{f.category}:{f.kind}" for f in self.findings))

    def summary(self) -> str:
        return (
            f"lost={self.lost} duplicated={self.duplicated} unexpected={self.unexpected} "
            f"(reviews={self.reviews} processed={self.processed} "
            f"dead_lettered={self.dead_lettered} parked={self.parked} "
            f"in_flight={self.in_flight} provider_calls={self.provider_calls})"
        )

    def as_dict(self, *, max_findings: int = 50) -> dict:
        return {
            "ok": self.ok,
            "lost": self.lost,
            "duplicated": self.duplicated,
            "unexpected": self.unexpected,
            "reviews": self.reviews,
            "processed": self.processed,
            "dead_lettered": self.dead_lettered,
            "parked": self.parked,
            "in_flight": self.in_flight,
            "outcomes": self.outcomes,
            "waiting": dict(self.waiting),
            "provider_calls": self.provider_calls,
            "given_back_calls": self.given_back_calls,
            "max_calls_seen": self.max_calls_seen,
            "redeliveries_pending": self.redeliveries_pending,
            "kinds": self.kinds(),
            "findings": [asdict(f) for f in self.findings[:max_findings]],
            "checked_at": self.checked_at.isoformat(),
        }

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), indent=2, default=str)


def analysis_topics() -> set[str]:
    return {topic for topic, funcs in settings.OUTBOX_ROUTES.items() if ANALYSIS_TASK in funcs}


def _chunks(values: list, size: int = _CHUNK) -> Iterable[list]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


def _review_id(payload: object) -> int | None:
    value = payload.get("review_id") if isinstance(payload, dict) else None
    return value if isinstance(value, int) else None


def ledger_check(
    *,
    since: datetime | None = None,
    accepted_ids: Iterable[int] | None = None,
    refused_ids: Iterable[int] = (),
    allow_in_flight: bool = False,
    max_calls_per_review: int | None = None,
    webhook_posts: Mapping[int, int] | None = None,
) -> LedgerReport:
    """Check the ledger for a run.

    since: only reviews created at or after this time (default: all reviews).
    accepted_ids: the reviews that must exist and end well (ids a load generator got a 2xx for,
        plus those found for requests whose answer was lost); when given, `since` is ignored.
    refused_ids: reviews that exist although their request was answered with an error.
    allow_in_flight: a review still on its way (event ready or handed off) is not a finding.
    max_calls_per_review: a fixed limit of paid provider calls per review instead of the
        limit derived from its attempts (calls given back by 429s are never counted).
    webhook_posts: POSTs a webhook receiver got, per review id.
    """
    now = timezone.now()
    report = LedgerReport(checked_at=now)
    add = report.findings.append

    reviews_qs = Review.objects.all()
    wanted: set[int] | None = None
    if accepted_ids is not None:
        wanted = set(accepted_ids)
        rows = []
        for chunk in _chunks(sorted(wanted)):
            rows += list(_review_values(reviews_qs.filter(pk__in=chunk)))
    else:
        if since is not None:
            reviews_qs = reviews_qs.filter(created_at__gte=since)
        rows = list(_review_values(reviews_qs))
    reviews = {r["id"]: r for r in rows}
    ids = sorted(reviews)
    report.reviews = len(ids) + (len(wanted - set(reviews)) if wanted is not None else 0)

    for missing in sorted((wanted or set()) - set(reviews)):
        add(Finding(LOST, "not_committed", "accepted (2xx) but not in the database", missing))
        report.outcomes["lost"] += 1
    for refused in sorted(set(refused_ids) & set(reviews)):
        add(
            Finding(
                UNEXPECTED, "committed_after_error", "answered with an error but committed", refused
            )
        )

    # Everything about these reviews, loaded in bulk.
    events: dict[int, list[dict]] = defaultdict(list)
    jobs: dict[int, list[dict]] = defaultdict(list)
    letters: dict[int, list[dict]] = defaultdict(list)
    results: dict[int, list[dict]] = defaultdict(list)
    alerts: dict[int, list[dict]] = defaultdict(list)
    for chunk in _chunks(ids):
        for e in OutboxEvent.objects.filter(payload__review_id__in=chunk).values():
            rid = _review_id(e["payload"])
            if rid in reviews:
                events[rid].append(e)
        for j in AnalysisJob.objects.filter(review_id__in=chunk).values():
            jobs[j["review_id"]].append(j)
        for d in DeadLetter.objects.filter(review_id__in=chunk).values():
            letters[d["review_id"]].append(d)
        for r in LlmResult.objects.filter(review_id__in=chunk).values("review_id", "created_at"):
            results[r["review_id"]].append(r)
        for a in Alert.objects.filter(review_id__in=chunk).values():
            alerts[a["review_id"]].append(a)
    calls: dict[int, list[dict]] = defaultdict(list)
    if ids:
        oldest = min(r["created_at"] for r in reviews.values())
        call_rows = LlmCall.objects.filter(created_at__gte=oldest - timedelta(minutes=1)).values(
            "id", "review_ids", "status", "error_class", "created_at", "latency_ms"
        )
        scope = set(ids)
        counted: set[int] = set()
        for c in call_rows.iterator(chunk_size=2000):
            for rid in set(c["review_ids"] or ()) & scope:
                calls[rid].append(c)
                counted.add(c["id"])
        report.provider_calls = len(counted)

    topics = analysis_topics()
    retention_cutoff = now - timedelta(hours=settings.OUTBOX_RETENTION_HOURS)
    for rid in ids:
        outcome = _check_review(
            review=reviews[rid],
            events=events[rid],
            jobs=jobs[rid],
            letters=letters[rid],
            results=results[rid],
            calls=calls[rid],
            alerts=alerts[rid],
            topics=topics,
            now=now,
            retention_cutoff=retention_cutoff,
            allow_in_flight=allow_in_flight,
            max_calls_per_review=max_calls_per_review,
            webhook_posts=(webhook_posts or {}).get(rid, 0),
            report=report,
        )
        report.outcomes[outcome] += 1

    _check_events([e for rid in ids for e in events[rid]], report)
    _check_queue(report, now=now)
    return report


def _review_values(qs):
    return qs.values(
        "id",
        "revision",
        "analysis_status",
        "analysis_revision",
        "analysis_provisional",
        "sentiment",
        "created_at",
    )


def _check_review(
    *,
    review: dict,
    events: list[dict],
    jobs: list[dict],
    letters: list[dict],
    results: list[dict],
    calls: list[dict],
    alerts: list[dict],
    topics: set[str],
    now: datetime,
    retention_cutoff: datetime,
    allow_in_flight: bool,
    max_calls_per_review: int | None,
    webhook_posts: int,
    report: LedgerReport,
) -> str:
    """Sort one review into its outcome, adding findings to the report."""
    add = report.findings.append
    rid, revision, status = review["id"], review["revision"], review["analysis_status"]
    analysis_events = [e for e in events if e["topic"] in topics]
    current = [e for e in analysis_events if e["payload"].get("revision") == revision]
    open_current = [e for e in current if e["finished_at"] is None]
    # Finished events are pruned after the retention period; a younger review keeps its event.
    must_have_event = review["created_at"] >= retention_cutoff
    no_event = must_have_event and not any(e["topic"] == "reviews.created" for e in events)
    current_letters = [d for d in letters if d["revision"] == revision]
    open_letters = [d for d in current_letters if d["status"] == DeadLetter.Status.OPEN]

    processed = (
        status == Review.Status.DONE
        and review["analysis_revision"] == revision
        and not review["analysis_provisional"]
    )
    if processed:
        outcome = "processed"
        if no_event:
            add(
                Finding(
                    UNEXPECTED, "processed_without_event", "analysed but has no outbox event", rid
                )
            )
            outcome = "unexpected"
        if open_letters:
            add(
                Finding(
                    DUPLICATED,
                    "processed_and_dead_lettered",
                    "analysed and has an open dead letter",
                    rid,
                )
            )
        _check_alert(review, events, alerts, webhook_posts, report)
    elif status == Review.Status.FAILED:
        outcome = "dead_lettered"
        if not [d for d in current_letters if d["status"] != DeadLetter.Status.REPLAYED]:
            add(
                Finding(
                    UNEXPECTED,
                    "failed_without_letter",
                    "failed without a dead letter for its revision",
                    rid,
                )
            )
            outcome = "unexpected"
        if len(open_letters) > 1:
            add(Finding(DUPLICATED, "two_open_letters", f"{len(open_letters)} open letters", rid))
    elif no_event:
        add(Finding(LOST, "no_event", "pending without any outbox event", rid))
        outcome = "lost"
    elif not open_current:
        finished = len(current)
        add(
            Finding(
                LOST,
                "stuck_pending",
                f"pending at revision {revision} but no unfinished event for it "
                f"({finished} finished)",
                rid,
            )
        )
        outcome = "lost"
    else:
        in_outbox = all(
            e["published_at"] is None and (e["parked_reason"] or e["available_at"] > now)
            for e in open_current
        )
        if in_outbox:
            outcome = "parked"
            reasons = {e["parked_reason"][:60] or "scheduled" for e in open_current}
            report.waiting[sorted(reasons)[0]] += 1
        else:
            outcome = "in_flight"
            if not allow_in_flight:
                add(
                    Finding(
                        UNEXPECTED, "in_flight", "still on its way (event ready or handed off)", rid
                    )
                )

    _check_calls(review, jobs, letters, results, calls, max_calls_per_review, report)
    return outcome


def _check_alert(
    review: dict, events: list[dict], alerts: list[dict], webhook_posts: int, report: LedgerReport
) -> None:
    add = report.findings.append
    rid = review["id"]
    alert_events = [e for e in events if e["topic"] == ALERT_TOPIC]
    if len(alert_events) > 1:
        add(Finding(DUPLICATED, "two_alert_events", f"{len(alert_events)} alert events", rid))
    if len(alerts) > 1:
        add(Finding(DUPLICATED, "two_alerts", f"{len(alerts)} alerts", rid))
    if webhook_posts > 1:
        add(Finding(DUPLICATED, "webhook_twice", f"{webhook_posts} webhook POSTs", rid))
    if review["sentiment"] == Review.Sentiment.CRITICAL and not alerts:
        add(Finding(LOST, "alert_missing", "CRITICAL but no alert was raised", rid))
    for alert in alerts:
        if alert["sent_at"] is not None:
            continue
        event = next((e for e in alert_events if str(e["id"]) == str(alert["event_id"])), None)
        if event is None or event["finished_at"] is not None:
            add(
                Finding(
                    LOST,
                    "alert_not_sent",
                    "alert never sent and its event is gone or finished",
                    rid,
                )
            )


def _check_calls(
    review: dict,
    jobs: list[dict],
    letters: list[dict],
    results: list[dict],
    calls: list[dict],
    max_calls_per_review: int | None,
    report: LedgerReport,
) -> None:
    add = report.findings.append
    rid = review["id"]
    report.max_calls_seen = max(report.max_calls_seen, len(calls))
    given_back = [
        c
        for c in calls
        if c["status"] == LlmCall.Status.RATE_LIMITED or c["error_class"] in GIVEN_BACK_ERRORS
    ]
    report.given_back_calls += len(given_back)
    paid = len(calls) - len(given_back)
    if max_calls_per_review is not None:
        allowed = max_calls_per_review
    else:
        replays = Counter(d["job_id"] for d in letters if d["status"] == DeadLetter.Status.REPLAYED)
        allowed = sum(settings.LLM_MAX_ATTEMPTS * (1 + replays[j["id"]]) for j in jobs)
    if paid > allowed:
        add(
            Finding(
                DUPLICATED,
                "too_many_calls",
                f"{paid} paid provider calls, at most {allowed} allowed "
                f"({len(given_back)} more given back)",
                rid,
            )
        )
    # One revision means one content: a call started after its result was stored paid twice.
    if review["revision"] == 1 and results:
        stored = min(r["created_at"] for r in results)
        again = [c for c in calls if c not in given_back and _call_started(c) > stored]
        if again:
            add(
                Finding(
                    DUPLICATED,
                    "paid_twice",
                    f"{len(again)} provider call(s) after its result was stored",
                    rid,
                )
            )


def _call_started(call: dict) -> datetime:
    # A ledger row inserted before its call ("started" status exists) is stamped at the start;
    # one written after the call, at the end.
    if "started" in LlmCall.Status.values:
        return call["created_at"]
    return call["created_at"] - timedelta(milliseconds=call["latency_ms"])


def _check_events(events: list[dict], report: LedgerReport) -> None:
    add = report.findings.append
    for e in events:
        if e["handoffs"] == 0 and (e["published_at"] is not None or e["finished_at"] is not None):
            state = "finished" if e["finished_at"] is not None else "published"
            add(
                Finding(
                    UNEXPECTED,
                    f"{state}_without_handoff",
                    f"{e['topic']} {state} but never handed off",
                    _review_id(e["payload"]),
                    str(e["id"]),
                )
            )


def _check_queue(report: LedgerReport, *, now: datetime) -> None:
    """Tasks enqueued twice for one hand-off, and redeliveries django-q2 still owes."""
    fresh: dict[tuple[str, str], list[datetime]] = defaultdict(list)
    deadline = timedelta(seconds=settings.DELIVERY_DEADLINE_S)
    for row in OrmQ.objects.all().only("id", "payload", "lock").iterator(chunk_size=2000):
        try:
            task = SignedPackage.loads(row.payload)
        except (BadSignature, ValueError, TypeError, AttributeError):
            # Signed with another SECRET_KEY: django-q2 will drop it; the sweeper re-hands off.
            report.redeliveries_pending += 1
            continue
        args = task.get("args") or ()
        started = task.get("started")
        if not args or not isinstance(started, datetime):
            continue
        if row.lock > started + timedelta(seconds=1):
            # Dequeued before (the lock moved forward): a redelivery once the lock expires.
            if row.lock <= now:
                report.redeliveries_pending += 1
            continue
        for event_id in args:
            fresh[(str(event_id), task.get("func", ""))].append(started)
    for (event_id, func), starts in fresh.items():
        starts.sort()
        twice = sum(1 for a, b in pairwise(starts) if b - a < deadline)
        if twice:
            report.findings.append(
                Finding(
                    DUPLICATED,
                    "enqueued_twice",
                    f"{twice + 1} never-dequeued tasks {func} for one hand-off",
                    None,
                    event_id,
                )
            )
