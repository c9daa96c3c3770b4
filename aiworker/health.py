"""Liveness, readiness and Prometheus metrics, read from the database so every process agrees."""

import sys

from django.conf import settings
from django.db import connection
from django.db.utils import InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils.crypto import constant_time_compare
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from aiworker import pipeline

LOOPBACK = {"127.0.0.1", "::1"}


@require_GET
def healthz(request: HttpRequest) -> HttpResponse:
    return JsonResponse({"status": "ok"})


@require_GET
def readyz(request: HttpRequest) -> HttpResponse:
    checks = {}
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        checks["database"] = "ok"
        checks.update(pipeline.heartbeat_checks())
    except Exception as exc:  # any failure here means "not ready"; the reason is shown
        checks["database"] = f"unreachable: {exc.__class__.__name__}"
    ready = all(value == "ok" for value in checks.values())
    return JsonResponse({"ready": ready, "checks": checks}, status=200 if ready else 503)


@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    # Pipeline numbers are not public: a bearer token when METRICS_TOKEN is set, otherwise
    # only a scraper on this host or a staff session.
    token = settings.METRICS_TOKEN
    if token:
        allowed = constant_time_compare(request.headers.get("Authorization", ""), f"Bearer {token}")
    else:
        allowed = request.META.get("REMOTE_ADDR") in LOOPBACK or request.user.is_staff
    if not allowed:
        return HttpResponse(
            "metrics need a token or a local scraper\n", status=403, content_type="text/plain"
        )
    return HttpResponse(generate_latest(pipeline.registry()), content_type=CONTENT_TYPE_LATEST)


def server_error(request: HttpRequest) -> HttpResponse:
    """handler500: a database outage is a 503 with a clear body, never a stack trace.

    Nothing was committed when this runs, so the client may safely retry.
    """
    exc = sys.exc_info()[1]
    if isinstance(exc, OperationalError | InterfaceError):
        status, message = 503, "Service temporarily unavailable: nothing was saved, please retry."
    else:
        status, message = 500, "Internal server error."
    if request.path.startswith("/api/") or not request.accepts("text/html"):
        response = JsonResponse({"detail": message}, status=status)
    else:
        # Plain HTML without templates or the database: this must work while they are down.
        response = HttpResponse(
            f"<!doctype html><title>{status}</title><h1>{message}</h1>", status=status
        )
    if status == 503:
        response["Retry-After"] = "5"
    return response
