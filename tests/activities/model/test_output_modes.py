"""Output modes found at run time (activities/model/output_modes.py, activities/model/llm.py):
endpoints that behave as real server families do (llama.cpp's server refuses `json_schema` with a
500 and takes a forced tool call; others accept every mode and ignore it, answering prose around a
fenced JSON object; some refuse everything) are met through the real openai SDK. `auto` steps
down to the mode that works, remembers it per endpoint and model, and records it; a configured
mode is used as it is."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable
from typing import Any

import httpx2
import pytest
from openai.types.chat import ChatCompletionMessage
from sqlalchemy import Engine
from temporalio.client import Client
from temporalio.exceptions import ApplicationError

from activities.model import offline, output_modes
from activities.model.output_modes import Mode, ModeRefused, NoJson, OutputInvalid
from core.events import EventType
from core.role_io import PlanOutput, RoleTask
from core.settings import RoleModel, Settings
from core.states import BuildState, Role
from tests.helpers import fields, make_request, model_client_with, running_worker, start
from workflows.build import BuildWorkflow

Handler = Callable[[httpx2.Request], Any]


def schema_name(body: dict[str, Any]) -> str:
    """Which answer a request asks for, in any mode: what a server knows of it."""
    fmt = body.get("response_format") or {}
    if fmt.get("type") == "json_schema":
        return str(fmt["json_schema"]["name"])
    if body.get("tools"):
        return str(body["tools"][0]["function"]["name"])
    found = re.search(r'"title": "(\w+)"', body["messages"][0]["content"])
    assert found, "the schema is in the system prompt"
    return found.group(1)


async def offline_answer(request: httpx2.Request) -> tuple[dict[str, Any], str]:
    """The request's body and the offline model's answer to it, as JSON text."""
    body = json.loads(request.content)
    fmt = {"type": "json_schema", "json_schema": {"name": schema_name(body)}}
    asked = httpx2.Request("POST", request.url, json={**body, "response_format": fmt})
    return body, await offline.content_of(asked)


def reply(body: dict[str, Any], content: str | None, tool_args: str | None = None) -> Any:
    """The answer, streamed as the request asks (tool-call arguments split across chunks)."""
    return offline.respond(body, content or "", tool_args)


def llama_cpp(seen: list[str]) -> Handler:
    """llama-cpp-python's server: a 500 naming the field for json_schema; tools and JSON mode
    work."""

    async def handler(request: httpx2.Request) -> Any:
        body, content = await offline_answer(request)
        fmt = body.get("response_format") or {}
        seen.append("tools" if body.get("tools") else fmt.get("type", "text"))
        if fmt.get("type") == "json_schema":
            message = (
                "1 validation error: response_format.type Input should be 'text' or 'json_object'"
            )
            return httpx2.Response(500, json={"error": {"message": message, "code": 500}})
        if body.get("tools"):
            return reply(body, None, tool_args=content)
        return reply(body, content)

    return handler


def ignores_modes(seen: list[str]) -> Handler:
    """A server that takes every request and ignores its form: prose around fenced JSON."""

    async def handler(request: httpx2.Request) -> Any:
        body, content = await offline_answer(request)
        fmt = body.get("response_format") or {}
        seen.append("tools" if body.get("tools") else fmt.get("type", "text"))
        return reply(body, f"Sure! Here it is:\n```json\n{content}\n```\nAnything else?")

    return handler


def refuses_everything(seen: list[str]) -> Handler:
    async def handler(request: httpx2.Request) -> Any:
        seen.append("any")
        error = {"error": {"message": "unsupported request", "type": "invalid_request_error"}}
        return httpx2.Response(400, json=error)

    return handler


def plan_task() -> RoleTask:
    return RoleTask(
        build_id=f"b{uuid.uuid4().hex[:8]}", project_id="p", role=Role.Q_ASSISTANT,
        state=BuildState.PLANNING, attempt=1, requirements={"feature": "Dark mode"},
    )  # fmt: skip


def offline_settings(base: Settings, **update: Any) -> Settings:
    return base.model_copy(update={"llm_model": f"m-{uuid.uuid4().hex[:6]}", **update})


async def test_auto_steps_down_from_a_refused_mode_and_remembers_the_one_that_worked(
    settings: Settings,
):
    seen: list[str] = []
    llm = model_client_with(offline_settings(settings), llama_cpp(seen))
    plan, usage = await llm.structured(plan_task(), PlanOutput)
    assert plan.files and usage.output_mode == "tools" and seen == ["json_schema", "tools"]
    assert usage.requests == 2 and usage.prompt_tokens > 0
    seen.clear()
    _, again = await llm.structured(plan_task(), PlanOutput)  # the same endpoint and model
    assert seen == ["tools"] and again.output_mode == "tools" and again.requests == 1
    await llm.close()


async def test_auto_uses_an_answer_to_an_ignored_mode_and_asks_weaker_modes_after(
    settings: Settings,
):
    """Each answer is used (no call is paid for twice), read as text, and the next call starts
    a mode lower, until the modes asked are the ones the server keeps to."""
    seen: list[str] = []
    llm = model_client_with(offline_settings(settings), ignores_modes(seen))
    asked = []
    for _ in range(3):
        seen.clear()
        plan, usage = await llm.structured(plan_task(), PlanOutput)
        assert plan.files and usage.output_mode == "text"
        asked.append(list(seen))
    # tools: no tool call, so no answer: json_object is asked in the same call
    assert asked == [["json_schema"], ["tools", "json_object"], ["text"]]
    await llm.close()


@pytest.mark.parametrize(
    ("broken", "asked"), [(1, ["json_schema"] * 2), (3, ["json_schema"] * 3 + ["tools"])]
)
async def test_one_answer_without_json_is_re_asked_but_only_prose_steps_down(
    settings: Settings, broken: int, asked: list[str]
):
    """Where the server enforces JSON, an answer without any is re-asked in the same mode (one
    broken answer says nothing of the server); when every answer of the call is without JSON,
    the server ignores the mode, and the call goes on a mode lower."""
    seen: list[str] = []
    served = llama_cpp([])

    async def handler(request: httpx2.Request) -> Any:
        body = json.loads(request.content)
        fmt = body.get("response_format") or {}
        seen.append("tools" if body.get("tools") else fmt.get("type", "text"))
        if len(seen) <= broken:
            return reply(body, "I will answer in prose.")
        if fmt.get("type") == "json_schema":
            return reply(body, (await offline_answer(request))[1])
        return await served(request)

    llm = model_client_with(offline_settings(settings), handler)
    _, usage = await llm.structured(plan_task(), PlanOutput)
    assert seen == asked and usage.output_mode == asked[-1] and usage.requests == len(asked)
    await llm.close()


async def test_a_configured_mode_is_asked_as_it_is(settings: Settings):
    seen: list[str] = []
    roles = {Role.Q_ASSISTANT: RoleModel(output_mode="json_object")}
    llm = model_client_with(offline_settings(settings, llm_roles=roles), llama_cpp(seen))
    _, usage = await llm.structured(plan_task(), PlanOutput)
    assert seen == ["json_object"] and usage.output_mode == "json_object"
    await llm.close()


async def test_an_endpoint_that_takes_no_mode_fails_once_with_every_reason(settings: Settings):
    seen: list[str] = []
    llm = model_client_with(offline_settings(settings), refuses_everything(seen))
    with pytest.raises(ApplicationError) as failed:
        await llm.structured(plan_task(), PlanOutput)
    # Plain text is the last way to ask: its refusal is the endpoint's answer to the request.
    assert failed.value.type == "ModelRequestRejected" and failed.value.non_retryable
    assert len(seen) == 4 and "unsupported request" in str(failed.value)
    only = {Role.Q_ASSISTANT: RoleModel(output_mode="tools")}
    llm = model_client_with(offline_settings(settings, llm_roles=only), refuses_everything(seen))
    with pytest.raises(ApplicationError) as failed:
        await llm.structured(plan_task(), PlanOutput)
    assert failed.value.type == "ModelModeRefused" and "tools: HTTP 400" in str(failed.value)
    assert "output_mode in LLM_ROLES" in str(failed.value)
    await llm.close()


async def test_an_answer_that_is_not_the_schema_is_re_asked_with_why_in_text_mode(
    settings: Settings,
):
    bodies: list[dict[str, Any]] = []

    async def handler(request: httpx2.Request) -> Any:
        body, content = await offline_answer(request)
        bodies.append(body)
        if len(bodies) == 1:
            return reply(body, 'Here: {"summary": "no steps"}')
        return reply(body, content)

    llm = model_client_with(offline_settings(settings, llm_output_mode="text"), handler)
    _, usage = await llm.structured(plan_task(), PlanOutput)
    assert usage.requests == 2 and usage.output_mode == "text"
    reask = bodies[1]["messages"][-1]["content"]
    assert "did not match the schema" in reask and "steps" in reask
    await llm.close()


@pytest.mark.parametrize("stream", [True, False])
async def test_a_tool_call_cut_at_max_tokens_is_re_asked_as_cut_off_whatever_the_server_says(
    settings: Settings, stream: bool
):
    """llama-cpp-python's server ends a forced tool call cut at `max_tokens` with finish reason
    `tool_calls`, not `length`: a call that used every token allowed was cut off, and the
    re-ask says so (not only that the JSON breaks)."""
    limit, bodies = 4000, []

    async def handler(request: httpx2.Request) -> Any:
        body, content = await offline_answer(request)
        bodies.append(body)
        cut = len(bodies) == 1
        args = content[: len(content) // 2] if cut else content
        answer = offline.respond({**body, "stream": False}, "", tool_args=args)
        whole = json.loads(answer.content)
        whole["usage"]["completion_tokens"] = limit if cut else limit // 2
        if not body.get("stream"):
            return httpx2.Response(200, json=whole)
        call = whole["choices"][0]["message"]["tool_calls"][0]
        head = {k: whole[k] for k in ("id", "created", "model")} | {
            "object": "chat.completion.chunk"
        }
        delta = {"tool_calls": [{"index": 0, **call}]}
        chunks = [
            head | {"choices": [{"index": 0, "delta": delta, "finish_reason": "tool_calls"}]},
            head | {"choices": [], "usage": whole["usage"]},
        ]
        text = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"
        return httpx2.Response(200, headers={"content-type": "text/event-stream"}, text=text)

    roles = {Role.Q_ASSISTANT: RoleModel(output_mode="tools", max_tokens=limit)}
    llm = model_client_with(offline_settings(settings, llm_roles=roles, llm_stream=stream), handler)
    plan, usage = await llm.structured(plan_task(), PlanOutput)
    assert plan.files and usage.requests == 2
    assert bodies[0]["max_tokens"] == limit
    assert "cut off at the token limit" in bodies[1]["messages"][-1]["content"]
    await llm.close()


async def test_a_build_against_a_llama_cpp_like_server_completes_and_records_its_modes(
    client: Client, settings: Settings, engine: Engine
):
    seen: list[str] = []
    llm = model_client_with(offline_settings(settings), llama_cpp(seen))
    async with running_worker(client, settings, engine, llm):
        handle = await start(client, settings, make_request())
        result = await handle.result()
        events = await handle.query(BuildWorkflow.event_log, 0)
    calls = [fields(e) for e in events if e.event_type is EventType.ROLE_CALL]
    assert result.state is BuildState.COMPLETE and calls
    assert {c["output_mode"] for c in calls} == {"tools"}
    assert seen.count("json_schema") == 1  # refused once, then remembered


# --- reading answers ------------------------------------------------------------------


def message(content: str | None = None, tool_args: str | None = None) -> ChatCompletionMessage:
    calls = (
        [
            {
                "id": "c",
                "type": "function",
                "function": {"name": "PlanOutput", "arguments": tool_args},
            }
        ]
        if tool_args is not None
        else None
    )
    return ChatCompletionMessage.model_validate(
        {"role": "assistant", "content": content, "tool_calls": calls}
    )


PLAN = {"summary": "s", "steps": ["a"], "files": ["x.py"], "test_strategy": "t"}


@pytest.mark.parametrize(
    "text",
    [
        json.dumps(PLAN),
        f"```json\n{json.dumps(PLAN)}\n```",
        f"Sure, {{braces}} first. Here:\n```\n{json.dumps(PLAN, indent=2)}\n```\nDone.",
    ],
)
def test_the_first_json_object_is_read_out_of_prose_and_fences(text: str) -> None:
    assert output_modes.read(Mode.TEXT, message(text), "stop", PlanOutput).files == ["x.py"]


def test_a_forced_tool_call_is_read_from_its_arguments_and_its_absence_is_a_refusal() -> None:
    assert output_modes.read(Mode.TOOLS, message(tool_args=json.dumps(PLAN)), "stop", PlanOutput)
    with pytest.raises(ModeRefused):
        output_modes.read(Mode.TOOLS, message(json.dumps(PLAN)), "stop", PlanOutput)


def test_an_answer_without_json_or_cut_off_is_invalid_not_a_refusal_on_its_own() -> None:
    for mode in (Mode.JSON_SCHEMA, Mode.JSON_OBJECT, Mode.TEXT):
        with pytest.raises(NoJson):
            output_modes.read(mode, message("I cannot do JSON."), "stop", PlanOutput)
    with pytest.raises(OutputInvalid, match="cut off"):
        output_modes.read(Mode.JSON_SCHEMA, message('{"summary": "s", "st'), "length", PlanOutput)


def test_raw_newlines_in_strings_are_read_and_broken_json_says_where() -> None:
    raw = '{"summary": "two\nlines", "steps": ["a"], "files": [], "test_strategy": "t"}'
    assert output_modes.first_json_object(raw)["summary"] == "two\nlines"
    with pytest.raises(ValueError, match=r"breaks at character 16 \(Expecting ','") as err:
        output_modes.first_json_object('{"summary": "s" "steps": []}')
    assert 'near \'{"summary": "s" "steps": []}\'' in str(err.value)


def test_json_modes_carry_the_schema_in_the_request_and_the_prompt() -> None:
    base = [{"role": "system", "content": "You plan."}, {"role": "user", "content": "{}"}]
    strict = output_modes.request(Mode.JSON_SCHEMA, PlanOutput, base)
    assert strict["response_format"]["json_schema"]["strict"] is True
    assert strict["messages"] == base
    tools = output_modes.request(Mode.TOOLS, PlanOutput, base)
    assert tools["tool_choice"]["function"]["name"] == tools["tools"][0]["function"]["name"]
    for mode in (Mode.JSON_OBJECT, Mode.TEXT):
        asked = output_modes.request(mode, PlanOutput, base)
        assert '"title": "PlanOutput"' in asked["messages"][0]["content"]
        assert asked["messages"][1:] == base[1:]
    assert output_modes.request(Mode.JSON_OBJECT, PlanOutput, base)["response_format"]["schema"]
    assert "response_format" not in output_modes.request(Mode.TEXT, PlanOutput, base)
