"""The one code path to a model (`ModelClient.answer`): openai.AsyncOpenAI, an answer kept
before it is used (activities/model/answers.py) or replayed for a re-run, else asked for in
the call's formats (activities/model/formats.py: the JSON output modes the endpoint takes, or
edit blocks), validated into a pydantic model, each request sent by activities/model/wire.py.

SDK retries are off; Temporal's retry policy decides. Errors a retry cannot fix become
non-retryable ApplicationErrors with a message a person can act on.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import openai
from pydantic import BaseModel, ValidationError
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.model import answers, fitting, output_modes, replays, streaming, wire
from activities.model.formats import EDIT_BLOCKS, JSON_FORMATS, Format, JsonFormat
from activities.model.offline import OFFLINE_BASE_URL, SIMULATE_HEADER, offline_http_client
from activities.model.output_modes import STRONGEST_FIRST, Mode, ModeRefused, NoJson, OutputInvalid
from activities.model.prompts import Prompt, load_prompts
from core.contracts import Failure
from core.feedback import ModelUsage
from core.projects import redact
from core.role_io import ImplementationOutput, RoleTask
from core.settings import ModelChoice, Settings

T = TypeVar("T", bound=BaseModel)
R = TypeVar("R")
log = logging.getLogger(__name__)


class ModelClient:
    """Holds the openai client; built once per worker process."""

    def __init__(self, settings: Settings, kept: answers.Answers | None = None) -> None:
        self.settings = settings
        self.answers = kept or answers.open_store(settings)  # the worker passes its own
        self.prompts: dict[str, Prompt] = {r.value: p for r, p in load_prompts().items()}
        # What each endpoint and model said of its context window (None: nothing), asked
        # once for the client's life: the worker's one client, shared by every role call.
        self.windows: dict[tuple[str, str], int | None] = {}
        # The output mode that worked, per endpoint and model (`auto` asks it first).
        self.learned: dict[tuple[str, str], Mode] = {}
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

    async def window(self, choice: ModelChoice) -> int | None:
        """The model's context window in tokens: its setting, else what the server says of
        itself (asked once per endpoint and model for the client's life), else unknown."""
        if choice.context_tokens:
            return choice.context_tokens
        if self.settings.offline_model:
            return None
        endpoint = (str(self.client.base_url), choice.model)
        if endpoint not in self.windows:
            self.windows[endpoint] = await fitting.server_window(self.client, choice.model)
        return self.windows[endpoint]

    async def _prepared(
        self, task: RoleTask, schema: type[T]
    ) -> tuple[_Call[T], ModelUsage, ModelChoice]:
        """A role call's request as every mode and re-ask starts from (the task cut to the
        model's context window), its usage so far, and its model choice."""
        prompt = self.prompts[task.role.value]
        attempt = activity.info().attempt if activity.in_activity() else 1
        choice = self.settings.model_for(task.role, attempt)
        if task.replay and task.replay.model:  # a re-run's live role on another model
            choice = choice.model_copy(update={"model": task.replay.model})
        if task.replay and task.replay.prompt:  # ... or prompt
            prompt = Prompt(task.role, task.replay.prompt.version, task.replay.prompt.text)
        payload = task.for_model()
        cut = 0
        if window := await self.window(choice):
            # The system prompt grows by the schema (JSON modes) or the edit format's rules.
            instructions = JSON_FORMATS[Mode.TEXT].instructions(schema) + EDIT_BLOCKS.instructions(
                schema
            )
            room = fitting.budget(window, prompt.text + instructions, choice.max_tokens)
            payload, cut = fitting.fit(payload, room)
            if cut:
                log.info("%s: %d characters of the task cut to fit %s's %d-token window",
                         task.role.value, cut, choice.model, window)  # fmt: skip
        messages = [{"role": "system", "content": prompt.text}, _task_message(payload)]
        headers: dict[str, str] = {}
        if self.settings.offline_model and task.simulate:
            headers[SIMULATE_HEADER] = ",".join(s.value for s in task.simulate)
        options = {
            k: v
            for k, v in (("temperature", choice.temperature), ("max_tokens", choice.max_tokens))
            if v is not None
        }
        out = streaming.Output(
            task.role.value, self.settings.llm_stream_publish_seconds, streaming.carried()
        )
        call = _Call(task, schema, choice.model, messages, headers, options, out, payload)
        usage = ModelUsage(
            model=choice.model,
            prompt_version=prompt.version,
            offline=self.settings.offline_model,
            context_cut=cut,
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
        in plain text (activities/model/edit_blocks.py), re-asked with the block it could not
        read."""
        if self.edit_format() == "json":
            return await self.structured(task, ImplementationOutput)
        return await self.answer(task, ImplementationOutput, blocks=True)

    async def structured(self, task: RoleTask, schema: type[T]) -> tuple[T, ModelUsage]:
        """Ask the role's model for an answer in `schema`, in the output mode its settings
        name, or (auto) the strongest one the endpoint takes: a mode it refuses or ignores is
        stepped down from, and the one that worked is asked first from then on."""
        return await self.answer(task, schema)

    async def answer(
        self, task: RoleTask, schema: type[T], *, blocks: bool = False
    ) -> tuple[T, ModelUsage]:
        """The one call path: the answer kept for this very request, else a re-run's recorded
        one, else asked for in the call's formats (activities/model/formats.py: the JSON
        modes strongest first, or edit blocks), stepping down from a format the endpoint
        refuses or ignores, re-asking an answer that cannot be read."""
        call, usage, choice = await self._prepared(task, schema)
        formats: list[Format] = [EDIT_BLOCKS] if blocks else self._json_formats(choice)
        call = call.starting(formats[0])
        if blocks:
            usage.prompt_version += "+blocks"

        async def ask() -> T:
            return await self._asked(call, usage, choice, formats)

        return await self._kept_or_asked(call, formats[0].family, usage, choice, ask)

    def _json_formats(self, choice: ModelChoice) -> list[Format]:
        """The JSON modes to ask in: the one the settings name, or (auto) the strongest the
        endpoint takes, from the one that worked last."""
        if choice.output_mode != "auto":
            return [JSON_FORMATS[Mode(choice.output_mode)]]
        endpoint = (str(self.client.base_url), choice.model)
        first = STRONGEST_FIRST.index(self.learned.get(endpoint, STRONGEST_FIRST[0]))
        return [JSON_FORMATS[mode] for mode in STRONGEST_FIRST[first:]]

    async def _kept_or_asked(
        self,
        call: _Call[T],
        fmt: str,
        usage: ModelUsage,
        choice: ModelChoice,
        ask: Callable[[], Awaitable[T]],
    ) -> tuple[T, ModelUsage]:
        """The answer kept for this very request of this build's attempt
        (activities/model/answers.py: a retry of the activity after the answer arrived), else
        `ask`'s, kept before it is returned to be acted on, with what the call spent. A call
        that ends in a failure no retry mends spent tokens all the same: they travel in the
        failure's details, and the build records them as a failed role call."""
        task = call.task
        digest = answers.request_hash(call.model, fmt, call.schema.__name__, call.messages)
        key = answers.Key(task.build_id, task.role.value, task.attempt, digest, task.state.value)
        async with call.out:
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
            if task.replay and not task.replay.live:  # a re-run: the original's answer
                found = await asyncio.to_thread(
                    replays.recorded, self.answers, task, digest, call.schema
                )
                if found is not None:
                    await asyncio.to_thread(self.answers.put, key, *found)
                    return found
            started = time.monotonic()
            try:
                answer = await ask()
            except ApplicationError as err:
                if not err.non_retryable or err.details:
                    raise
                spent = self._settled(usage, call.out, choice, started)
                raise ApplicationError(
                    err.message, spent.model_dump(mode="json"), type=err.type, non_retryable=True
                ) from err.__cause__
            usage = self._settled(usage, call.out, choice, started)
            await asyncio.to_thread(self.answers.put, key, answer, usage)
            return answer, usage

    def remember_mode(self, model: str, mode: Mode) -> None:
        """The mode `auto` asks `model` at this endpoint first (a probe found it works)."""
        self.learned[(str(self.client.base_url), model)] = mode

    async def _asked(
        self, call: _Call[T], usage: ModelUsage, choice: ModelChoice, formats: list[Format]
    ) -> T:
        """The answer in the first of `formats` the endpoint takes; with `auto`, the JSON mode
        that worked is asked first from then on (an ignored one: the next weaker)."""
        endpoint = (str(self.client.base_url), choice.model)
        refused: list[str] = []
        for fmt in formats:
            usage.output_mode = fmt.name
            try:
                answer, kept_to = await self._in_format(fmt, call, usage)
            except ModeRefused as err:
                refused.append(f"{fmt.name}: {err}")
                log.warning("%s at %s: %s; trying the next mode", choice.model, endpoint[0], err)
                continue
            if isinstance(fmt, JsonFormat) and choice.output_mode == "auto":
                self.learned[endpoint] = fmt.mode if kept_to else _after(fmt.mode)
            if not kept_to:  # a usable answer, read out of prose: the server ignored the mode
                log.info("%s at %s ignored %s; its answer was read as text", *endpoint[::-1],
                         fmt.name)  # fmt: skip
                usage.output_mode = Mode.TEXT.value
            return answer
        raise ApplicationError(
            f"model {choice.model} at {endpoint[0]} took none of the output modes asked in "
            f"({'; '.join(refused)}); set LLM_OUTPUT_MODE, or a role's output_mode in LLM_ROLES",
            type=Failure.MODEL_MODE_REFUSED,
            non_retryable=True,
        )

    async def _in_format(self, fmt: Format, call: _Call[T], usage: ModelUsage) -> tuple[T, bool]:
        """The answer asked for in `fmt`, and whether the endpoint kept to it; an answer that
        cannot be read is re-asked with the reason, up to LLM_SCHEMA_REASKS times.
        ModeRefused if the endpoint refuses the format, or ignores it with no usable answer."""
        role, model, messages = call.task.role.value, call.model, call.messages
        reasks, no_json, asked, shrunk = self.settings.llm_schema_reasks, 0, 0, False
        while True:
            request = {
                "model": model,
                **fmt.request(call.schema, messages),
                "extra_headers": call.headers or None,
                **call.options,
            }
            label = f"{role} asking {model} ({fmt.name})" + (f", re-ask {asked}" * bool(asked))
            try:
                message, finish = await wire.ask(
                    self.client, request, call.out, label,
                    stream=self.settings.llm_stream,
                    stall_seconds=self.settings.llm_stall_seconds,
                )  # fmt: skip
            except openai.APIStatusError as err:
                if fitting.too_long(err):
                    if shrunk:
                        raise wire.too_long(err, model, len(messages[1]["content"])) from err
                    shrunk, messages = True, self._shrunk(call, messages, usage)
                    continue
                if fmt.refusable and output_modes.refuses_mode(err):
                    raise ModeRefused(f"HTTP {err.status_code}: {err.message}") from err
                raise wire.classify(err, model) from err
            try:
                return fmt.read(message, finish, call.schema)
            except OutputInvalid as err:
                problem = str(err)
                no_json += isinstance(err, NoJson)
            if asked >= reasks:
                break
            asked += 1
            messages = [
                *messages,
                {"role": "assistant", "content": fmt.answered(message)},
                {"role": "user", "content": fmt.reask(problem)},
            ]
        if no_json == reasks + 1 and fmt.server_makes_json:
            raise ModeRefused(f"asked for {fmt.name}, every answer was without JSON: {problem}")
        raise ApplicationError(
            f"{role}: the model's answer did not match {call.schema.__name__} "
            f"after {reasks + 1} tries: {problem}",
            type=Failure.MODEL_OUTPUT_INVALID,
            non_retryable=True,
        )

    def _shrunk(
        self, call: _Call[Any], messages: list[dict[str, str]], usage: ModelUsage
    ) -> list[dict[str, str]]:
        """`messages` with the task cut to half its size: the server refused it as too long
        for its context (the window set or told was wrong, or its tokens run denser)."""
        size = len(messages[1]["content"])
        payload, cut = fitting.fit(call.payload, size // 2)
        usage.context_cut += cut
        log.warning(
            "%s: %s refused the prompt as too long; asking once more with %d characters cut",
            *(call.task.role.value, call.model, cut),
        )
        return [messages[0], _task_message(payload), *messages[2:]]

    def _settled(
        self, usage: ModelUsage, out: streaming.Output, choice: ModelChoice, started: float
    ) -> ModelUsage:
        """`usage` with what the call spent (earlier attempts' cut streams included)."""
        spent = out.spent
        usage.prompt_tokens, usage.completion_tokens = spent.prompt_tokens, spent.completion_tokens
        usage.requests, usage.estimated = spent.requests, spent.estimated
        usage.latency_ms = int((time.monotonic() - started) * 1000)
        usage.cost_usd = self.settings.cost_of(
            choice.model, usage.prompt_tokens, usage.completion_tokens
        )
        return usage


@dataclass(frozen=True)
class _Call(Generic[T]):
    """One role call's request, as every mode and re-ask of it starts from."""

    task: RoleTask
    schema: type[T]
    model: str
    messages: list[dict[str, str]]
    headers: dict[str, str]
    options: dict[str, Any]
    out: streaming.Output
    payload: dict[str, Any]  # the task as sent (cut to the context window)

    def starting(self, fmt: Format) -> _Call[T]:
        """The call with its messages as every request in `fmt` starts from."""
        return dataclasses.replace(self, messages=fmt.prepared(self.messages))


def _task_message(payload: dict[str, Any]) -> dict[str, str]:
    """The user message of a role call: its task as JSON. No credentials of a repository URL
    (or any URL) reach a model."""
    return {"role": "user", "content": redact(json.dumps(payload, sort_keys=True))}


def _after(mode: Mode) -> Mode:
    """The next weaker mode (text is the last)."""
    return STRONGEST_FIRST[min(STRONGEST_FIRST.index(mode) + 1, len(STRONGEST_FIRST) - 1)]
