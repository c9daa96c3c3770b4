"""Worker test kit: the fake LLM over real HTTP, and a drain loop that runs the real tasks.

`drain()` does what relay_outbox and qcluster do, in this process and in order: hand off
events (the real relay code), then run each queued task (the real task functions). Tests
where processes, crashes or prefetching matter start real `qcluster` processes instead.
"""

import time

import pytest
from django.utils import timezone
from django.utils.module_loading import import_string
from django_q.models import OrmQ
from django_q.signing import SignedPackage

from aiworker.fake_llm import start_in_thread
from aiworker.providers import get_provider
from outbox import relay
from outbox.models import OutboxEvent


@pytest.fixture
def fake():
    handle = start_in_thread(log=False)
    yield handle
    handle.stop()


@pytest.fixture
def llm(fake, settings):
    """Route the worker's `openai` provider to the fake server."""
    settings.ANALYZER = "openai"
    settings.OPENAI_BASE_URL = fake.url
    settings.OPENAI_API_KEY = "test-key"
    settings.LLM_TIMEOUT_S = 2.0
    settings.LLM_BATCH_WAIT_MS = 0
    settings.LLM_BACKOFF_BASE_S = 0.1
    settings.LLM_BACKOFF_MAX_S = 0.5
    get_provider.cache_clear()
    yield fake
    get_provider.cache_clear()


def run_queued() -> list[str]:
    outcomes = []
    for row in list(OrmQ.objects.order_by("id")):
        OrmQ.objects.filter(pk=row.pk).delete()
        task = SignedPackage.loads(row.payload)
        outcomes.append(import_string(task["func"])(*task["args"], **task["kwargs"]))
    return outcomes


def drain(*, timeout: float = 30.0, until=None) -> list[str]:
    """Relay and run tasks until no event is left unfinished (or `until()` is true)."""
    outcomes: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        while relay.relay_once(batch_size=500).events:
            pass
        outcomes += run_queued()
        if until is not None and until():
            return outcomes
        pending = OutboxEvent.objects.filter(finished_at__isnull=True)
        if until is None and not pending.exists():
            return outcomes
        # Waiting for a retry/backoff time to come.
        if not pending.filter(available_at__lte=timezone.now()).exists():
            time.sleep(0.05)
    raise AssertionError(f"not drained in {timeout}s; outcomes so far: {outcomes}")
