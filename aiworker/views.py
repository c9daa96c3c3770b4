"""The operators' dashboard: the pipeline at a glance, for staff only."""

from django.contrib.admin.views.decorators import staff_member_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.http import require_GET

from aiworker import pipeline
from aiworker.models import PipelineSample

CHART_W, CHART_H = 600, 120


def _polyline(points: list[tuple[float, float]], x0: float, span: float) -> tuple[str, float]:
    """SVG points for (time, value) pairs over the last hour; returns (points, max value)."""
    top = max([v for _, v in points] + [1.0])
    coords = " ".join(
        f"{(t - x0) / span * CHART_W:.1f},{CHART_H - v / top * (CHART_H - 10):.1f}"
        for t, v in points
    )
    return coords, top


@staff_member_required
@require_GET
def dashboard(request: HttpRequest) -> HttpResponse:
    now = timezone.now()
    start = now - pipeline.CHART_SPAN
    samples = list(PipelineSample.objects.filter(at__gte=start).order_by("at"))
    x0, span = start.timestamp(), pipeline.CHART_SPAN.total_seconds()
    charts = []
    for title, attr, unit in (
        ("Queue depth", "queue_depth", "tasks"),
        ("Pending reviews", "pending_reviews", "reviews"),
        ("End-to-end lag p99", "lag_p99_s", "s"),
    ):
        points = [(s.at.timestamp(), getattr(s, attr) or 0.0) for s in samples]
        coords, top = _polyline(points, x0, span)
        charts.append(
            {"title": title, "points": coords, "max": top, "unit": unit, "n": len(points)}
        )
    return render(
        request,
        "aiworker/dashboard.html",
        {"snap": pipeline.snapshot(), "charts": charts, "width": CHART_W, "height": CHART_H},
    )
