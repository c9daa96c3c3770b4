"""Analyzers behind one small interface, and the errors the worker knows how to handle.

A provider's `complete(items, tone=...)` returns a ProviderAnswer whose `raw` is the JSON of
a BatchAnalysis; validation happens once, in aiworker.analysis, for every provider alike.
"""

from functools import cache
from typing import Protocol

from django.conf import settings

from aiworker.analysis import ProviderAnswer, ReviewInput


class ProviderError(Exception):
    """Base class; `raw` keeps what the provider answered, for the dead letter."""

    def __init__(self, message: str, *, raw: str = "", status: int | None = None) -> None:
        super().__init__(message)
        self.raw = raw
        self.status = status


class TransientError(ProviderError):
    """Timeout, connection error, 5xx: retry with backoff, dead letter after max attempts."""


class RateLimited(ProviderError):
    """429: wait at least `retry_after` seconds; no attempt is spent."""

    def __init__(self, message: str, *, retry_after: float, raw: str = "") -> None:
        super().__init__(message, raw=raw, status=429)
        self.retry_after = retry_after


class ProviderUnavailable(ProviderError):
    """401/403 or insufficient quota: nothing is wrong with the review; park and open the breaker."""


class PermanentError(ProviderError):
    """400/422, truncated or schema-invalid output, refusal: dead letter at once."""


class Provider(Protocol):
    model: str

    def complete(self, items: list[ReviewInput], *, tone: str = "default") -> ProviderAnswer: ...


@cache
def get_provider() -> Provider:
    """The configured analyzer, built once per process (clients keep their connection pool)."""
    if settings.ANALYZER == "openai":
        from aiworker.providers.openai import OpenAIProvider

        return OpenAIProvider(
            api_key=settings.OPENAI_API_KEY or "not-needed",
            base_url=settings.OPENAI_BASE_URL or None,
            model=settings.LLM_MODEL,
            timeout=settings.LLM_TIMEOUT_S,
            max_retries=settings.LLM_SDK_MAX_RETRIES,
        )
    from aiworker.providers.local import LocalProvider

    return LocalProvider()
