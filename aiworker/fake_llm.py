"""A fake OpenAI-compatible LLM server for development, tests, demos and benchmarks.

It speaks just enough of the Chat Completions API for the real `openai` SDK's
`chat.completions.parse(response_format=BatchAnalysis)` to accept its answers, fills them with
the offline analyzer (aiworker.providers.local), and injects the faults the worker must
survive: latency, error rates, fixed statuses (429 with Retry-After, quota, 5xx, 4xx), hangs
past the client timeout, truncated or schema-breaking output and refusals. Faults are set at
start and changed at run time through `POST /_control`, so a test never restarts the server;
`GET /_stats` counts the calls it received, per review, so tests can prove nothing was paid
for twice.

Standard library only (http.server, urllib); no Django: it must run next to anything.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, fields, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib import error as urlerror
from urllib import request as urlrequest
from urllib.parse import urlsplit

from aiworker.analysis import ReviewInput, user_prompt

MODES = ("ok", "truncate", "length", "drop_last", "unknown_tag", "wrong_ids", "xss", "refusal")
STATUSES = (400, 401, 403, 404, 422, 429, 500, 502, 503)
MODELS = ("gpt-4o-mini", "gpt-4o", "gpt-4.1-mini", "fake-llm")
XSS_DRAFT = '<script>alert(1)</script><img src=x onerror=alert(1)><a hx-get="/admin/">x</a>'
REFUSAL = "I'm sorry, but I can't help with that request."

# The shape aiworker.analysis.user_prompt writes; the text never contains "<" (user_prompt
# folds it to a look-alike), so a review cannot fake its own closing tag.
REVIEW_RE = re.compile(r'<review id="([^"]*)" rating="(-?\d+)">\n(.*?)\n</review>', re.DOTALL)
TONE_RE = re.compile(r"^Tone of the reply: (.+?)\.$", re.MULTILINE)

# OpenAI's error bodies: (message, type, code).
ERRORS: dict[int, tuple[str, str, str | None]] = {
    400: ("Invalid request (injected by fake_llm).", "invalid_request_error", None),
    401: (
        "Incorrect API key provided (injected by fake_llm).",
        "invalid_request_error",
        "invalid_api_key",
    ),
    403: (
        "You are not allowed to sample from this model (injected by fake_llm).",
        "invalid_request_error",
        "permission_denied",
    ),
    404: (
        "The model does not exist (injected by fake_llm).",
        "invalid_request_error",
        "model_not_found",
    ),
    422: ("Unprocessable request (injected by fake_llm).", "invalid_request_error", None),
    429: (
        "Rate limit reached for requests (injected by fake_llm).",
        "requests",
        "rate_limit_exceeded",
    ),
    500: (
        "The server had an error while processing your request (injected by fake_llm).",
        "server_error",
        None,
    ),
    502: ("Bad gateway (injected by fake_llm).", "server_error", None),
    503: (
        "The engine is currently overloaded, please try again later (injected by fake_llm).",
        "server_error",
        None,
    ),
}
QUOTA_ERROR = (
    "You exceeded your current quota, please check your plan and billing details "
    "(injected by fake_llm).",
    "insufficient_quota",
    "insufficient_quota",
)


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class Faults:
    """What the server does wrong. `status` applies to every call unless `fail_first_n` is set,
    in which case it applies to the next N calls only (500 if unset) and is then cleared."""

    latency_ms: float = 0
    jitter_ms: float = 0
    error_rate: float = 0.0
    status: int | None = None
    retry_after_s: float = 1
    quota_exhausted: bool = False
    hang_s: float = 0
    mode: str = "ok"
    fail_first_n: int = 0
    seed: int | None = None


FAULT_NAMES = tuple(f.name for f in fields(Faults))


def _number(name: str, value: Any, *, low: float = 0, high: float | None = None) -> float:
    # bool is an int in Python; "true" as a latency is a caller's mistake, not 1 ms.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value) or value < low or (high is not None and value > high):
        bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise ValueError(f"{name} must be {bounds}, got {value!r}")
    return value


def _integer(name: str, value: Any, *, low: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < low:
        raise ValueError(f"{name} must be at least {low}, got {value!r}")
    return value


def check_faults(changes: dict[str, Any]) -> dict[str, Any]:
    """Validated fault changes; raises ValueError with a one-line message."""
    unknown = sorted(set(changes) - set(FAULT_NAMES))
    if unknown:
        raise ValueError(
            f"unknown fault field(s): {', '.join(unknown)}; known: {', '.join(FAULT_NAMES)}"
        )
    checked: dict[str, Any] = {}
    for name, value in changes.items():
        if name in ("latency_ms", "jitter_ms", "retry_after_s", "hang_s"):
            checked[name] = _number(name, value)
        elif name == "error_rate":
            checked[name] = _number(name, value, high=1)
        elif name == "fail_first_n":
            checked[name] = _integer(name, value)
        elif name == "status":
            if value is not None and (isinstance(value, bool) or value not in STATUSES):
                raise ValueError(
                    f"status must be one of {', '.join(map(str, STATUSES))} or null, got {value!r}"
                )
            checked[name] = value
        elif name == "mode":
            if value not in MODES:
                raise ValueError(f"mode must be one of {', '.join(MODES)}, got {value!r}")
            checked[name] = value
        elif name == "quota_exhausted":
            if not isinstance(value, bool):
                raise ValueError(f"quota_exhausted must be true or false, got {value!r}")
            checked[name] = value
        elif name == "seed":
            checked[name] = None if value is None else _integer(name, value, low=-(2**63))
    return checked


# --------------------------------------------------------------------------- shared state


def _sha1(text: str) -> str:
    return hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest()


def review_digest(text: str) -> str:
    """The key of a review in `/_stats` `reviews_seen`, computed from its original text.

    The server only sees the text as aiworker.analysis.user_prompt wrote it (contact data
    redacted, angle brackets folded), so the same transformation is applied here by calling
    user_prompt itself: both sides agree by construction.
    """
    match = REVIEW_RE.search(user_prompt([ReviewInput(ref="r", rating=0, text=text)]))
    assert match is not None  # user_prompt always writes one block
    return _sha1(match.group(3))


class FakeState:
    """Fault configuration and counters, shared by the handler threads under one lock."""

    def __init__(self, faults: dict[str, Any]) -> None:
        self.lock = threading.Lock()
        self.stopping = threading.Event()  # interrupts hangs so stop() is prompt
        self.faults = Faults()
        self.rng = random.Random()  # noqa: S311 - fault injection, not cryptography
        self.reset()
        self.configure(faults)

    def configure(self, changes: dict[str, Any], *, clear: bool = False) -> dict[str, Any]:
        checked = check_faults(changes)
        with self.lock:
            self.faults = replace(Faults() if clear else self.faults, **checked)
            if checked.get("seed") is not None:
                self.rng.seed(checked["seed"])
            return asdict(self.faults)

    def config(self) -> dict[str, Any]:
        with self.lock:
            return asdict(self.faults)

    def reset(self) -> dict[str, Any]:
        with self.lock:
            self.calls = 0
            self.by_status: Counter[str] = Counter()
            self.reviews_seen: Counter[str] = Counter()
            self.last_request_at: float | None = None
            self.last_request: dict[str, Any] | None = None
        return self.stats()

    def stats(self) -> dict[str, Any]:
        with self.lock:
            return {
                "calls": self.calls,
                "by_status": dict(self.by_status),
                "reviews_seen": dict(self.reviews_seen),
                "last_request_at": self.last_request_at,
                "last_request": self.last_request,
            }

    def begin_call(
        self, *, model: str, messages: list[Any], texts: list[str]
    ) -> tuple[Faults, int | None]:
        """Count one chat completion call; returns the faults to apply and a status to fail with."""
        with self.lock:
            self.calls += 1
            self.reviews_seen.update({_sha1(text) for text in texts})
            self.last_request_at = time.time()
            self.last_request = {"model": model, "messages": messages}
            faults = self.faults
            status: int | None = None
            if faults.fail_first_n > 0:
                status = faults.status or 500
                left = faults.fail_first_n - 1
                # Healing means the status goes too, else every later call would still fail.
                self.faults = replace(
                    faults, fail_first_n=left, status=faults.status if left else None
                )
            elif faults.status is not None:
                status = faults.status
            elif faults.error_rate and self.rng.random() < faults.error_rate:
                status = 500
            # Counted now, not when sent: a hung call must not land in a later test's counts.
            self.by_status[str(status or 200)] += 1
            return faults, status

    def delay_s(self, faults: Faults) -> float:
        jitter = self.rng.uniform(0, faults.jitter_ms) if faults.jitter_ms else 0
        return (faults.latency_ms + jitter) / 1000


# --------------------------------------------------------------------------- answers


@dataclass(frozen=True)
class PromptReview:
    ref: str
    rating: int
    text: str


def message_text(content: Any) -> str:
    """A message's text, whether a string or a list of content parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def extract_reviews(messages: list[Any]) -> list[PromptReview]:
    """Review blocks of the user messages, first occurrence of each id (repair turns add none)."""
    found: dict[str, PromptReview] = {}
    for message in messages:
        if not isinstance(message, dict) or message.get("role") != "user":
            continue
        for ref, rating, text in REVIEW_RE.findall(message_text(message.get("content"))):
            found.setdefault(ref, PromptReview(ref=ref, rating=int(rating), text=text))
    return list(found.values())


def extract_tone(messages: list[Any]) -> str:
    for message in messages:
        if isinstance(message, dict) and message.get("role") in ("system", "developer"):
            match = TONE_RE.search(message_text(message.get("content")))
            if match:
                return match.group(1)
    return "default"


def analyze(reviews: list[PromptReview], *, tone: str) -> list[dict[str, Any]]:
    from aiworker.providers.local import analyze_text

    items = []
    for review in reviews:
        result = analyze_text(text=review.text, rating=review.rating, tone=tone)
        items.append(
            {
                "id": review.ref,
                "sentiment": result.sentiment,
                "tags": list(result.tags),
                "language": result.language,
                "reply_draft": result.reply_draft,
            }
        )
    return items


def apply_mode(items: list[dict[str, Any]], mode: str) -> list[dict[str, Any]]:
    """The item-level faults: each keeps the JSON well-formed so only validation can catch it."""
    if mode == "drop_last":
        return items[:-1]
    if mode == "unknown_tag" and items:
        items[0]["tags"] = [*items[0]["tags"][:4], "not_a_tag"]
    if mode == "wrong_ids":
        for n, item in enumerate(items, start=1):
            item["id"] = f"x{n}-{item['id']}"
    if mode == "xss":
        for item in items:
            item["reply_draft"] = XSS_DRAFT
    return items


def estimate_tokens(text: str) -> int:
    # About four characters per token, like the offline analyzer's ledger estimate.
    return max(1, len(text) // 4)


def completion_body(
    *, model: str, messages: list[Any], reviews: list[PromptReview], tone: str, mode: str
) -> dict[str, Any]:
    """A chat.completion object as OpenAI returns it for structured output."""
    items = apply_mode(analyze(reviews, tone=tone), mode)
    content: str | None = json.dumps({"items": items}, ensure_ascii=False)
    refusal: str | None = None
    finish_reason = "stop"
    if mode in ("truncate", "length") and content:
        content = content[: len(content) // 2]
        finish_reason = "length" if mode == "length" else "stop"
    if mode == "refusal":
        content, refusal = None, REFUSAL
    prompt_tokens = estimate_tokens(
        "".join(message_text(m.get("content")) for m in messages if isinstance(m, dict))
    )
    completion_tokens = estimate_tokens(content or refusal or "")
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": "fp_fake_llm",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": content,
                    "refusal": refusal,
                    "annotations": [],
                },
                "logprobs": None,
                "finish_reason": finish_reason,
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
        },
    }


def error_body(status: int, *, quota_exhausted: bool = False) -> dict[str, Any]:
    message, kind, code = QUOTA_ERROR if status == 429 and quota_exhausted else ERRORS[status]
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def models_body() -> dict[str, Any]:
    return {
        "object": "list",
        "data": [
            {"id": name, "object": "model", "created": 1700000000, "owned_by": "fake-llm"}
            for name in MODELS
        ],
    }


# --------------------------------------------------------------------------- HTTP


class FakeLLMServer(ThreadingHTTPServer):
    daemon_threads = True  # a hung handler must never keep a stopping process alive

    def __init__(self, address: tuple[str, int], state: FakeState, *, log: bool) -> None:
        super().__init__(address, FakeLLMHandler)
        self.state = state
        self.log = log


class FakeLLMHandler(BaseHTTPRequestHandler):
    server: FakeLLMServer
    # HTTP/1.0 closes each connection after its answer, so a stopped server leaves no
    # keep-alive connection behind that a pooled client could still be answered on.
    protocol_version = "HTTP/1.0"
    server_version = "fake-llm/1"

    @property
    def route(self) -> str:
        return urlsplit(self.path).path.rstrip("/") or "/"

    def do_GET(self) -> None:
        state = self.server.state
        routes = {"/v1/models": models_body, "/_stats": state.stats, "/_control": state.config}
        answer = routes.get(self.route)
        self._timed(lambda: (200, answer()) if answer else self._not_found())

    def do_POST(self) -> None:
        routes = {
            "/v1/chat/completions": self._chat_completions,
            "/_control": self._control,
            "/_reset": lambda: (200, self.server.state.reset()),
        }
        self._timed(routes.get(self.route, self._not_found))

    # Requests are logged once, by _send, without headers or query: never an API key.
    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.log:
            sys.stderr.write("fake_llm: " + (format % args) + "\n")

    def _timed(self, route: Any) -> None:
        started = time.monotonic()
        result = route()
        if result is not None:  # None: the route answered itself
            status, body = result
            self._send(status, body, started=started)

    def _not_found(self) -> tuple[int, dict[str, Any]]:
        return _error(404, f"Unknown path {self.command} {self.route} (fake_llm)")

    def _read_json(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        return json.loads(raw or b"{}")

    def _control(self) -> tuple[int, dict[str, Any]]:
        try:
            body = self._read_json()
            if not isinstance(body, dict):
                raise ValueError("the body must be a JSON object")
            clear = bool(body.pop("clear", False))
            return 200, self.server.state.configure(body, clear=clear)
        except ValueError as exc:  # json.JSONDecodeError is a ValueError too
            return _error(400, str(exc))

    def _chat_completions(self) -> tuple[int, dict[str, Any]] | None:
        started = time.monotonic()
        state = self.server.state
        try:
            body = self._read_json()
        except ValueError:
            return _error(400, "We could not parse the JSON body of your request.")
        messages = body.get("messages") if isinstance(body, dict) else None
        if not isinstance(messages, list) or not messages:
            return _error(400, "'messages' must be a non-empty array.")
        model = str(body.get("model") or "fake-llm")
        reviews = extract_reviews(messages)
        texts = [r.text for r in reviews]
        faults, fail_status = state.begin_call(model=model, messages=messages, texts=texts)
        if faults.hang_s:
            state.stopping.wait(faults.hang_s)
        delay = state.delay_s(faults)
        if delay:
            state.stopping.wait(delay)
        note = f"reviews={len(reviews)} mode={faults.mode}"
        if fail_status is not None:
            headers = {"Retry-After": f"{faults.retry_after_s:g}"} if fail_status == 429 else {}
            status, answer = (
                fail_status,
                error_body(fail_status, quota_exhausted=faults.quota_exhausted),
            )
        else:
            headers = {}
            tone = extract_tone(messages)
            status = 200
            answer = completion_body(
                model=model, messages=messages, reviews=reviews, tone=tone, mode=faults.mode
            )
        self._send(status, answer, started=started, headers=headers, note=note)
        return None

    def _send(
        self,
        status: int,
        body: Any,
        *,
        started: float,
        headers: dict[str, str] | None = None,
        note: str = "",
    ) -> None:
        data = json.dumps(body, ensure_ascii=False).encode()
        elapsed_ms = (time.monotonic() - started) * 1000
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("x-request-id", f"req_{uuid.uuid4().hex}")
            self.send_header("openai-processing-ms", str(int(elapsed_ms)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            note += " client-gone"  # it gave up (a hang past its timeout): nothing to tell it
        self.log_message("%s %s %d %.0fms %s", self.command, self.route, status, elapsed_ms, note)


def _error(status: int, message: str) -> tuple[int, dict[str, Any]]:
    kind = "server_error" if status >= 500 else "invalid_request_error"
    return status, {"error": {"message": message, "type": kind, "param": None, "code": None}}


# --------------------------------------------------------------------------- Python API


def _base_url(host: str, port: int) -> str:
    # A wildcard bind is reachable on loopback; clients cannot connect to the wildcard itself.
    connect = "127.0.0.1" if host in ("", "0.0.0.0") else host  # noqa: S104 - compared, not bound
    return f"http://{connect}:{port}/v1"


class FakeLLMHandle:
    """A server running in a background thread of this process."""

    def __init__(self, server: FakeLLMServer, thread: threading.Thread) -> None:
        self.server = server
        self.thread = thread
        self.host, self.port = server.server_address[:2]
        self.url = _base_url(str(self.host), int(self.port))

    def control(self, *, clear: bool = False, **faults: Any) -> dict[str, Any]:
        """Change faults (`clear=True` starts from no faults); returns the whole config."""
        return self.server.state.configure(faults, clear=clear)

    def stats(self) -> dict[str, Any]:
        return self.server.state.stats()

    def reset(self) -> dict[str, Any]:
        return self.server.state.reset()

    def stop(self) -> None:
        self.server.state.stopping.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)

    def __enter__(self) -> FakeLLMHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_in_thread(
    *, host: str = "127.0.0.1", port: int = 0, log: bool = True, **faults: Any
) -> FakeLLMHandle:
    """Start a fake server (port 0 = any free port); faults as in `Faults`."""
    server = FakeLLMServer((host, port), FakeState(faults), log=log)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.1}, name="fake-llm", daemon=True
    )
    thread.start()
    return FakeLLMHandle(server, thread)


# --------------------------------------------------------------------------- HTTP client helpers


def _root(base_url: str) -> str:
    root = base_url.rstrip("/")
    return root.removesuffix("/v1")


def _call(
    base_url: str, method: str, path: str, body: dict[str, Any] | None = None
) -> dict[str, Any]:
    url = _root(base_url) + path
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"not an http(s) URL: {base_url!r}")
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json"}
    req = urlrequest.Request(url, data=data, method=method, headers=headers)  # noqa: S310
    try:
        with urlrequest.urlopen(req, timeout=5) as response:  # noqa: S310 - scheme checked above
            return json.loads(response.read())
    except urlerror.HTTPError as exc:
        detail = json.loads(exc.read() or b"{}").get("error", {}).get("message", exc.reason)
        raise ValueError(f"fake_llm {method} {path} failed ({exc.code}): {detail}") from exc


def fake_control(base_url: str, *, clear: bool = False, **faults: Any) -> dict[str, Any]:
    """Change a running server's faults; `base_url` may end in /v1 (OPENAI_BASE_URL)."""
    return _call(base_url, "POST", "/_control", {**faults, "clear": clear})


def fake_stats(base_url: str) -> dict[str, Any]:
    return _call(base_url, "GET", "/_stats")


def fake_reset(base_url: str) -> dict[str, Any]:
    return _call(base_url, "POST", "/_reset")
