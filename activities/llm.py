"""The one code path to a model: openai.AsyncOpenAI with structured outputs.

SDK retries are off; Temporal's retry policy decides. Errors a retry cannot fix become
non-retryable ApplicationErrors with a message a person can act on.
"""

from __future__ import annotations

import json
import time
from typing import TypeVar

import openai
from pydantic import BaseModel, ValidationError
from temporalio.exceptions import ApplicationError

from activities.offline_model import OFFLINE_BASE_URL, SIMULATE_HEADER, offline_http_client
from activities.prompts import Prompt, load_prompts
from core.models import ModelUsage, RoleTask
from core.settings import Settings

T = TypeVar("T", bound=BaseModel)

# Status codes where asking again cannot help (bad request, bad key, no access, unknown model).
NON_RETRYABLE_STATUS = {400, 401, 403, 404, 422}
SCHEMA_REASKS = 2

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
        payload = task.model_dump(mode="json", exclude={"simulate"})
        return [
            {"role": "system", "content": prompt.text},
            {"role": "user", "content": json.dumps(payload, sort_keys=True)},
        ]

    async def structured(self, task: RoleTask, schema: type[T]) -> tuple[T, ModelUsage]:
        """Ask the role's model for an answer in `schema`; re-ask on schema-invalid output."""
        prompt = self.prompts[task.role.value]
        model = self.settings.model_for(task.role)
        messages: list[dict[str, str]] = self._messages(prompt, task)
        headers: dict[str, str] = {}
        if self.settings.offline_model and task.simulate:
            headers[SIMULATE_HEADER] = ",".join(s.value for s in task.simulate)
        usage = ModelUsage(
            model=model, prompt_version=prompt.version, offline=self.settings.offline_model
        )
        started = time.monotonic()
        for asked in range(SCHEMA_REASKS + 1):
            try:
                completion = await self.client.chat.completions.parse(
                    model=model,
                    messages=messages,  # type: ignore[arg-type]
                    response_format=schema,
                    extra_headers=headers or None,
                )
            except openai.APIStatusError as err:
                raise _classify(err, model) from err
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
                    return message.parsed, usage
                problem = message.refusal or "the answer was empty"
                content = message.content or ""
            if asked < SCHEMA_REASKS:
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
            f"after {SCHEMA_REASKS + 1} tries: {problem}",
            type="ModelOutputInvalid",
            non_retryable=True,
        )


def _classify(err: openai.APIStatusError, model: str) -> Exception:
    status = err.status_code
    if status in NON_RETRYABLE_STATUS:
        hint = _STATUS_HINTS.get(status, "the endpoint refused the request")
        return ApplicationError(
            f"{hint} (HTTP {status}, model {model}): {err.message}",
            type="ModelRequestRejected",
            non_retryable=True,
        )
    return err
