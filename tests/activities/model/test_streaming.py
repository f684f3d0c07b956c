"""Role calls stream (activities/model/streaming.py): the tokens so far in the activity's heartbeat
and the build's `status`, the text on the build's workflow stream (workflows/stream.py) for
`--show-model-output` and the API's server-sent events, resumable by offset and marked where
an attempt is retried. A stream that stalls is abandoned and retried as a timeout; a server
that sends no usage, or refuses streaming, is met as it is; what a cut stream spent is carried
into its retry's usage."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import uuid
from datetime import timedelta
from types import SimpleNamespace

import httpx2
import pytest
from openai.types.chat import ChatCompletionChunk
from sqlalchemy import Engine
from temporalio.client import Client
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.model import offline, streaming, wire
from activities.model.llm import ModelClient
from client.model_output import Lines, model_output
from core.build_io import Simulation
from core.reports import TestAudit
from core.role_io import ModelStreamItem, PlanOutput, RoleTask
from core.settings import Settings
from core.states import BuildState, Role
from tests.api_stack import serve_api
from tests.fake_openai import FakeOpenAI, Fault
from tests.helpers import fields, make_request, running_worker, start, status_of, wait_until
from workflows.build import BuildWorkflow

S = BuildState


async def read_all(
    client: Client, build: str, offset: int = 0
) -> list[tuple[int, ModelStreamItem]]:
    async with asyncio.timeout(30):
        return [item async for item in model_output(client, build, offset)]


def calls(items: list[tuple[int, ModelStreamItem]], role: str) -> list[str]:
    """The text of each request of `role`, in order."""
    texts: list[str] = []
    for _, item in items:
        if item.role != role:
            continue
        if item.kind == "start":
            texts.append("")
        elif item.kind == "text":
            texts[-1] += item.text
    return texts


async def test_a_build_streams_every_call_and_status_shows_the_tokens_so_far(
    client: Client, settings: Settings, engine: Engine
):
    # The offline model spreads each answer over 1.5 s, as a slow model writes it.
    slow = settings.model_copy(update={"offline_model_latency_seconds": 1.5})
    async with running_worker(client, slow, engine):
        handle = await start(client, slow, make_request())
        writing = await wait_until(handle, lambda s: bool(s.model_now), seconds=30)
        result = await handle.result()
        final = await status_of(handle)
        items = await read_all(client, handle.id)
        resumed = await read_all(client, handle.id, len(items) - 3)
    assert result.state is S.COMPLETE
    assert writing.model_now is not None and " tokens so far" in writing.model_now
    assert final.model_now is None  # nothing in flight once the build ended
    offsets = [at for at, _ in items]
    assert offsets == list(range(len(items)))  # every item, once, in order
    roles = {item.role for _, item in items}
    assert roles == {"q_assistant", "code_writer", "test_auditor", "verification_overseer",
                     "release_manager"}  # fmt: skip
    # What was published is what the model answered: the plan parses as the plan.
    _, plan = calls(items, "q_assistant")
    assert PlanOutput.model_validate_json(plan).steps
    done = [item for _, item in items if item.kind == "done" and item.role == "code_writer"]
    assert done and done[-1].tokens > 0
    # Resumable: from an offset, the same items from there on.
    assert resumed == items[-3:]


async def test_a_stalled_stream_is_retried_with_a_marker_and_its_tokens_are_carried(
    client: Client, online: Settings, engine: Engine, fake: FakeOpenAI
):
    stalling = online.model_copy(update={"llm_stall_seconds": 0.5, "llm_timeout_seconds": 10})
    fake.fail("PlanOutput", Fault("stall", seconds=5))
    async with running_worker(client, stalling, engine, ModelClient(stalling)):
        handle = await start(client, stalling, make_request())
        result = await handle.result()
        status = await status_of(handle)
        items = await read_all(client, handle.id)
        events = await handle.query(BuildWorkflow.event_log, 0)
    assert result.state is S.COMPLETE and status.attempts[BuildState.PLANNING] == 1
    assert fake.count("PlanOutput") == 2  # the stalled stream, then its retry
    kinds = [item.kind for _, item in items if item.role == "q_assistant"]
    # discovery (start, text.., done), the stalled plan (start, text.., done), the retry.
    retry_at = kinds.index("retry")
    assert kinds[retry_at + 1] == "start" and kinds.count("done") == 3
    stalled, retried = calls(items, "q_assistant")[1:]
    assert retried.startswith(stalled) and len(stalled) < len(retried)
    # The planning call's usage holds both requests: the half received (estimated) and the
    # whole answer.
    plan_call = next(
        e for e in events if e.event_type.value == "role_call" and e.state is S.PLANNING
    )
    usage = fields(plan_call)
    assert usage["requests"] == 2 and usage["estimated"] is True
    whole = [r for r in fake.requests if r.schema == "PlanOutput"][1]
    answer = offline.completion(whole.body, retried)["usage"]
    assert usage["completion_tokens"] > answer["completion_tokens"]


async def test_a_stream_ended_without_a_finish_reason_is_asked_again_not_taken_as_the_answer(
    online: Settings, fake: FakeOpenAI
):
    """llama-cpp-python's server ends the stream it is answering with [DONE] when another
    request arrives: half an answer, no finish reason. It is an outage (retried), not an
    answer without the tool call or JSON asked for (which would step the mode down)."""
    fake.fail("TestAudit", Fault("interrupt"))
    llm = ModelClient(online)
    with pytest.raises(ApplicationError, match="without a finish reason") as err:
        await llm.structured(task(Role.TEST_AUDITOR, S.TESTING), TestAudit)
    assert err.value.type == "ModelUnreachable" and not err.value.non_retryable
    answer, usage = await llm.structured(task(Role.TEST_AUDITOR, S.TESTING), TestAudit)
    assert answer.summary and usage.output_mode == "json_schema"  # no step down
    await llm.close()


async def test_a_server_without_usage_in_streams_gets_tokens_counted_and_marked(
    online: Settings, fake: FakeOpenAI
):
    fake.stream_usage = False
    llm = ModelClient(online)
    answer, usage = await llm.structured(task(Role.TEST_AUDITOR, S.TESTING), TestAudit)
    assert usage.estimated and usage.completion_tokens > 0 and usage.prompt_tokens > 0
    assert answer.summary
    await llm.close()


async def test_a_server_that_refuses_streaming_is_asked_whole_from_then_on(
    online: Settings, fake: FakeOpenAI
):
    fake.refuse_stream = True
    llm = ModelClient(online)
    try:
        for _ in range(2):
            _, usage = await llm.structured(task(Role.TEST_AUDITOR, S.TESTING), TestAudit)
            assert not usage.estimated and usage.completion_tokens > 0
        assert wire.unstreamed == {f"{online.openai_base_url}/"}
    finally:
        wire.unstreamed.clear()
        await llm.close()
    streamed = [bool(r.body.get("stream")) for r in fake.requests]
    assert streamed == [True, False, False]


async def test_the_heartbeat_carries_the_tokens_so_far(settings: Settings):
    slow = settings.model_copy(update={"offline_model_latency_seconds": 1.0})
    beats: list[tuple[object, ...]] = []
    env = ActivityEnvironment()
    env.info = dataclasses.replace(env.info, heartbeat_timeout=timedelta(seconds=0.6))
    env.on_heartbeat = lambda *details: beats.append(details)
    llm = ModelClient(slow)
    await env.run(llm.structured, task(Role.Q_ASSISTANT, S.PLANNING), PlanOutput)
    words = [str(b[0]) for b in beats]
    assert any(w.startswith("q_assistant: ") and " tokens so far" in w for w in words)
    spent = beats[-1][1]
    assert isinstance(spent, dict) and spent["requests"] == 1 and spent["completion_tokens"] > 0
    await llm.close()


def task(role: Role, state: BuildState) -> RoleTask:
    build = f"b-{uuid.uuid4().hex[:8]}"
    return RoleTask(build_id=build, project_id="p", role=role, state=state, attempt=1,
                    requirements={"feature": "Dark mode"})  # fmt: skip


def chunk(delta: dict[str, object], finish: str | None = None) -> ChatCompletionChunk:
    return ChatCompletionChunk.model_validate(
        {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m",
         "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    )  # fmt: skip


def test_tool_call_arguments_split_across_chunks_are_joined_and_a_repeated_name_is_kept_once():
    answer = streaming.Accumulator()
    for piece in ('{"sum', 'mary": "ok', '", "steps": []}'):
        call = {"index": 0, "id": "call_1", "function": {"name": "PlanOutput", "arguments": piece}}
        answer.add(chunk({"tool_calls": [call]}))
    answer.add(chunk({}, "tool_calls"))
    message = answer.message()
    assert message.tool_calls is not None and len(message.tool_calls) == 1
    function = message.tool_calls[0].function  # type: ignore[union-attr]
    assert function.name == "PlanOutput"
    assert json.loads(function.arguments) == {"summary": "ok", "steps": []}
    assert answer.finish_reason == "tool_calls" and answer.chunks == 3
    assert answer.spend(prompt_estimate=40) == streaming.Spend(40, 3, 0, estimated=True)


def test_an_answer_that_used_every_token_allowed_ended_at_the_limit_whatever_its_reason():
    answer = streaming.Accumulator()
    call = {"index": 0, "id": "call_1", "function": {"name": "PlanOutput", "arguments": '{"su'}}
    answer.add(chunk({"tool_calls": [call]}, "tool_calls"))
    assert answer.finish(None) == "tool_calls" and answer.finish(2) == "tool_calls"
    assert answer.finish(1) == "length"  # no usage: its chunks are counted
    answer.usage = streaming.Spend(10, 64)  # the server's count, where it sends one
    assert answer.finish(64) == "length" and answer.finish(65) == "tool_calls"
    answer.finish_reason = None  # an unfinished stream stays unfinished
    assert answer.finish(64) is None


def test_model_output_is_shown_in_whole_lines_with_headers_and_markers():
    lines = Lines()

    def item(kind: str, text: str = "") -> ModelStreamItem:
        return ModelStreamItem.model_validate(
            {"role": "code_writer", "attempt": 2, "kind": kind, "text": text, "tokens": 12}
        )

    shown = [
        *lines.take(item("retry", "attempt 2: what came before was abandoned")),
        *lines.take(item("start", "code_writer asking m (text)")),
        *lines.take(item("text", "def f():\n    ret")),
        *lines.take(item("text", "urn 1\n")),
        *lines.take(item("text", "# no newline")),
        *lines.take(item("done")),
    ]
    assert shown == [
        "── code_writer attempt 2: what came before was abandoned ──",
        "── code_writer asking m (text) ──",
        "code_writer │ def f():",
        "code_writer │     return 1",
        "code_writer │ # no newline",
        "── code_writer: 12 tokens ──",
    ]


async def test_the_api_serves_model_output_as_server_sent_events_resumable_by_last_event_id(
    client: Client, settings: Settings, engine: Engine
):
    async with running_worker(client, settings, engine), serve_api(settings) as http:
        request = make_request(simulate=[Simulation.TESTS_FAIL_ONCE])
        handle = await start(client, settings, request)
        await handle.result()
        path = f"/api/workflows/{handle.id}/model-output"
        whole = await http.get(path, timeout=30)
        assert whole.status_code == 200
        assert whole.headers["content-type"].startswith("text/event-stream")
        events = [e for e in whole.text.split("\n\n") if e]
        assert events[-1] == "event: end\ndata: {}"
        ids = [int(e.split("\n")[0].removeprefix("id: ")) for e in events[:-1]]
        assert ids == list(range(1, len(ids) + 1))
        resumed = await http.get(path, headers={"Last-Event-ID": str(ids[-2])}, timeout=30)
        assert [e for e in resumed.text.split("\n\n") if e] == events[-2:]
        missing = await http.get("/api/workflows/build-nope/model-output")
        assert missing.status_code == 404


@pytest.mark.parametrize("body", [{"stream": True}, {}])
def test_the_offline_model_answers_streamed_or_whole_as_asked(body: dict[str, object]):
    answer = offline.respond({"model": "m", "messages": [], **body}, '{"a": 1}')
    assert isinstance(answer, httpx2.Response)
    streamed = answer.headers.get("content-type") == "text/event-stream"
    assert streamed is bool(body)


def test_live_text_of_a_call_stops_at_its_limit_with_a_marker():
    out = streaming.Output("code_writer", 1.0, streaming.Spend())
    out.text("x" * (streaming.LIVE_TEXT_CHARS - 10))
    out.emit("start", "a re-ask")  # takes the pending text first
    out.text("y" * 100_000)
    out.emit("done")
    out.text("z" * 10)
    out.emit("done")
    texts = [item.text for item in out.pending if item.kind == "text"]
    assert len(texts) == 2 and texts[0] == "x" * (streaming.LIVE_TEXT_CHARS - 10)
    assert texts[1].startswith("y" * 10 + "\n[... the rest of this answer is not shown live")
    assert sum(t.count("x") + t.count("y") for t in texts) == streaming.LIVE_TEXT_CHARS


async def test_a_call_ends_when_its_end_meets_a_publish_that_is_finishing():
    """The call's end cancels its publisher in the very step its publish completes: the
    publisher still ends (asyncio.wait_for on Python 3.11 swallows a cancellation that meets
    its inner future's completion, and the publisher then waited for ever, holding the
    activity and, at shutdown, the worker)."""
    gate, flushing = asyncio.Event(), asyncio.Event()

    class Stream:
        def topic(self, *_: object, **__: object) -> SimpleNamespace:
            return SimpleNamespace(publish=lambda item: None)

        async def flush(self) -> None:
            flushing.set()
            await gate.wait()

    async def call() -> None:
        output = streaming.Output("code_writer", 0.01, streaming.Spend())
        output.client = Stream()  # type: ignore[assignment]
        async with output:
            output.text("hello")  # wakes the publisher
            await flushing.wait()  # which is inside its publish now
            gate.set()  # the publish completes in the step the call's end cancels it

    await asyncio.wait_for(call(), 10)
