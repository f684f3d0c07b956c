"""The one code path to a model: openai.AsyncOpenAI with structured outputs.

SDK retries are off; Temporal's retry policy decides. Errors a retry cannot fix become
non-retryable ApplicationErrors with a message a person can act on.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import TypeVar

import openai
from pydantic import BaseModel, ValidationError
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.beat import beating
from activities.offline_model import OFFLINE_BASE_URL, SIMULATE_HEADER, offline_http_client
from activities.prompts import Prompt, load_prompts
from core.projects import redact
from core.role_io import ModelUsage, RoleTask
from core.settings import Settings

T = TypeVar("T", bound=BaseModel)
R = TypeVar("R")

# Status codes where asking again cannot help (bad request, bad key, no access, unknown model).
NON_RETRYABLE_STATUS = {400, 401, 403, 404, 422}
MAX_RETRY_AFTER_SECONDS = 300.0

_STATUS_HINTS = {
    401: "OPENAI_API_KEY rejected by the endpoint",
    403: "the API key has no access to this model or endpoint",
    404: "model or endpoint not found (check LLM_MODEL / OPENAI_BASE_URL)",
}


class ModelClient:
    """Holds the openai client; built once per worker process."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.prompts: dict[str, Prompt] = {r.value: p for r, p in load_prompts().items()}
        if settings.openai_api_key is None:
            self.client = openai.AsyncOpenAI(
                api_key="offline",
                base_url=OFFLINE_BASE_URL,
                max_retries=0,
                timeout=settings.llm_timeout_seconds,
                http_client=offline_http_client(settings.offline_model_latency_seconds),
            )
        else:
            self.client = openai.AsyncOpenAI(
                api_key=settings.openai_api_key.get_secret_value(),
                base_url=settings.openai_base_url,
                max_retries=0,
                timeout=settings.llm_timeout_seconds,
            )

    async def close(self) -> None:
        await self.client.close()

    def _messages(self, prompt: Prompt, task: RoleTask) -> list[dict[str, str]]:
        payload = task.model_dump(mode="json", exclude={"simulate", "mirror"})
        return [
            {"role": "system", "content": prompt.text},
            # No credentials of a repository URL (or any URL) reach a model.
            {"role": "user", "content": redact(json.dumps(payload, sort_keys=True))},
        ]

    async def structured(self, task: RoleTask, schema: type[T]) -> tuple[T, ModelUsage]:
        """Ask the role's model for an answer in `schema`; re-ask on schema-invalid output."""
        prompt = self.prompts[task.role.value]
        attempt = activity.info().attempt if activity.in_activity() else 1
        choice = self.settings.model_for(task.role, attempt)
        model = choice.model
        messages: list[dict[str, str]] = self._messages(prompt, task)
        headers: dict[str, str] = {}
        if self.settings.offline_model and task.simulate:
            headers[SIMULATE_HEADER] = ",".join(s.value for s in task.simulate)
        options = {
            k: v
            for k, v in (("temperature", choice.temperature), ("max_tokens", choice.max_tokens))
            if v is not None
        }
        usage = ModelUsage(
            model=model, prompt_version=prompt.version, offline=self.settings.offline_model
        )
        started = time.monotonic()
        reasks = self.settings.llm_schema_reasks
        for asked in range(reasks + 1):
            usage.requests += 1
            try:
                completion = await beating(
                    self.client.chat.completions.parse(
                        model=model,
                        messages=messages,  # type: ignore[arg-type]
                        response_format=schema,
                        extra_headers=headers or None,
                        **options,  # type: ignore[arg-type]
                    ),
                    f"{task.role.value} asking {model}",
                )
            except openai.APIStatusError as err:
                raise _classify(err, model) from err
            except openai.APIConnectionError as err:  # timeouts included
                kind = (
                    "ModelTimeout"
                    if isinstance(err, openai.APITimeoutError)
                    else "ModelUnreachable"
                )
                raise ApplicationError(
                    f"model {model} did not answer ({type(err).__name__}: {err})", type=kind
                ) from err
            except (ValidationError, openai.LengthFinishReasonError) as err:
                problem = str(err)
                content = ""
            else:
                if completion.usage is not None:
                    usage.prompt_tokens += completion.usage.prompt_tokens
                    usage.completion_tokens += completion.usage.completion_tokens
                message = completion.choices[0].message
                if message.parsed is not None:
                    usage.latency_ms = int((time.monotonic() - started) * 1000)
                    usage.cost_usd = self.settings.cost_of(
                        model, usage.prompt_tokens, usage.completion_tokens
                    )
                    return message.parsed, usage
                problem = message.refusal or "the answer was empty"
                content = message.content or ""
            if asked < reasks:
                messages = [
                    *messages,
                    {"role": "assistant", "content": content},
                    {
                        "role": "user",
                        "content": f"Your answer did not match the schema: {problem}. "
                        "Answer again, only with JSON that matches it.",
                    },
                ]
        raise ApplicationError(
            f"{task.role.value}: the model's answer did not match {schema.__name__} "
            f"after {reasks + 1} tries: {problem}",
            type="ModelOutputInvalid",
            non_retryable=True,
        )


def _classify(err: openai.APIStatusError, model: str) -> ApplicationError:
    """Non-retryable for requests a retry cannot fix; otherwise retryable, after Retry-After."""
    status = err.status_code
    if status in NON_RETRYABLE_STATUS:
        hint = _STATUS_HINTS.get(status, "the endpoint refused the request")
        return ApplicationError(
            f"{hint} (HTTP {status}, model {model}): {err.message}",
            type="ModelRequestRejected",
            non_retryable=True,
        )
    wait = retry_after(err.response.headers.get("retry-after"))
    kind = "ModelRateLimited" if status == 429 else "ModelUnavailable"
    return ApplicationError(
        f"model {model} answered HTTP {status}: {err.message}"
        + (f"; retrying after {wait:.0f}s as asked" if wait else ""),
        type=kind,
        next_retry_delay=timedelta(seconds=wait) if wait else None,
    )


def retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date), capped."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = (when - datetime.now(UTC)).total_seconds()
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_SECONDS) or None
