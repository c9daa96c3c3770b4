"""The LLM call ledger: what was paid for, and results reused instead of paying twice."""

import hashlib
from decimal import Decimal

from django.conf import settings
from django.db import IntegrityError, transaction

from aiworker.analysis import PROMPT_VERSION, Analysis, ProviderAnswer
from aiworker.models import LlmCall, LlmResult


def cost_usd(*, model: str, prompt_tokens: int, completion_tokens: int) -> Decimal:
    price_in, price_out = settings.LLM_PRICES.get(model, (0.0, 0.0))
    cost = (prompt_tokens * price_in + completion_tokens * price_out) / 1_000_000
    return Decimal(str(round(cost, 6)))


def results_lookup(*, fingerprints: list[str]) -> dict[str, Analysis]:
    """Stored results for these fingerprints: a hit means the content was already paid for."""
    rows = LlmResult.objects.filter(fingerprint__in=fingerprints).values_list("fingerprint", "result")
    return {fp: Analysis(**result) for fp, result in rows}


def batch_fingerprint(fingerprints: list[str]) -> str:
    return hashlib.sha256("\n".join(sorted(fingerprints)).encode()).hexdigest()


def call_record(
    *,
    model: str,
    fingerprints: list[str],
    review_ids: list[int],
    status: str,
    latency_ms: int,
    answer: ProviderAnswer | None = None,
    error_class: str = "",
    raw_response: str = "",
) -> LlmCall:
    """Write one ledger row right after a provider call, in its own transaction."""
    prompt_tokens = answer.prompt_tokens if answer else 0
    completion_tokens = answer.completion_tokens if answer else 0
    return LlmCall.objects.create(
        model=model,
        prompt_version=PROMPT_VERSION,
        fingerprint=batch_fingerprint(fingerprints),
        batch_size=len(fingerprints),
        review_ids=review_ids,
        status=status,
        error_class=error_class,
        latency_ms=latency_ms,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        cached_tokens=answer.cached_tokens if answer else 0,
        cost_usd=cost_usd(model=model, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens),
        request_id=answer.request_id if answer else "",
        raw_response=raw_response[:20000],
    )


def results_store(*, call: LlmCall, results: dict[str, tuple[int, Analysis]]) -> None:
    """Keep each valid per-review result under its fingerprint (first writer wins)."""
    for fingerprint, (review_id, analysis) in results.items():
        try:
            with transaction.atomic():
                LlmResult.objects.create(
                    fingerprint=fingerprint,
                    call=call,
                    review_id=review_id,
                    result={
                        "sentiment": analysis.sentiment,
                        "tags": analysis.tags,
                        "language": analysis.language,
                        "reply_draft": analysis.reply_draft,
                    },
                )
        except IntegrityError:
            pass  # a concurrent zombie stored the same content first; either result is fine
