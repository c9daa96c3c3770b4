"""Readiness, metrics and the operators' dashboard, checked against the database."""

import os
import signal
import time

import pytest
from django.db.utils import OperationalError
from django.test import RequestFactory
from prometheus_client.parser import text_string_to_metric_families

from aiworker.health import server_error
from aiworker.models import DeadLetter, LlmCall
from aiworker.pipeline import sample_record
from aiworker.tests.conftest import drain
from aiworker.tests.procs import Stack, wait_for
from reviews.models import Review
from reviews.services import review_create


def scrape(client) -> dict[str, dict]:
    response = client.get("/metrics", REMOTE_ADDR="127.0.0.1")
    assert response.status_code == 200
    families = {f.name: f for f in text_string_to_metric_families(response.content.decode())}
    return {
        name: {tuple(sorted(s.labels.items())): s.value for s in fam.samples}
        for name, fam in families.items()
    }, families


@pytest.mark.django_db(transaction=True)
def test_metrics_parse_and_match_the_database_after_a_scripted_run(
    client, llm, restaurant, settings
):
    settings.LLM_MAX_ATTEMPTS = 1
    for i in range(5):
        review_create(restaurant_id=restaurant.pk, rating=5, text=f"Ótimo #{i}")
    drain()
    llm.control(status=500)
    bad = review_create(restaurant_id=restaurant.pk, rating=2, text="Demorou demais")
    drain()
    values, families = scrape(client)
    assert values["reviews_by_analysis_status"][(("status", "done"),)] == 5
    assert values["reviews_by_analysis_status"][(("status", "failed"),)] == 1
    assert values["reviews_dead_letters_open"][()] == DeadLetter.objects.count() == 1
    assert DeadLetter.objects.get().review_id == bad.pk
    calls = values["reviews_llm_calls"]
    assert (
        calls[(("model", "gpt-4o-mini"), ("status", "ok"))]
        == LlmCall.objects.filter(status="ok").count()
    )
    assert calls[(("model", "gpt-4o-mini"), ("status", "error"))] == 1
    tokens = sum(c.prompt_tokens for c in LlmCall.objects.all())
    assert values["reviews_llm_tokens"][(("kind", "prompt"), ("model", "gpt-4o-mini"))] == tokens
    assert values["reviews_breaker_open"][(("state", "closed"),)] == 1
    assert values["reviews_outbox_unpublished"][()] == 0
    e2e = families["reviews_end_to_end_seconds"]
    assert e2e.type == "histogram"  # a gauge histogram is written as a histogram in text format
    inf = next(s for s in e2e.samples if s.name.endswith("_bucket") and s.labels["le"] == "+Inf")
    assert inf.value == Review.objects.filter(analysis_status="done").count()


@pytest.mark.django_db
def test_metrics_are_not_public(client, settings, staff):
    assert client.get("/metrics", REMOTE_ADDR="203.0.113.9").status_code == 403
    settings.METRICS_TOKEN = "s3cret-token"
    assert client.get("/metrics", REMOTE_ADDR="127.0.0.1").status_code == 403
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer s3cret-token").status_code == 200
    settings.METRICS_TOKEN = ""
    client.force_login(staff)
    assert client.get("/metrics", REMOTE_ADDR="203.0.113.9").status_code == 200


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_readyz_follows_relay_and_worker_heartbeats(
    client, proc_env, tmp_path, settings, restaurant
):
    settings.READY_HEARTBEAT_MAX_AGE_S = 3
    assert client.get("/healthz").status_code == 200
    response = client.get("/readyz")
    assert response.status_code == 503 and response.json()["checks"]["relay"] != "ok"
    stack = Stack({**proc_env, "READY_HEARTBEAT_MAX_AGE_S": "3", "Q_WORKERS": "1"}, tmp_path)
    try:
        stack.relay()
        stack.qcluster()
        ready = wait_for(
            lambda: client.get("/readyz").status_code == 200, 30, "readyz to turn ready"
        )
        assert ready
        # A frozen cluster: it finishes nothing while a queued task waits.
        settings.READY_QUEUE_MAX_WAIT_S = 1
        cluster = stack.procs["qcluster"]
        os.killpg(cluster.pid, signal.SIGSTOP)
        review_create(restaurant_id=restaurant.pk, rating=4, text="Bom")
        wait_for(
            lambda: client.get("/readyz").json()["checks"]["worker"] != "ok",
            20,
            "a stuck worker to show",
        )
        assert client.get("/readyz").status_code == 503
        os.killpg(cluster.pid, signal.SIGCONT)
        wait_for(lambda: client.get("/readyz").status_code == 200, 30, "the cluster to catch up")

        stack.kill("relay", signal.SIGTERM)
        time.sleep(3.5)
        response = client.get("/readyz")
        assert response.status_code == 503
        assert response.json()["checks"] == {
            "database": "ok",
            "relay": "no recent relay heartbeat",
            "worker": "ok",
        }
    finally:
        stack.stop()


def test_database_outage_is_a_503_with_a_clear_body_not_a_stack_trace():
    request = RequestFactory().post("/api/reviews/")
    try:
        raise OperationalError("connection refused: password=hunter2")
    except OperationalError:
        response = server_error(request)
    assert response.status_code == 503 and response["Retry-After"] == "5"
    assert b"nothing was saved" in response.content and b"hunter2" not in response.content
    try:
        raise ValueError("boom")
    except ValueError:
        response = server_error(RequestFactory().get("/", HTTP_ACCEPT="text/html"))
    assert response.status_code == 500 and b"boom" not in response.content


@pytest.mark.django_db
def test_dashboard_is_staff_only_and_draws_the_last_hour(client, owner, staff, restaurant):
    review_create(restaurant_id=restaurant.pk, rating=4, text="Bom")
    sample_record()
    sample_record()
    client.force_login(owner)
    assert client.get("/ops/").status_code == 302  # to the admin login
    client.force_login(staff)
    response = client.get("/ops/")
    assert response.status_code == 200
    body = response.content.decode()
    assert body.count("<polyline") == 3 and "suggested" in body
    assert "2 points" in body
