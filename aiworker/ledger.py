"""The LLM call ledger, the budget and the circuit breaker: what was paid for, what may be
paid for next, and results reused instead of paying twice."""

import hashlib
import json
import logging
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Count, F, Min, Q, Sum
from django.utils import timezone

from aiworker.analysis import PROMPT_VERSION, Analysis, ProviderAnswer
from aiworker.models import Breaker, Budget, LlmCall, LlmResult
from aiworker.providers import PermanentError, ProviderUnavailable, TransientError

logger = logging.getLogger("aiworker.ledger")

LEDGER_LOCK_KEY = 0x5EED_0001  # any constant shared by all workers
BREAKER_NAME = "llm"
PROBE_WAIT = timedelta(seconds=5)
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)


def cost_usd(*, model: str, prompt_tokens: int, completion_tokens: int) -> Decimal:
    price_in, price_out = settings.LLM_PRICES.get(model, (0.0, 0.0))
    cost = (prompt_tokens * price_in + completion_tokens * price_out) / 1_000_000
    return Decimal(str(round(cost, 6)))


def results_lookup(*, fingerprints: list[str]) -> dict[str, Analysis]:
    """Stored results for these fingerprints: a hit means the content was already paid for."""
    rows = LlmResult.objects.filter(fingerprint__in=fingerprints).values_list(
        "fingerprint", "result"
    )
    return {fp: Analysis(**result) for fp, result in rows}


def batch_fingerprint(fingerprints: list[str]) -> str:
    return hashlib.sha256("\n".join(sorted(fingerprints)).encode()).hexdigest()


@dataclass(frozen=True)
class Denied:
    """The breaker or the budget says no: the event waits until `until`, nothing is spent."""

    kind: str  # "breaker" | "budget"
    reason: str
    until: datetime


def call_begin(
    *, model: str, fingerprints: list[str], review_ids: list[int], handed_off_at: datetime | None
) -> LlmCall | Denied:
    """Admit one provider call or deny it; an admitted call is in the ledger before it is made.

    Workers take a transaction-level advisory lock here, so the last unit of budget, or the
    half-open breaker's single probe, is handed to exactly one of them.
    """
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [LEDGER_LOCK_KEY])
        now = timezone.now()
        denied = _breaker_admit(now) or _budget_check(now)
        if denied is not None:
            return denied
        return LlmCall.objects.create(
            model=model,
            prompt_version=PROMPT_VERSION,
            fingerprint=batch_fingerprint(fingerprints),
            batch_size=len(fingerprints),
            review_ids=review_ids,
            status=LlmCall.Status.STARTED,
            handed_off_at=handed_off_at,
        )


@dataclass(frozen=True)
class Admission:
    """A lock-free look at the breaker and the budget, taken once per task; call_begin decides."""

    denied: Denied | None  # park now, before claiming a batch
    breaker_closed: bool  # False: the next call is the breaker's probe


def admission_check() -> Admission:
    """Read the breaker row once: whether to park early, and whether a call would be a probe."""
    now = timezone.now()
    breaker = Breaker.objects.filter(name=BREAKER_NAME).first()
    if breaker is None or breaker.state == Breaker.State.CLOSED:
        return Admission(denied=_budget_check(now), breaker_closed=True)
    if breaker.state == Breaker.State.OPEN and breaker.open_until and breaker.open_until > now:
        reason = f"AI provider breaker open: {breaker.reason}"
        return Admission(Denied("breaker", reason, breaker.open_until), breaker_closed=False)
    return Admission(denied=_budget_check(now), breaker_closed=False)


def breaker_open_until() -> datetime:
    breaker = Breaker.objects.filter(name=BREAKER_NAME).first()
    return (breaker and breaker.open_until) or timezone.now() + PROBE_WAIT


def call_finish(
    call: LlmCall,
    *,
    status: str,
    latency_ms: int,
    answer: ProviderAnswer | None = None,
    error: Exception | None = None,
    raw_response: str = "",
) -> None:
    """Complete the ledger row right after the provider answered, and move the breaker."""
    prompt_tokens = answer.prompt_tokens if answer else 0
    completion_tokens = answer.completion_tokens if answer else 0
    call.status = status
    call.latency_ms = latency_ms
    call.error_class = error.__class__.__name__ if error else ""
    call.prompt_tokens = prompt_tokens
    call.completion_tokens = completion_tokens
    call.cached_tokens = answer.cached_tokens if answer else 0
    call.cost_usd = cost_usd(
        model=call.model, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens
    )
    call.request_id = answer.request_id if answer else ""
    call.raw_response = raw_response[:20000]
    with transaction.atomic():
        call.save()
        _breaker_record(error)


def _breaker_close() -> None:
    """The provider answered: close the breaker. Only a row that needs the change is locked,
    so the usual case (closed, no failure counted) neither writes nor waits for the row lock
    other workers take, and costs one statement."""
    breaker = (
        Breaker.objects.select_for_update()
        .filter(~Q(state=Breaker.State.CLOSED) | Q(consecutive_failures__gt=0), name=BREAKER_NAME)
        .first()
    )
    if breaker is None:
        return
    if breaker.state != Breaker.State.CLOSED:
        logger.warning("AI provider breaker closed after a successful call")
    breaker.state = Breaker.State.CLOSED
    breaker.consecutive_failures = 0
    breaker.open_until = None
    breaker.probe_started_at = None
    breaker.reason = ""
    breaker.save()


def _breaker_row() -> Breaker:
    """The breaker row, locked for the caller's transaction; created on first use."""
    breaker = Breaker.objects.select_for_update().filter(name=BREAKER_NAME).first()
    if breaker is None:
        Breaker.objects.get_or_create(name=BREAKER_NAME)
        breaker = Breaker.objects.select_for_update().get(name=BREAKER_NAME)
    return breaker


def _breaker_admit(now: datetime) -> Denied | None:
    breaker = _breaker_row()
    if breaker.state == Breaker.State.CLOSED:
        return None
    probe_running = breaker.probe_started_at and breaker.probe_started_at > now - timedelta(
        seconds=settings.Q_TIMEOUT_S
    )
    if breaker.state == Breaker.State.OPEN and breaker.open_until and breaker.open_until > now:
        return Denied("breaker", f"AI provider breaker open: {breaker.reason}", breaker.open_until)
    if breaker.state == Breaker.State.HALF_OPEN and probe_running:
        return Denied(
            "breaker", "AI provider breaker half-open: a probe call is running", now + PROBE_WAIT
        )
    # Cool-down over (or the probe's worker died): this call is the one probe.
    breaker.state = Breaker.State.HALF_OPEN
    breaker.probe_started_at = now
    breaker.save()
    return None


def _breaker_record(error: Exception | None) -> None:
    if error is None or isinstance(error, PermanentError):
        # The provider answered: whatever we think of the answer, it is up.
        _breaker_close()
        return
    breaker = _breaker_row()
    now = timezone.now()
    if isinstance(error, ProviderUnavailable):
        breaker.state = Breaker.State.OPEN
        breaker.open_until = now + timedelta(seconds=settings.LLM_BREAKER_AUTH_COOLDOWN_S)
        breaker.reason = str(error)[:300]
        breaker.probe_started_at = None
        logger.error(
            "AI PROVIDER REFUSED OUR CREDENTIALS OR QUOTA (%s): breaker open until %s; "
            "fix the key or the plan, events are parked, nothing is lost",
            error,
            breaker.open_until,
        )
    elif isinstance(error, TransientError):
        breaker.consecutive_failures += 1
        if breaker.state == Breaker.State.HALF_OPEN or (
            breaker.consecutive_failures >= settings.LLM_BREAKER_FAILURES
        ):
            breaker.state = Breaker.State.OPEN
            breaker.open_until = now + timedelta(seconds=settings.LLM_BREAKER_COOLDOWN_S)
            breaker.reason = f"{breaker.consecutive_failures} consecutive failures, last: {error}"[
                :300
            ]
            breaker.probe_started_at = None
            logger.warning(
                "AI provider breaker open until %s: %s", breaker.open_until, breaker.reason
            )
    else:
        return  # a rate limit says nothing about the provider's health
    breaker.save()


def budget_limits() -> dict[str, float | None]:
    """Effective budgets: staff overrides in the admin win over settings; None = unlimited."""
    override = Budget.objects.filter(name=BREAKER_NAME).first()
    limits = {
        "requests_per_hour": settings.LLM_BUDGET_REQUESTS_PER_HOUR,
        "tokens_per_hour": settings.LLM_BUDGET_TOKENS_PER_HOUR,
        "tokens_per_day": settings.LLM_BUDGET_TOKENS_PER_DAY,
        "usd_per_day": settings.LLM_BUDGET_USD_PER_DAY,
    }
    if override is not None:
        for key in limits:
            value = getattr(override, key)
            if value is not None:
                limits[key] = float(value) if key == "usd_per_day" else value
    return limits


def budget_usage(now: datetime | None = None) -> dict[str, float]:
    """Usage in the rolling windows, in one query over the ledger (429s are not paid)."""
    now = now or timezone.now()
    tokens = F("prompt_tokens") + F("completion_tokens")
    last_hour = Q(created_at__gte=now - HOUR)
    usage = (
        LlmCall.objects.exclude(status=LlmCall.Status.RATE_LIMITED)
        .filter(created_at__gte=now - DAY)
        .aggregate(
            requests_per_hour=Count("id", filter=last_hour),
            tokens_per_hour=Sum(tokens, filter=last_hour),
            tokens_per_day=Sum(tokens),
            usd_per_day=Sum("cost_usd"),
        )
    )
    return {key: float(value or 0) for key, value in usage.items()}


def _budget_check(now: datetime) -> Denied | None:
    limits = budget_limits()
    if all(v is None for v in limits.values()):
        return None
    usage = budget_usage(now)
    for key, limit in limits.items():
        if limit is not None and usage[key] >= limit:
            window = HOUR if key.endswith("hour") else DAY
            oldest = (
                LlmCall.objects.exclude(status=LlmCall.Status.RATE_LIMITED)
                .filter(created_at__gte=now - window)
                .aggregate(m=Min("created_at"))["m"]
            )
            # The window frees budget when its oldest call leaves it; staff can raise it sooner.
            until = (oldest or now) + window
            return Denied("budget", f"AI budget spent: {key.replace('_', ' ')} ({limit:g})", until)
    return None


# One INSERT from arrays: bulk_create's per-object work took more than twice the CPU.
RESULTS_STORE_SQL = """
INSERT INTO aiworker_llmresult (fingerprint, call_id, review_id, result, created_at)
SELECT r.fingerprint, %s, r.review_id, r.result, %s
FROM unnest(%s::varchar[], %s::bigint[], %s::jsonb[]) AS r(fingerprint, review_id, result)
ON CONFLICT (fingerprint) DO NOTHING
"""


def results_store(*, call: LlmCall, results: dict[str, tuple[int, Analysis]]) -> None:
    """Keep each valid per-review result under its fingerprint, in one statement.

    First writer wins: a concurrent zombie that stored the same content first is fine.
    """
    if not results:
        return
    review_ids = [review_id for review_id, _ in results.values()]
    analyses = [json.dumps(asdict(analysis)) for _, analysis in results.values()]
    with connection.cursor() as cursor:
        cursor.execute(
            RESULTS_STORE_SQL, [call.pk, timezone.now(), list(results), review_ids, analyses]
        )
