"""The OpenAI-compatible provider: the only module that imports `openai`.

Works with OpenAI, Azure, vLLM, Ollama, LM Studio and the project's fake server through
`chat.completions.parse` with a Pydantic schema. The SDK's own retries are off by default:
the worker retries through the outbox so a 429 never sleeps inside a worker process.
"""

import json

import openai
from pydantic import ValidationError

from aiworker.analysis import (
    BatchAnalysis,
    ProviderAnswer,
    ReviewInput,
    system_prompt,
    user_prompt,
)
from aiworker.providers import (
    PermanentError,
    ProviderUnavailable,
    RateLimited,
    TransientError,
)


def _retry_after(exc: openai.APIStatusError) -> float:
    headers = exc.response.headers
    for name in ("retry-after-ms", "retry-after"):
        value = headers.get(name)
        if value:
            try:
                seconds = float(value)
            except ValueError:
                continue
            return seconds / 1000 if name.endswith("ms") else seconds
    return 1.0


def _body(exc: openai.APIStatusError) -> str:
    try:
        return exc.response.text[:10000]
    except Exception:  # a streamed or closed body has nothing more to tell
        return ""


def _content(body: str) -> str:
    """The model's own answer inside a chat.completion body (the body itself if unreadable)."""
    try:
        return json.loads(body)["choices"][0]["message"]["content"] or ""
    except (ValueError, KeyError, IndexError, TypeError):
        return body


class OpenAIProvider:
    def __init__(
        self, *, api_key: str, base_url: str | None, model: str, timeout: float, max_retries: int
    ) -> None:
        self.model = model
        self.client = openai.OpenAI(
            api_key=api_key, base_url=base_url, timeout=timeout, max_retries=max_retries
        )

    def complete(self, items: list[ReviewInput], *, tone: str = "default") -> ProviderAnswer:
        messages = [
            {"role": "system", "content": system_prompt(tone=tone)},
            {"role": "user", "content": user_prompt(items)},
        ]
        try:
            return self._parse(messages)
        except PermanentError as exc:
            if "schema" not in str(exc):
                raise
            # One repair try: tell the model what was wrong with its answer.
            messages += [
                {"role": "assistant", "content": exc.raw[:4000]},
                {
                    "role": "user",
                    "content": f"That answer was invalid ({exc}). Answer again with valid JSON for the same reviews.",
                },
            ]
            return self._parse(messages)

    def _parse(self, messages: list[dict]) -> ProviderAnswer:
        try:
            response = self.client.chat.completions.with_raw_response.parse(
                model=self.model,
                messages=messages,
                response_format=BatchAnalysis,
                temperature=0,
            )
            # Parsing separately keeps the raw body for the dead letter when it is invalid.
            try:
                completion = response.parse()
            except (ValidationError, json.JSONDecodeError) as exc:
                raise PermanentError(
                    f"schema-invalid output: {exc.__class__.__name__}",
                    raw=_content(response.text)[:10000],
                ) from exc
        except openai.RateLimitError as exc:
            body = _body(exc)
            if "insufficient_quota" in body:
                raise ProviderUnavailable("insufficient quota", raw=body, status=429) from exc
            raise RateLimited("rate limited", retry_after=_retry_after(exc), raw=body) from exc
        except (openai.AuthenticationError, openai.PermissionDeniedError) as exc:
            raise ProviderUnavailable(
                f"provider refused our credentials ({exc.status_code})",
                raw=_body(exc),
                status=exc.status_code,
            ) from exc
        except (
            openai.BadRequestError,
            openai.UnprocessableEntityError,
            openai.NotFoundError,
        ) as exc:
            raise PermanentError(
                f"provider rejected the request ({exc.status_code})",
                raw=_body(exc),
                status=exc.status_code,
            ) from exc
        except openai.APIStatusError as exc:
            raise TransientError(
                f"provider error {exc.status_code}", raw=_body(exc), status=exc.status_code
            ) from exc
        except openai.APITimeoutError as exc:
            raise TransientError("provider timed out") from exc
        except openai.APIConnectionError as exc:
            raise TransientError(f"connection error: {exc}") from exc
        except openai.LengthFinishReasonError as exc:
            raise PermanentError(
                "truncated output (length limit)", raw=str(exc.completion)[:10000]
            ) from exc
        except openai.ContentFilterFinishReasonError as exc:
            raise PermanentError("refused by content filter") from exc

        choice = completion.choices[0]
        raw = choice.message.content or ""
        if choice.message.refusal:
            raise PermanentError("model refused", raw=choice.message.refusal)
        if choice.message.parsed is None:
            raise PermanentError("schema-invalid output: nothing parsed", raw=raw)
        usage = completion.usage
        cached = 0
        if usage and usage.prompt_tokens_details and usage.prompt_tokens_details.cached_tokens:
            cached = usage.prompt_tokens_details.cached_tokens
        return ProviderAnswer(
            model=completion.model or self.model,
            raw=raw,
            prompt_tokens=usage.prompt_tokens if usage else 0,
            completion_tokens=usage.completion_tokens if usage else 0,
            cached_tokens=cached,
            request_id=response.request_id or completion.id or "",
        )
