"""One snapshot of the whole pipeline, read from the database: for `pipeline_status`,
`/metrics` and `/readyz`, so every process reports the same numbers."""

from datetime import timedelta

from django.db.models import Count, Min, Sum
from django.utils import timezone
from django_q.brokers import get_broker
from django_q.models import OrmQ
from django_q.status import Stat
from prometheus_client.core import CollectorRegistry, GaugeMetricFamily

from aiworker.models import AnalysisJob, DeadLetter, LlmCall
from outbox.models import Heartbeat, OutboxEvent
from reviews.models import Review

RELAY_HEARTBEAT_MAX_AGE = timedelta(seconds=30)


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
    }


def heartbeat_checks() -> dict[str, str]:
    now = timezone.now()
    relay = Heartbeat.objects.filter(
        name__startswith="relay", beat_at__gte=now - RELAY_HEARTBEAT_MAX_AGE
    )
    return {
        "relay": "ok" if relay.exists() else "no recent relay heartbeat",
        "worker": "ok" if Stat.get_all() else "no running qcluster",
    }


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


def registry() -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(_SnapshotCollector())
    return reg
