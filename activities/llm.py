"""The one code path to a model: openai.AsyncOpenAI, answers validated into pydantic models in
the output mode the endpoint takes (activities/output_modes.py).

SDK retries are off; Temporal's retry policy decides. Errors a retry cannot fix become
non-retryable ApplicationErrors with a message a person can act on.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any, Generic, TypeVar

import openai
from pydantic import BaseModel, ValidationError
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities import answers, edit_blocks, output_modes
from activities.beat import beating
from activities.offline_model import OFFLINE_BASE_URL, SIMULATE_HEADER, offline_http_client
from activities.output_modes import STRONGEST_FIRST, Mode, ModeRefused, NoJson, OutputInvalid
from activities.prompts import Prompt, load_prompts
from core.projects import redact
from core.role_io import ImplementationOutput, ModelUsage, RoleTask
from core.settings import ModelChoice, Settings

T = TypeVar("T", bound=BaseModel)
R = TypeVar("R")
log = logging.getLogger(__name__)

# Status codes where asking again cannot help (bad request, bad key, no access, unknown model).
NON_RETRYABLE_STATUS = {400, 401, 403, 404, 422}
MAX_RETRY_AFTER_SECONDS = 300.0

STATUS_HINTS = {
    401: "OPENAI_API_KEY rejected by the endpoint",
    403: "the API key has no access to this model or endpoint",
    404: "model or endpoint not found (check LLM_MODEL / OPENAI_BASE_URL)",
}


class ModelClient:
    """Holds the openai client; built once per worker process."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.answers = answers.AnswerStore(settings.answers)
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

    def _prepared(
        self, task: RoleTask, schema: type[T]
    ) -> tuple[_Call[T], ModelUsage, ModelChoice]:
        """A role call's request as every mode and re-ask starts from, its usage so far, and
        its model choice."""
        prompt = self.prompts[task.role.value]
        attempt = activity.info().attempt if activity.in_activity() else 1
        choice = self.settings.model_for(task.role, attempt)
        headers: dict[str, str] = {}
        if self.settings.offline_model and task.simulate:
            headers[SIMULATE_HEADER] = ",".join(s.value for s in task.simulate)
        options = {
            k: v
            for k, v in (("temperature", choice.temperature), ("max_tokens", choice.max_tokens))
            if v is not None
        }
        call = _Call(task, schema, choice.model, self._messages(prompt, task), headers, options)
        usage = ModelUsage(
            model=choice.model, prompt_version=prompt.version, offline=self.settings.offline_model
        )
        return call, usage, choice

    def edit_format(self) -> str:
        """How the Code Writer's code travels: `blocks` (plain text) for real models, which
        write code better outside JSON; `json` for the offline model, unless set."""
        if self.settings.llm_edit_format != "auto":
            return self.settings.llm_edit_format
        return "json" if self.settings.offline_model else "blocks"

    async def implementation(self, task: RoleTask) -> tuple[ImplementationOutput, ModelUsage]:
        """The Code Writer's answer, in its edit format: JSON (any output mode), or edit blocks
        in plain text (activities/edit_blocks.py), re-asked with the block it could not read."""
        if self.edit_format() == "json":
            return await self.structured(task, ImplementationOutput)
        call, usage, choice = self._prepared(task, ImplementationOutput)
        system, *rest = call.messages
        instructed = [{**system, "content": system["content"] + edit_blocks.INSTRUCTIONS}, *rest]
        usage.prompt_version += "+blocks"
        usage.output_mode = "blocks"

        def read(message: Any, finish: str | None) -> tuple[ImplementationOutput, bool]:
            if finish == "length":
                raise OutputInvalid("the answer was cut off at the token limit; answer briefly")
            try:
                return edit_blocks.parse(message.content or ""), True
            except edit_blocks.BlocksInvalid as err:
                raise OutputInvalid(str(err)) from err

        blocks = _Call(task, ImplementationOutput, choice.model, instructed, call.headers,
                       call.options)  # fmt: skip

        async def ask() -> tuple[ImplementationOutput, ModelUsage]:
            started = time.monotonic()
            answer, _ = await self._in_mode(Mode.TEXT, blocks, usage, build=_plain, read=read)
            usage.latency_ms = int((time.monotonic() - started) * 1000)
            usage.cost_usd = self.settings.cost_of(
                choice.model, usage.prompt_tokens, usage.completion_tokens
            )
            return answer, usage

        return await self._kept_or_asked(blocks, "blocks", ask)

    async def _kept_or_asked(
        self, call: _Call[T], fmt: str, ask: Callable[[], Awaitable[tuple[T, ModelUsage]]]
    ) -> tuple[T, ModelUsage]:
        """The answer kept for this very request of this build's attempt (activities/answers.py:
        a retry of the activity after the answer arrived), else `ask`'s, kept before it is
        returned to be acted on."""
        task = call.task
        digest = answers.request_hash(call.model, fmt, call.schema.__name__, call.messages)
        key = answers.Key(task.build_id, task.role.value, task.attempt, digest)
        kept = await asyncio.to_thread(self.answers.get, key)
        if kept is not None:
            try:
                answer = call.schema.model_validate(kept.answer)
            except ValidationError:
                log.warning("kept answer %s of %s is not %s now; asking again",
                            key.name, key.build_id, call.schema.__name__)  # fmt: skip
            else:
                log.info("%s attempt %d of %s: the kept answer is used, not asked for again",
                         key.role, key.attempt, key.build_id)  # fmt: skip
                return answer, kept.usage.model_copy(update={"reused": True})
        answer, usage = await ask()
        await asyncio.to_thread(self.answers.put, key, answer, usage)
        return answer, usage

    async def structured(self, task: RoleTask, schema: type[T]) -> tuple[T, ModelUsage]:
        """Ask the role's model for an answer in `schema`, in the output mode its settings
        name, or (auto) the strongest one the endpoint takes: a mode it refuses or ignores is
        stepped down from, and the one that worked is asked first from then on."""
        call, usage, choice = self._prepared(task, schema)
        return await self._kept_or_asked(
            call, "json", lambda: self._structured(call, usage, choice)
        )

    async def _structured(
        self, call: _Call[T], usage: ModelUsage, choice: ModelChoice
    ) -> tuple[T, ModelUsage]:
        endpoint = (str(self.client.base_url), choice.model)
        if choice.output_mode == "auto":
            first = STRONGEST_FIRST.index(_learned.get(endpoint, STRONGEST_FIRST[0]))
            modes = STRONGEST_FIRST[first:]
        else:
            modes = (Mode(choice.output_mode),)
        started, refused = time.monotonic(), []
        for mode in modes:
            usage.output_mode = mode.value
            try:
                answer, enforced = await self._in_mode(mode, call, usage)
            except ModeRefused as err:
                refused.append(f"{mode.value}: {err}")
                log.warning("%s at %s: %s; trying the next mode", choice.model, endpoint[0], err)
                continue
            if choice.output_mode == "auto":
                _learned[endpoint] = mode if enforced else _after(mode)
            if not enforced:  # a usable answer, read out of prose: the server ignored the mode
                log.info("%s at %s ignored %s; its answer was read as text", *endpoint[::-1], mode)
                usage.output_mode = Mode.TEXT.value
            usage.latency_ms = int((time.monotonic() - started) * 1000)
            usage.cost_usd = self.settings.cost_of(
                choice.model, usage.prompt_tokens, usage.completion_tokens
            )
            return answer, usage
        raise ApplicationError(
            f"model {choice.model} at {endpoint[0]} took none of the output modes asked in "
            f"({'; '.join(refused)}); set LLM_OUTPUT_MODE, or a role's output_mode in LLM_ROLES",
            type="ModelModeRefused",
            non_retryable=True,
        )

    async def _in_mode(
        self,
        mode: Mode,
        call: _Call[T],
        usage: ModelUsage,
        build: Callable[[Mode, type[T], list[dict[str, str]]], dict[str, Any]] | None = None,
        read: Callable[[Any, str | None], tuple[T, bool]] | None = None,
    ) -> tuple[T, bool]:
        """The answer asked for in `mode`, and whether the endpoint kept to the mode; an answer
        that is not the schema is re-asked with the reason, up to LLM_SCHEMA_REASKS times.
        ModeRefused if the endpoint refuses the mode, or ignores it with no usable answer.
        `build` and `read` make the request and read its answer (default: the mode's)."""
        build = build or output_modes.request

        def read_mode(message: Any, finish: str | None) -> tuple[T, bool]:
            answer = output_modes.read(mode, message, finish, call.schema)
            return answer, output_modes.enforced(mode, message)

        read = read or read_mode
        role, model, messages = call.task.role.value, call.model, call.messages
        reasks, no_json = self.settings.llm_schema_reasks, 0
        for asked in range(reasks + 1):
            usage.requests += 1
            try:
                completion = await beating(
                    self.client.chat.completions.create(
                        model=model,
                        **build(mode, call.schema, messages),
                        extra_headers=call.headers or None,
                        **call.options,
                    ),
                    f"{role} asking {model} ({mode.value})",
                )
            except openai.APIStatusError as err:
                if mode is not Mode.TEXT and output_modes.refuses_mode(err):
                    raise ModeRefused(f"HTTP {err.status_code}: {err.message}") from err
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
            if completion.usage is not None:
                usage.prompt_tokens += completion.usage.prompt_tokens
                usage.completion_tokens += completion.usage.completion_tokens
            first = completion.choices[0]
            try:
                return read(first.message, first.finish_reason)
            except OutputInvalid as err:
                problem = str(err)
                no_json += isinstance(err, NoJson)
            if asked < reasks:
                messages = [
                    *messages,
                    {"role": "assistant", "content": output_modes.answer_text(mode, first.message)},
                    {
                        "role": "user",
                        "content": f"Your answer did not match the schema: {problem}. "
                        "Answer again, only with JSON that matches it."
                        if build is output_modes.request
                        else f"Your answer could not be read: {problem}\n"
                        "Answer again, in the format the instructions give.",
                    },
                ]
        if no_json == reasks + 1 and mode in (Mode.JSON_SCHEMA, Mode.JSON_OBJECT):
            raise ModeRefused(f"asked for {mode.value}, every answer was without JSON: {problem}")
        raise ApplicationError(
            f"{role}: the model's answer did not match {call.schema.__name__} "
            f"after {reasks + 1} tries: {problem}",
            type="ModelOutputInvalid",
            non_retryable=True,
        )


@dataclass(frozen=True)
class _Call(Generic[T]):
    """One role call's request, as every mode and re-ask of it starts from."""

    task: RoleTask
    schema: type[T]
    model: str
    messages: list[dict[str, str]]
    headers: dict[str, str]
    options: dict[str, Any]


# The output mode that worked, per endpoint and model, for the worker's life (auto asks it first).
_learned: dict[tuple[str, str], Mode] = {}


def _plain(_mode: Mode, _schema: type[Any], messages: list[dict[str, str]]) -> dict[str, Any]:
    """A request of plain text: the messages as they are, no constraint on the answer."""
    return {"messages": messages}


def _after(mode: Mode) -> Mode:
    """The next weaker mode (text is the last)."""
    return STRONGEST_FIRST[min(STRONGEST_FIRST.index(mode) + 1, len(STRONGEST_FIRST) - 1)]


def _classify(err: openai.APIStatusError, model: str) -> ApplicationError:
    """Non-retryable for requests a retry cannot fix; otherwise retryable, after Retry-After."""
    status = err.status_code
    if status in NON_RETRYABLE_STATUS:
        hint = STATUS_HINTS.get(status, "the endpoint refused the request")
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
