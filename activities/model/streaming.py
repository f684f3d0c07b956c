"""A role's answer as it streams: chunks read into the message a complete answer would be
(tool-call arguments joined across chunks), a stream that stalls abandoned, the tokens so far
in the activity's heartbeat, and the text published on the build's workflow stream
(temporalio.contrib.workflow_streams) for `starter.py start --show-model-output` and the
API's server-sent events.

What a call spent is carried across the activity's attempts in its heartbeat details (the
second detail): a stream cut halfway was paid for, and its retry's usage includes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import openai
from openai.types.chat import ChatCompletion, ChatCompletionChunk, ChatCompletionMessage
from openai.types.chat.chat_completion_message_function_tool_call import (
    ChatCompletionMessageFunctionToolCall,
    Function,
)
from temporalio import activity
from temporalio.contrib.workflow_streams import WorkflowStreamClient

from activities import beat
from core.role_io import MODEL_OUTPUT_TOPIC, ModelStreamItem

log = logging.getLogger(__name__)
FIRST_PUBLISH_SECONDS = 0.2  # the first text of a call is published this soon after it arrives
PUBLISH_TIMEOUT_SECONDS = 5.0  # a publish that takes longer is dropped: output never holds a call
# Text of one call published live, at most: the stream travels in the build's history, which
# carries references, not files (a megabyte-long answer is shown up to here, then marked).
LIVE_TEXT_CHARS = 64_000
STEADY_BATCHES = 10  # batches at the set pace; then each waits PUBLISH_GROWTH times longer
PUBLISH_GROWTH = 1.25
MAX_PUBLISH_SECONDS = 15.0


class Stalled(Exception):
    """The stream sent nothing for the stall limit after its first token."""


class Unfinished(Exception):
    """The stream ended without saying why the answer ended (no finish reason): the server
    stopped it. llama-cpp-python's server ends a stream so when another request arrives
    (unless started with `--interrupt_requests False`)."""


def tokens_of(text: str) -> int:
    """A token count estimated from text (about four characters a token)."""
    return max(1, len(text) // 4) if text else 0


@dataclass
class Spend:
    """Tokens a call paid for; `estimated` where some were counted from text."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    requests: int = 0
    estimated: bool = False

    def add(self, other: Spend) -> Spend:
        return Spend(
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
            self.requests + other.requests,
            self.estimated or other.estimated,
        )


def carried() -> Spend:
    """What earlier attempts of this activity spent on the call without finishing it (the
    second heartbeat detail they left), or nothing."""
    if not activity.in_activity():
        return Spend()
    details = activity.info().heartbeat_details
    if len(details) >= 2 and isinstance(details[1], dict):
        with contextlib.suppress(TypeError, ValueError):
            return Spend(**{k: details[1][k] for k in asdict(Spend()) if k in details[1]})
    return Spend()


@dataclass
class Accumulator:
    """The chunks of one streamed answer, read into the message and usage a complete answer has."""

    content: list[str] = field(default_factory=list)
    refusal: list[str] = field(default_factory=list)
    tools: dict[int, dict[str, str]] = field(default_factory=dict)
    finish_reason: str | None = None
    usage: Any = None
    chunks: int = 0  # chunks that carried text: about one token each on the servers met

    def add(self, chunk: ChatCompletionChunk) -> str:
        """Take one chunk; the text it adds (content or tool-call arguments)."""
        if chunk.usage is not None:
            self.usage = chunk.usage
        added = ""
        for choice in chunk.choices or []:
            if choice.index != 0:
                continue
            delta = choice.delta
            if delta.content:
                self.content.append(delta.content)
                added += delta.content
            if getattr(delta, "refusal", None):
                self.refusal.append(str(delta.refusal))
            for call in delta.tool_calls or []:
                slot = self.tools.setdefault(call.index, {"id": "", "name": "", "arguments": ""})
                slot["id"] = slot["id"] or (call.id or "")
                if call.function is not None:
                    # A name arrives once (some servers repeat it); arguments arrive in pieces.
                    slot["name"] = slot["name"] or (call.function.name or "")
                    if call.function.arguments:
                        slot["arguments"] += call.function.arguments
                        added += call.function.arguments
            if choice.finish_reason:
                self.finish_reason = choice.finish_reason
        self.chunks += bool(added)
        return added

    def take(self, completion: ChatCompletion) -> str:
        """A whole answer where a stream was asked for (a server that ignores `stream`)."""
        self.usage = completion.usage
        first = completion.choices[0]
        self.finish_reason = first.finish_reason
        message = first.message
        self.content = [message.content] if message.content else []
        self.refusal = [message.refusal] if message.refusal else []
        for index, call in enumerate(message.tool_calls or []):
            function = getattr(call, "function", None)
            self.tools[index] = {
                "id": call.id,
                "name": getattr(function, "name", ""),
                "arguments": getattr(function, "arguments", ""),
            }
        text = "".join(self.content) + "".join(t["arguments"] for t in self.tools.values())
        self.chunks = tokens_of(text)
        return text

    def message(self) -> ChatCompletionMessage:
        calls = [
            ChatCompletionMessageFunctionToolCall(
                id=slot["id"] or f"call_{index}",
                type="function",
                function=Function(name=slot["name"], arguments=slot["arguments"]),
            )
            for index, slot in sorted(self.tools.items())
        ]
        return ChatCompletionMessage(
            role="assistant",
            content="".join(self.content) or None,
            refusal="".join(self.refusal) or None,
            tool_calls=calls or None,
        )

    def finish(self, limit: int | None) -> str | None:
        """Why the answer ended: the server's finish reason, or `length` when the answer used
        every token `limit` allowed (llama-cpp-python's server says `tool_calls` for a tool
        call cut at the limit, whose arguments then end mid-JSON)."""
        used = self.usage.completion_tokens if self.usage is not None else self.chunks
        if limit is not None and self.finish_reason not in (None, "length") and used >= limit:
            return "length"
        return self.finish_reason

    def spend(self, prompt_estimate: int) -> Spend:
        """This answer's tokens: the server's usage, else counted (and marked estimated)."""
        if self.usage is not None:
            return Spend(self.usage.prompt_tokens, self.usage.completion_tokens)
        return Spend(prompt_estimate, self.chunks, estimated=True)


async def read_stream(
    client: openai.AsyncOpenAI,
    request: dict[str, Any],
    *,
    stall_seconds: float,
    output: Output,
) -> Accumulator:
    """Ask `request` streamed and read the answer; text goes to `output` as it arrives.
    Stalled when the stream falls silent for `stall_seconds` after its first token;
    Unfinished when it ends without a finish reason."""
    answer = Accumulator()
    output.reading(answer)
    streamed = {**request, "stream": True, "stream_options": {"include_usage": True}}
    async with client.chat.completions.with_streaming_response.create(**streamed) as response:
        if "text/event-stream" not in response.headers.get("content-type", ""):
            body = json.loads(await response.read())
            output.text(answer.take(ChatCompletion.model_validate(body)))
            return answer
        chunks = (await response.parse()).__aiter__()
        while True:
            wait = stall_seconds if answer.chunks else None
            try:
                async with asyncio.timeout(wait):  # a cancellation of the call is never lost
                    chunk = await chunks.__anext__()
            except StopAsyncIteration:
                if answer.finish_reason is None:
                    raise Unfinished(
                        f"the stream ended after {answer.chunks} tokens without a finish "
                        "reason: the server stopped the answer"
                    ) from None
                return answer
            except TimeoutError:
                raise Stalled(
                    f"the stream sent nothing for {stall_seconds:g}s after "
                    f"{answer.chunks} tokens (LLM_STALL_SECONDS)"
                ) from None
            if added := answer.add(chunk):
                output.text(added)


class Output:
    """One role call's live output: the heartbeat with the tokens so far and the spend to
    carry, and the text published on the build's workflow stream in batches (one signal each,
    the first soon after the first token). Publishing never fails or holds the call: a stream
    that cannot be reached is given up on, with one log line."""

    def __init__(self, role: str, publish_seconds: float, spent: Spend) -> None:
        self.role = role
        self.attempt = activity.info().attempt if activity.in_activity() else 1
        self.publish_seconds = publish_seconds
        self.spent = spent  # earlier attempts' and this attempt's requests and finished answers
        self.answer: Accumulator | None = None
        self.prompt_estimate = 0
        self.first_token_at: float | None = None
        self.tokens_before = 0  # this call's finished requests' completion tokens
        self.label, self.asked_at = f"{role} starting", time.monotonic()
        self.pending: list[ModelStreamItem] = []
        self.pending_text: list[str] = []
        self.live_chars = 0  # text of this call taken for publishing
        self.wake = asyncio.Event()
        self.closed = False  # the call ended: the publisher stops at its next turn
        self.client = _stream_client()
        self.tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> Output:
        if self.client is not None:
            self.tasks.append(asyncio.create_task(self._publisher()))
        if activity.in_activity():
            self.tasks.append(asyncio.create_task(self._heartbeats()))
        if self.attempt > 1:
            self.emit("retry", f"attempt {self.attempt}: what came before was abandoned")
        return self

    async def __aexit__(self, *_exc: object) -> None:
        self.closed = True
        self.emit("done")
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.heartbeat()
        await self._flush()

    # --- what the call reports --------------------------------------------------------------

    def request(self, label: str, prompt_estimate: int) -> None:
        """A new request of the call (the first, a re-ask, another mode)."""
        self.prompt_estimate = prompt_estimate
        self.label, self.asked_at = label, time.monotonic()
        self.spent = self.spent.add(Spend(requests=1))
        self.emit("start", label)

    def reading(self, answer: Accumulator) -> None:
        self.answer = answer

    def finished(self, spend: Spend) -> None:
        """The request's answer is complete: its spend counts, its text is no longer pending."""
        self.spent = self.spent.add(spend)
        self.tokens_before += spend.completion_tokens
        self.answer = None

    def cut(self) -> None:
        """The request in flight was abandoned: what it had received counts as spent
        (estimated), and the heartbeat carries it to the next attempt."""
        if self.answer is not None:
            received = Spend(self.prompt_estimate, self.answer.chunks, estimated=True)
            self.spent = self.spent.add(received)
            self.answer = None
        self.heartbeat()

    def text(self, added: str) -> None:
        if not added:
            return
        if self.first_token_at is None:
            self.first_token_at = time.monotonic()
        self.pending_text.append(added)
        self.wake.set()

    def emit(self, kind: str, text: str = "") -> None:
        self._take_text()
        self.pending.append(self._item(kind, text))
        self.wake.set()

    def tokens(self) -> int:
        return self.tokens_before + (self.answer.chunks if self.answer else 0)

    def detail(self) -> str:
        """The heartbeat's words: the tokens so far, or how long the first is awaited."""
        if self.tokens():
            return self._item("text").progress()
        return f"{self.label}: no tokens yet after {time.monotonic() - self.asked_at:.0f}s"

    def heartbeat(self) -> None:
        if activity.in_activity():
            activity.heartbeat(self.detail(), asdict(self.spent))

    # --- how -------------------------------------------------------------------------------

    def _item(self, kind: str, text: str = "") -> ModelStreamItem:
        tokens = self.tokens()
        elapsed = time.monotonic() - self.first_token_at if self.first_token_at else 0.0
        rate = tokens / elapsed if elapsed > 0.5 else 0.0
        return ModelStreamItem(
            role=self.role,
            attempt=self.attempt,
            kind=kind,
            text=text,
            tokens=tokens,
            tokens_per_second=round(rate, 1),
        )

    def _take_text(self) -> None:
        if not self.pending_text:
            return
        text = "".join(self.pending_text)
        self.pending_text.clear()
        room = LIVE_TEXT_CHARS - self.live_chars
        if room <= 0:
            return
        if len(text) > room:
            text = text[:room] + (
                f"\n[... the rest of this answer is not shown live: {LIVE_TEXT_CHARS:,} "
                "characters a call at most ...]\n"
            )
        self.live_chars += min(len(text), room)
        self.pending.append(self._item("text", text))

    async def _heartbeats(self) -> None:
        every = beat.interval()
        while True:
            self.heartbeat()
            await asyncio.sleep(every)

    async def _publisher(self) -> None:
        """Batches: the first soon after the first token, then every `publish_seconds`; a call
        that writes for long publishes ever less often (each batch is a signal, four events of
        the build's history), so a long answer costs tens of batches, not hundreds."""
        wait, batches = FIRST_PUBLISH_SECONDS, 0
        while not self.closed:
            await self.wake.wait()
            await asyncio.sleep(wait)
            self.wake.clear()
            await self._flush()
            batches += 1
            wait = min(
                self.publish_seconds * PUBLISH_GROWTH ** max(0, batches - STEADY_BATCHES),
                MAX_PUBLISH_SECONDS,
            )

    async def _flush(self) -> None:
        self._take_text()
        if self.client is None or not self.pending:
            self.pending.clear()
            return
        items, self.pending = self.pending, []
        topic = self.client.topic(MODEL_OUTPUT_TOPIC, type=ModelStreamItem)
        for item in items:
            topic.publish(item)
        try:  # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancellation
            async with asyncio.timeout(PUBLISH_TIMEOUT_SECONDS):
                await self.client.flush()
        except Exception as err:  # the build's stream is gone or slow: the call goes on
            log.info("%s: model output not published (%s); publishing stops", self.role, err)
            self.client = None


def _stream_client() -> WorkflowStreamClient | None:
    """The build's workflow stream, when this runs in an activity of a workflow."""
    if not activity.in_activity() or not activity.info().workflow_id:
        return None
    try:
        return WorkflowStreamClient.from_within_activity()
    except RuntimeError:  # an activity environment without a client (unit tests)
        return None
