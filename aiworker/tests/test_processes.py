"""Real processes: fake LLM, relay_outbox and qcluster as subprocesses, the API over HTTP.

Crash tests kill real processes with SIGKILL and then check what the ledger says.
"""

import os
import signal
import time
from pathlib import Path

import pytest
from rest_framework.authtoken.models import Token

from aiworker.fake_llm import fake_stats
from aiworker.models import AnalysisJob, DeadLetter, LlmCall
from aiworker.tests.procs import Stack, descendants, http_json, wait_for
from reviews.models import Restaurant, Review
from reviews.services import review_create

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "processes"


@pytest.fixture
def stack(proc_env, request):
    env = {
        **proc_env,
        "Q_WORKERS": "2",
        "LLM_TIMEOUT_S": "3",
        "LLM_BATCH_WAIT_MS": "0",
        "LLM_BACKOFF_BASE_S": "0.2",
        "RELAY_HOUSEKEEPING_S": "1",
        "DEBUG": "true",
    }
    s = Stack(env, ARTIFACTS / request.node.name)
    yield s
    s.stop()


def test_review_posted_over_http_is_analysed_by_real_processes(
    stack, live_server, restaurant, platform_user
):
    url = stack.fake_llm()
    stack.relay()
    stack.qcluster()
    token = Token.objects.create(user=platform_user).key
    status, body = http_json(
        "POST",
        f"{live_server.url}/api/reviews/",
        {
            "restaurant": restaurant.pk,
            "rating": 1,
            "text": "Tinha um cabelo no meu prato e passei mal.",
        },
        token=token,
    )
    assert status == 202 and body["analysis_status"] == "pending"
    owner_token = Token.objects.create(user=restaurant.owner).key

    def analysed():
        code, review = http_json(
            "GET", f"{live_server.url}/api/reviews/{body['id']}/", token=owner_token
        )
        return review if code == 200 and review["analysis_status"] == "done" else None

    review = wait_for(analysed, 30, "the review to be analysed")
    assert review["sentiment"] == "CRITICAL" and "food_safety" in review["tags"]
    assert review["reply_draft"] and review["analysis_model"] == "gpt-4o-mini"
    assert fake_stats(url)["calls"] == 1  # it really went through the openai SDK over HTTP
    assert LlmCall.objects.get().status == "ok"


def test_worker_killed_mid_call_still_ends_done_exactly_once(stack, restaurant):
    url = stack.fake_llm(latency_ms=2500)
    stack.env["DELIVERY_DEADLINE_S"] = "3"
    stack.relay()
    cluster = stack.qcluster()
    review = review_create(
        restaurant_id=restaurant.pk, rating=5, text="Comida ótima, entrega rápida"
    )
    wait_for(lambda: fake_stats(url)["calls"] >= 1, 20, "the provider call to start")
    # SIGKILL every process of the cluster while the worker waits on the provider.
    for pid in descendants(cluster.pid):
        os.kill(pid, signal.SIGKILL)
    stack.kill("qcluster")
    stack.qcluster()
    wait_for(
        lambda: Review.objects.filter(pk=review.pk, analysis_status="done").exists(),
        60,
        "redelivery to finish the review",
    )
    job = AnalysisJob.objects.get(review=review)
    assert job.state == "done"
    assert fake_stats(url)["calls"] <= 2
    assert LlmCall.objects.filter(status="ok").count() == 1
    assert not DeadLetter.objects.exists()


def test_eight_slow_tasks_with_two_workers_none_runs_twice(stack, owner):
    url = stack.fake_llm(latency_ms=2000)
    stack.relay()
    stack.qcluster()
    # Eight restaurants: no batching, so eight slow tasks compete for two workers.
    reviews = [
        review_create(
            restaurant_id=Restaurant.objects.create(name=f"R{i}", owner=owner).pk,
            rating=4,
            text=f"Bom #{i}",
        )
        for i in range(8)
    ]
    wait_for(
        lambda: Review.objects.filter(analysis_status="done").count() == 8,
        60,
        "eight reviews analysed",
    )
    assert fake_stats(url)["calls"] == 8
    assert list(AnalysisJob.objects.values_list("attempts", flat=True)) == [1] * 8
    assert sorted(r for c in LlmCall.objects.all() for r in c.review_ids) == sorted(
        r.pk for r in reviews
    )


def _settled_descendants(pid: int) -> list[int] | None:
    """The process's descendants once the same set has stood for a second (None before)."""
    before = set(descendants(pid))
    time.sleep(1.0)
    after = set(descendants(pid))
    return sorted(after) if after and after == before else None


def test_watchdog_restarts_a_frozen_cluster_and_the_review_still_ends_done(stack, restaurant):
    stack.fake_llm()
    stack.env.update(READY_QUEUE_MAX_WAIT_S="3")
    stack.relay()
    supervisor = stack.start("run_worker", "run_worker", "--check-every", "1")
    # Wait for the supervised cluster, then freeze it as a worker killed holding the queue
    # lock would (every cluster process stopped; the supervisor itself keeps running).
    # Freeze only once the cluster has forked all its processes: on a busy machine a worker
    # forked after the snapshot would run the task and no restart would be needed.
    frozen = wait_for(lambda: _settled_descendants(supervisor.pid), 40, "qcluster to start")
    for pid in frozen:
        os.kill(pid, signal.SIGSTOP)
    review = review_create(restaurant_id=restaurant.pk, rating=5, text="Perfeito!")
    wait_for(
        lambda: Review.objects.filter(pk=review.pk, analysis_status="done").exists(),
        60,
        "the restarted cluster to analyse the review",
    )
    assert "restarting qcluster" in stack.log("run_worker")
    assert frozen and not any(
        os.path.exists(f"/proc/{pid}") and _state(pid) != "Z" for pid in frozen
    )
    stack.kill("run_worker", signal.SIGTERM)
    assert supervisor.returncode == 0


def _state(pid: int) -> str:
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"
