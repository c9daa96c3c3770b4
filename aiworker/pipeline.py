"""One snapshot of the whole pipeline, read from the database: for `pipeline_status`,
`/metrics` and `/readyz`, so every process reports the same numbers."""

import math
from datetime import timedelta

from django.conf import settings
from django.db import connection
from django.db.models import Avg, Count, Min, Sum
from django.utils import timezone
from django_q.brokers import get_broker
from django_q.models import OrmQ
from django_q.status import Stat
from prometheus_client.core import (
    CollectorRegistry,
    GaugeHistogramMetricFamily,
    GaugeMetricFamily,
)

from aiworker.ledger import BREAKER_NAME, budget_limits, budget_usage
from aiworker.models import AnalysisJob, Breaker, DeadLetter, LlmCall, PipelineSample
from outbox.models import Heartbeat, OutboxEvent
from reviews.models import Review

# Latency histograms describe the recent past, read from the database by whichever process
# serves /metrics: correct however many web and worker processes there are.
WINDOW = timedelta(minutes=15)
DRAIN_TARGET = timedelta(minutes=5)
CHART_SPAN = timedelta(hours=1)
BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
# Each stage as (seconds expression, table, time column for the window, extra condition).
STAGES = {
    "end_to_end": (
        "EXTRACT(EPOCH FROM analyzed_at - created_at)",
        "reviews_review",
        "analyzed_at",
        "analysis_status = 'done' AND NOT analysis_provisional",
    ),
    "outbox_wait": (
        "EXTRACT(EPOCH FROM published_at - created_at)",
        "outbox_outboxevent",
        "published_at",
        "topic LIKE 'reviews.%%' AND handoffs = 1",
    ),
    "queue_wait": (
        "EXTRACT(EPOCH FROM created_at - handed_off_at)",
        "aiworker_llmcall",
        "created_at",
        "handed_off_at IS NOT NULL",
    ),
    "provider_call": (
        "latency_ms / 1000.0",
        "aiworker_llmcall",
        "created_at",
        "status <> 'started'",
    ),
}


def snapshot() -> dict:
    now = timezone.now()
    unpublished = OutboxEvent.objects.filter(published_at__isnull=True)
    ready = unpublished.filter(available_at__lte=now)
    oldest = ready.aggregate(oldest=Min("available_at"))["oldest"]
    queue_key = get_broker().list_key
    queue = OrmQ.objects.filter(key=queue_key)
    reviews = dict(Review.objects.values_list("analysis_status").annotate(n=Count("id")))
    calls = list(
        LlmCall.objects.values("model", "status").annotate(
            n=Count("id"),
            prompt_tokens=Sum("prompt_tokens"),
            completion_tokens=Sum("completion_tokens"),
            cost=Sum("cost_usd"),
        )
    )
    return {
        "outbox": {
            "unpublished": ready.count(),
            "waiting_retry": unpublished.filter(available_at__gt=now, parked_reason="").count(),
            "parked": unpublished.exclude(parked_reason="").count(),
            "oldest_unpublished_age_s": round((now - oldest).total_seconds(), 3) if oldest else 0.0,
            "published_last_minute": OutboxEvent.objects.filter(
                published_at__gte=now - timedelta(minutes=1)
            ).count(),
            "handed_off_unfinished": OutboxEvent.objects.filter(
                published_at__isnull=False, finished_at__isnull=True
            ).count(),
        },
        "queue": {
            "oldest_ready_age_s": round(oldest_ready_task_age_s(now), 3),
            "depth": queue.filter(lock__lte=now).count(),
            "taken": queue.filter(lock__gt=now).count(),
        },
        "reviews": {status: reviews.get(status, 0) for status in Review.Status.values},
        "jobs": dict(AnalysisJob.objects.values_list("state").annotate(n=Count("id"))),
        "dead_letters_open": DeadLetter.objects.filter(status=DeadLetter.Status.OPEN).count(),
        "llm_calls": [{**c, "cost": float(c["cost"] or 0)} for c in calls],
        "heartbeats": {
            hb.name: round((now - hb.beat_at).total_seconds(), 1) for hb in Heartbeat.objects.all()
        },
        "clusters": len(Stat.get_all()),
        "calls_in_flight": LlmCall.objects.filter(
            status=LlmCall.Status.STARTED,
            created_at__gte=now - timedelta(seconds=settings.Q_TIMEOUT_S),
        ).count(),
        "breaker": _breaker_state(),
        "budget": {"limits": budget_limits(), "usage": budget_usage(now)},
        "lag": {name: stage_quantiles(name) for name in STAGES},
        "autoscale": autoscale_hint(now),
    }


def _breaker_state() -> dict:
    breaker = Breaker.objects.filter(name=BREAKER_NAME).first()
    if breaker is None:
        return {"state": Breaker.State.CLOSED, "open_until": None, "reason": ""}
    return {
        "state": breaker.state,
        "open_until": breaker.open_until.isoformat() if breaker.open_until else None,
        "reason": breaker.reason,
        "consecutive_failures": breaker.consecutive_failures,
    }


def _stage_sql(name: str, select: str) -> tuple[str, list]:
    expr, table, column, condition = STAGES[name]
    return (
        f"SELECT {select.format(x=expr)} FROM {table} WHERE {column} >= %s AND {condition}",  # noqa: S608 - constants only
        [timezone.now() - WINDOW],
    )


def stage_histogram(name: str) -> tuple[list[tuple[str, int]], float]:
    """Cumulative bucket counts and the sum of one stage's latency over the window."""
    counts = ", ".join(f"count(*) FILTER (WHERE {{x}} <= {b})" for b in BUCKETS)
    sql, params = _stage_sql(name, f"{counts}, count(*), coalesce(sum({{x}}), 0)")
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        row = cursor.fetchone()
    buckets = [(str(b), row[i]) for i, b in enumerate(BUCKETS)] + [("+Inf", row[len(BUCKETS)])]
    return buckets, float(row[-1])


def stage_quantiles(name: str) -> dict[str, float | None]:
    sql, params = _stage_sql(
        name,
        "percentile_cont(0.5) WITHIN GROUP (ORDER BY {x}), percentile_cont(0.99) WITHIN GROUP (ORDER BY {x}), count(*)",
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        p50, p99, n = cursor.fetchone()
    return {"p50_s": _round(p50), "p99_s": _round(p99), "n": n}


def _round(value) -> float | None:
    return None if value is None else round(float(value), 4)


def autoscale_hint(now) -> dict:
    """How many workers the current backlog and provider latency call for.

    One worker analyses about batch-size reviews per provider latency; enough workers keep up
    with arrivals and drain the backlog within DRAIN_TARGET.
    """
    recent = LlmCall.objects.filter(
        created_at__gte=now - WINDOW, status=LlmCall.Status.OK
    ).aggregate(latency=Avg("latency_ms"), batch=Avg("batch_size"))
    latency_s = max((recent["latency"] or 1000) / 1000, 0.05)
    per_worker = (recent["batch"] or 1) / latency_s  # reviews per second per worker
    arrivals = Review.objects.filter(created_at__gte=now - timedelta(minutes=5)).count() / 300
    backlog = Review.objects.filter(analysis_status=Review.Status.PENDING).count()
    needed = math.ceil((arrivals + backlog / DRAIN_TARGET.total_seconds()) / per_worker)
    return {
        "backlog_reviews": backlog,
        "arrivals_per_s": round(arrivals, 2),
        "per_worker_reviews_per_s": round(per_worker, 2),
        "suggested_workers": max(needed, 1),
        "configured_workers": settings.Q_WORKERS,
    }


def sample_record() -> PipelineSample:
    """One point of the operators' last-hour chart (a django-q2 schedule calls this every minute)."""
    snap_time = timezone.now()
    queue_key = get_broker().list_key
    lag = stage_quantiles("end_to_end")
    PipelineSample.objects.filter(at__lt=snap_time - timedelta(days=1)).delete()
    return PipelineSample.objects.create(
        at=snap_time,
        queue_depth=OrmQ.objects.filter(key=queue_key, lock__lte=snap_time).count(),
        outbox_unpublished=OutboxEvent.objects.filter(
            published_at__isnull=True, parked_reason=""
        ).count(),
        parked=OutboxEvent.objects.filter(published_at__isnull=True)
        .exclude(parked_reason="")
        .count(),
        pending_reviews=Review.objects.filter(analysis_status=Review.Status.PENDING).count(),
        lag_p50_s=lag["p50_s"],
        lag_p99_s=lag["p99_s"],
    )


def heartbeat_checks() -> dict[str, str]:
    now = timezone.now()
    max_age = timedelta(seconds=settings.READY_HEARTBEAT_MAX_AGE_S)
    relay = Heartbeat.objects.filter(name__startswith="relay", beat_at__gte=now - max_age)
    return {
        "relay": "ok" if relay.exists() else "no recent relay heartbeat",
        "worker": worker_check(now),
    }


def worker_check(now=None) -> str:
    """ "ok", or why the workers are not doing their job.

    A cluster can look alive (fresh stats) and still finish nothing, e.g. after a worker was
    killed holding the task queue's lock: a task that waits while no task finishes gives it
    away. A long queue that is moving is not a fault.
    """
    now = now or timezone.now()
    limit = settings.READY_QUEUE_MAX_WAIT_S
    if not Stat.get_all():
        return "no running qcluster"
    waited = oldest_ready_task_age_s(now)
    progress = Heartbeat.objects.filter(
        name__startswith="worker:", beat_at__gte=now - timedelta(seconds=limit)
    )
    if waited > limit and not progress.exists():
        return f"a task has waited {waited:.0f}s and none finished: workers stuck"
    return "ok"


def oldest_ready_task_age_s(now=None) -> float:
    """How long the oldest ready django-q2 task has waited (its lock is its enqueue time, or the
    end of a previous taker's lease)."""
    now = now or timezone.now()
    oldest = OrmQ.objects.filter(key=get_broker().list_key, lock__lte=now).aggregate(m=Min("lock"))[
        "m"
    ]
    return (now - oldest).total_seconds() if oldest else 0.0


class _SnapshotCollector:
    def collect(self):
        snap = snapshot()
        for name, value in snap["outbox"].items():
            unit_free = name.removesuffix("_s")
            yield GaugeMetricFamily(f"reviews_outbox_{unit_free}", f"Outbox: {name}", value=value)
        yield GaugeMetricFamily(
            "reviews_queue_depth", "django-q2 tasks waiting", value=snap["queue"]["depth"]
        )
        yield GaugeMetricFamily(
            "reviews_queue_taken",
            "django-q2 tasks taken by a cluster",
            value=snap["queue"]["taken"],
        )
        yield GaugeMetricFamily(
            "reviews_dead_letters_open", "Open dead letters", value=snap["dead_letters_open"]
        )
        by_status = GaugeMetricFamily(
            "reviews_by_analysis_status", "Reviews by status", labels=["status"]
        )
        for status, n in snap["reviews"].items():
            by_status.add_metric([status], n)
        yield by_status
        calls = GaugeMetricFamily("reviews_llm_calls", "Provider calls", labels=["model", "status"])
        tokens = GaugeMetricFamily(
            "reviews_llm_tokens", "Provider tokens", labels=["model", "kind"]
        )
        cost = GaugeMetricFamily(
            "reviews_llm_cost_usd", "Estimated provider cost", labels=["model"]
        )
        per_model: dict[str, list[float]] = {}
        for c in snap["llm_calls"]:
            calls.add_metric([c["model"], c["status"]], c["n"])
            totals = per_model.setdefault(c["model"], [0, 0, 0.0])
            totals[0] += c["prompt_tokens"] or 0
            totals[1] += c["completion_tokens"] or 0
            totals[2] += c["cost"]
        for model, (prompt, completion, usd) in per_model.items():
            tokens.add_metric([model, "prompt"], prompt)
            tokens.add_metric([model, "completion"], completion)
            cost.add_metric([model], usd)
        yield calls
        yield tokens
        yield cost
        yield GaugeMetricFamily(
            "reviews_llm_calls_in_flight",
            "Provider calls running now (busy workers)",
            value=snap["calls_in_flight"],
        )
        yield GaugeMetricFamily(
            "reviews_qclusters_running", "Running qcluster processes", value=snap["clusters"]
        )
        breaker = GaugeMetricFamily(
            "reviews_breaker_open",
            "1 if the AI provider breaker is in this state",
            labels=["state"],
        )
        for state in Breaker.State.values:
            breaker.add_metric([state], 1 if snap["breaker"]["state"] == state else 0)
        yield breaker
        budget = GaugeMetricFamily(
            "reviews_budget_usage", "LLM budget usage in its rolling window", labels=["budget"]
        )
        limit = GaugeMetricFamily(
            "reviews_budget_limit", "LLM budget limit (absent = unlimited)", labels=["budget"]
        )
        for key, value in snap["budget"]["usage"].items():
            budget.add_metric([key], value)
            if snap["budget"]["limits"][key] is not None:
                limit.add_metric([key], float(snap["budget"]["limits"][key]))
        yield budget
        yield limit
        yield GaugeMetricFamily(
            "reviews_suggested_workers",
            "Workers the backlog and latency call for",
            value=snap["autoscale"]["suggested_workers"],
        )
        for name in STAGES:
            buckets, total = stage_histogram(name)
            yield GaugeHistogramMetricFamily(
                f"reviews_{name}_seconds",
                f"{name.replace('_', ' ')} latency over the last {int(WINDOW.total_seconds() // 60)} minutes",
                buckets=buckets,
                gsum_value=total,
            )


def registry() -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(_SnapshotCollector())
    return reg
