"""The fake LLM server, exercised through the real `openai` SDK and the project's provider.

These tests prove two things at once: the fake is a faithful enough OpenAI stand-in for every
other test that relies on it, and OpenAIProvider maps each failure to the error class the
worker handles (DESIGN.md §6). No database is needed.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from aiworker.analysis import (
    AnalysisRejected,
    BatchAnalysis,
    ReviewInput,
    parse_batch,
    split_batch,
    system_prompt,
    user_prompt,
)
from aiworker.fake_llm import (
    XSS_DRAFT,
    FakeLLMHandle,
    fake_control,
    fake_reset,
    fake_stats,
    review_digest,
    start_in_thread,
)
from aiworker.providers import PermanentError, ProviderUnavailable, RateLimited, TransientError
from aiworker.providers.local import analyze_text, detect_language
from aiworker.providers.openai import OpenAIProvider

ROOT = Path(__file__).resolve().parents[2]

REVIEWS = [
    ReviewInput(ref="r1", rating=5, text="Great burger, fast delivery, still hot. <b>Loved it</b>"),
    ReviewInput(
        ref="r2", rating=2, text="A pizza chegou fria e demorou muito, péssimo atendimento."
    ),
    ReviewInput(ref="r3", rating=1, text="Achei um cabelo na comida, que nojo."),
]
REFS = [r.ref for r in REVIEWS]


@pytest.fixture(scope="module")
def server() -> Iterator[FakeLLMHandle]:
    handle = start_in_thread(log=False)
    yield handle
    handle.stop()


@pytest.fixture
def fake(server: FakeLLMHandle) -> FakeLLMHandle:
    # One server for the module; every test starts with no faults and zero counters.
    server.control(clear=True)
    server.reset()
    return server


def make_provider(fake: FakeLLMHandle, *, timeout: float = 2) -> OpenAIProvider:
    return OpenAIProvider(
        api_key="test-key", base_url=fake.url, model="gpt-4o-mini", timeout=timeout, max_retries=0
    )


def sdk_client(fake: FakeLLMHandle) -> openai.OpenAI:
    return openai.OpenAI(base_url=fake.url, api_key="test", max_retries=0, timeout=2)


def messages(tone: str = "default") -> list[dict[str, str]]:
    return [
        {"role": "system", "content": system_prompt(tone=tone)},
        {"role": "user", "content": user_prompt(REVIEWS)},
    ]


# --------------------------------------------------------------------------- happy path


def test_real_sdk_parses_a_schema_valid_answer(fake: FakeLLMHandle) -> None:
    raw = sdk_client(fake).chat.completions.with_raw_response.parse(
        model="gpt-4o-mini", messages=messages(), response_format=BatchAnalysis
    )
    completion = raw.parse()

    assert raw.request_id and raw.request_id.startswith("req_")
    assert completion.id.startswith("chatcmpl-")
    assert completion.model == "gpt-4o-mini"
    choice = completion.choices[0]
    assert choice.finish_reason == "stop"
    assert choice.message.parsed is not None
    assert [item.id for item in choice.message.parsed.items] == REFS
    usage = completion.usage
    assert usage is not None and usage.prompt_tokens > 0 and usage.completion_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert usage.prompt_tokens_details and usage.prompt_tokens_details.cached_tokens == 0


def test_provider_answer_matches_ids_and_languages(fake: FakeLLMHandle) -> None:
    answer = make_provider(fake).complete(REVIEWS, tone="formal")

    assert answer.model == "gpt-4o-mini"
    assert answer.request_id.startswith("req_")
    assert answer.prompt_tokens > 0 and answer.completion_tokens > 0
    results, problems = split_batch(parse_batch(answer.raw), REFS)
    assert problems == {}
    assert set(results) == set(REFS)
    assert results["r1"].language == "en"
    for ref in ("r2", "r3"):
        assert results[ref].language == "pt"
        assert detect_language(results[ref].reply_draft) == "pt"
    assert results["r3"].sentiment == "CRITICAL"
    # The tone travels through the system prompt into the offline analyzer's templates; the
    # analyzer sees the text as the prompt carries it.
    expected = analyze_text(text=REVIEWS[1].text, rating=2, tone="formal")
    assert results["r2"].reply_draft == expected.reply_draft


def test_models_endpoint_lists_models(fake: FakeLLMHandle) -> None:
    ids = {model.id for model in sdk_client(fake).models.list()}
    assert "gpt-4o-mini" in ids


# --------------------------------------------------------------------------- HTTP failures


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (500, TransientError),
        (502, TransientError),
        (503, TransientError),
        (400, PermanentError),
        (422, PermanentError),
        (401, ProviderUnavailable),
        (403, ProviderUnavailable),
    ],
)
def test_status_maps_to_provider_error(fake: FakeLLMHandle, status: int, error: type) -> None:
    fake.control(status=status)
    with pytest.raises(error) as excinfo:
        make_provider(fake).complete(REVIEWS)
    assert type(excinfo.value) is error
    assert excinfo.value.status == status
    assert '"error"' in excinfo.value.raw  # the OpenAI-style body is kept for the dead letter
    assert fake.stats()["by_status"] == {str(status): 1}


def test_429_carries_retry_after(fake: FakeLLMHandle) -> None:
    fake.control(status=429, retry_after_s=2)
    with pytest.raises(RateLimited) as excinfo:
        make_provider(fake).complete(REVIEWS)
    assert excinfo.value.retry_after == 2
    assert "rate_limit_exceeded" in excinfo.value.raw


def test_insufficient_quota_is_unavailable_not_rate_limited(fake: FakeLLMHandle) -> None:
    fake.control(status=429, quota_exhausted=True)
    with pytest.raises(ProviderUnavailable) as excinfo:
        make_provider(fake).complete(REVIEWS)
    assert excinfo.value.status == 429
    assert "insufficient_quota" in excinfo.value.raw


def test_hang_past_the_client_timeout_is_transient(fake: FakeLLMHandle) -> None:
    fake.control(hang_s=1)
    started = time.monotonic()
    with pytest.raises(TransientError, match="timed out"):
        make_provider(fake, timeout=0.4).complete(REVIEWS)
    assert time.monotonic() - started < 2


def test_error_rate_one_always_fails(fake: FakeLLMHandle) -> None:
    fake.control(error_rate=1.0)
    provider = make_provider(fake)
    for _ in range(3):
        with pytest.raises(TransientError):
            provider.complete(REVIEWS[:1])
    assert fake.stats()["by_status"] == {"500": 3}


def test_fail_first_n_then_heals(fake: FakeLLMHandle) -> None:
    fake.control(fail_first_n=2, status=503)
    provider = make_provider(fake)
    for _ in range(2):
        with pytest.raises(TransientError):
            provider.complete(REVIEWS[:1])
    provider.complete(REVIEWS[:1])
    provider.complete(REVIEWS[:1])
    assert fake.stats()["by_status"] == {"503": 2, "200": 2}
    config = fake.control()
    assert config["fail_first_n"] == 0 and config["status"] is None


def test_latency_is_added(fake: FakeLLMHandle) -> None:
    fake.control(latency_ms=150, jitter_ms=50)
    started = time.monotonic()
    make_provider(fake).complete(REVIEWS[:1])
    assert 0.15 <= time.monotonic() - started < 1.5


# --------------------------------------------------------------------------- bad output


def test_truncated_json_is_permanent_after_one_repair_try(fake: FakeLLMHandle) -> None:
    fake.control(mode="truncate")
    with pytest.raises(PermanentError, match="schema"):
        make_provider(fake).complete(REVIEWS)
    stats = fake.stats()
    assert stats["calls"] == 2
    repair = stats["last_request"]["messages"]
    assert [m["role"] for m in repair] == ["system", "user", "assistant", "user"]
    assert "invalid" in repair[3]["content"]


def test_repair_try_repeats_the_models_answer_not_the_http_envelope(fake: FakeLLMHandle) -> None:
    fake.control(mode="truncate")
    with pytest.raises(PermanentError):
        make_provider(fake).complete(REVIEWS)
    assistant = fake.stats()["last_request"]["messages"][2]["content"]
    assert assistant.startswith('{"items"')


def test_length_finish_reason_is_permanent_without_repair(fake: FakeLLMHandle) -> None:
    fake.control(mode="length")
    with pytest.raises(PermanentError, match="length"):
        make_provider(fake).complete(REVIEWS)
    assert fake.stats()["calls"] == 1


def test_refusal_is_permanent(fake: FakeLLMHandle) -> None:
    fake.control(mode="refusal")
    with pytest.raises(PermanentError, match="refused") as excinfo:
        make_provider(fake).complete(REVIEWS)
    assert "can't help" in excinfo.value.raw
    assert fake.stats()["calls"] == 1


def test_dropped_item_is_reported_missing(fake: FakeLLMHandle) -> None:
    fake.control(mode="drop_last")
    answer = make_provider(fake).complete(REVIEWS)
    results, problems = split_batch(parse_batch(answer.raw), REFS)
    assert set(results) == {"r1", "r2"}
    assert problems == {"r3": "missing from answer"}


def test_renamed_ids_are_never_applied(fake: FakeLLMHandle) -> None:
    fake.control(mode="wrong_ids")
    answer = make_provider(fake).complete(REVIEWS)
    results, problems = split_batch(parse_batch(answer.raw), REFS)
    assert results == {}
    assert problems == dict.fromkeys(REFS, "missing from answer")


def test_unknown_tag_fails_the_schema(fake: FakeLLMHandle) -> None:
    # The tag vocabulary is part of the schema (a Literal), so the SDK's parse already rejects
    # the answer: the provider tries one repair, then gives up on the whole batch.
    fake.control(mode="unknown_tag")
    with pytest.raises(PermanentError, match="schema"):
        make_provider(fake).complete(REVIEWS)
    assert fake.stats()["calls"] == 2
    # Without the SDK's parse, the project's own validation rejects the same answer.
    completion = sdk_client(fake).chat.completions.create(model="m", messages=messages())
    content = completion.choices[0].message.content or ""
    assert json.loads(content)["items"][0]["tags"][-1] == "not_a_tag"
    with pytest.raises(AnalysisRejected):
        parse_batch(content)


def test_xss_draft_is_schema_valid_data(fake: FakeLLMHandle) -> None:
    # Markup in a draft is not the validator's business: templates autoescape it (invariant 8).
    fake.control(mode="xss")
    answer = make_provider(fake).complete(REVIEWS)
    results, problems = split_batch(parse_batch(answer.raw), REFS)
    assert problems == {}
    assert {a.reply_draft for a in results.values()} == {XSS_DRAFT}


# --------------------------------------------------------------------------- stats and control


def test_stats_count_calls_and_reviews(fake: FakeLLMHandle) -> None:
    provider = make_provider(fake)
    provider.complete(REVIEWS)
    provider.complete(REVIEWS[:1])

    stats = fake_stats(fake.url)
    assert stats["calls"] == 2
    assert stats["by_status"] == {"200": 2}
    assert stats["reviews_seen"] == {
        review_digest(REVIEWS[0].text): 2,
        review_digest(REVIEWS[1].text): 1,
        review_digest(REVIEWS[2].text): 1,
    }
    assert stats["last_request_at"] <= time.time()

    assert fake_reset(fake.url)["calls"] == 0
    assert fake.stats()["reviews_seen"] == {}


def test_control_over_http_validates_and_reports_config(fake: FakeLLMHandle) -> None:
    config = fake_control(fake.url.removesuffix("/v1"), status=503, latency_ms=5)
    assert config["status"] == 503 and config["latency_ms"] == 5
    with pytest.raises(TransientError):
        make_provider(fake).complete(REVIEWS[:1])
    for bad in ({"error_rate": 1.5}, {"mode": "nope"}, {"status": 418}, {"colour": "red"}):
        with pytest.raises(ValueError, match="400"):
            fake_control(fake.url, **bad)
        with pytest.raises(ValueError):
            fake.control(**bad)
    assert fake_control(fake.url, clear=True)["status"] is None


def test_malformed_request_is_a_400(fake: FakeLLMHandle) -> None:
    request = urllib.request.Request(
        fake.url + "/chat/completions", data=b"{not json", method="POST"
    )
    with pytest.raises(urllib.error.HTTPError) as excinfo:
        urllib.request.urlopen(request, timeout=2)
    assert excinfo.value.code == 400
    assert "error" in json.loads(excinfo.value.read())


# --------------------------------------------------------------------------- the command


def command_env(*, debug: str) -> dict[str, str]:
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "settings.test", "DEBUG": debug}
    env.pop("OPENAI_API_KEY", None)
    return env


def test_command_refuses_to_start_without_debug() -> None:
    result = subprocess.run(
        [sys.executable, "manage.py", "fake_llm", "--port", "0"],
        cwd=ROOT,
        env=command_env(debug="false"),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode != 0
    assert "DEBUG is False" in result.stderr and "--force" in result.stderr


def test_command_validates_options() -> None:
    result = subprocess.run(
        [sys.executable, "manage.py", "fake_llm", "--port", "0", "--error-rate", "1.5"],
        cwd=ROOT,
        env=command_env(debug="true"),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode != 0
    assert "--error-rate must be between 0 and 1" in result.stderr


def read_line(proc: subprocess.Popen[str], timeout: float) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, "the command printed nothing in time"
    return proc.stdout.readline()


def test_command_starts_with_force_and_stops_on_sigterm() -> None:
    proc = subprocess.Popen(
        [sys.executable, "manage.py", "fake_llm", "--port", "0", "--force", "--status", "503"],
        cwd=ROOT,
        env=command_env(debug="false"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = read_line(proc, timeout=20)
        base_url = line.strip().rsplit("OPENAI_BASE_URL=", 1)[1]
        assert base_url.startswith("http://127.0.0.1:") and base_url.endswith("/v1")
        with urllib.request.urlopen(base_url + "/models", timeout=5) as response:
            assert "gpt-4o-mini" in {m["id"] for m in json.load(response)["data"]}
        assert fake_control(base_url)["status"] == 503  # options reached the server

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
