"""`starter.py model check` (activities/model/probe.py): a llama.cpp-like endpoint is probed
through the real openai SDK, mode by mode, streamed, and asked its context window; a rejected
key is one line."""

from __future__ import annotations

import json
from typing import Any

import httpx2
import pytest
from pydantic import SecretStr
from temporalio.exceptions import ApplicationError

from activities.model.probe import ProbeFailed, check_at_start, probe
from core.role_io import PlanOutput, RoleTask
from core.settings import RoleModel, Settings
from core.states import BuildState, Role
from tests.helpers import model_client_with

ANSWER = '{"answer": 5}'


def _completion(message: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": "x", "object": "chat.completion", "created": 0, "model": "m",
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", **message}}],
        "usage": {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12},
    }  # fmt: skip


def _stream(with_usage: bool) -> bytes:
    chunks = [
        {"id": "x", "object": "chat.completion.chunk", "created": 0, "model": "m",
         "choices": [{"index": 0, "delta": {"content": part}, "finish_reason": None}]}
        for part in ("The ", "answer ", "is 5.")
    ]  # fmt: skip
    if with_usage:
        chunks.append({"id": "x", "object": "chat.completion.chunk", "created": 0, "model": "m",
                       "choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 3,
                                                "total_tokens": 12}})  # fmt: skip
    return b"".join(f"data: {json.dumps(c)}\n\n".encode() for c in chunks) + b"data: [DONE]\n\n"


async def llama_cpp_like(request: httpx2.Request) -> httpx2.Response:
    """llama-cpp-python's server as met here: json_schema refused with a 500, tools and JSON
    mode taken, streams with usage when asked, its context in /props."""
    if request.method == "GET":
        if request.url.path.endswith("/props"):
            return httpx2.Response(200, json={"default_generation_settings": {"n_ctx": 8192}})
        return httpx2.Response(200, json={"object": "list", "data": [{"id": "gemma"}]})
    body = json.loads(request.content)
    if body.get("stream"):
        usage = bool((body.get("stream_options") or {}).get("include_usage"))
        headers = {"content-type": "text/event-stream"}
        return httpx2.Response(200, content=_stream(usage), headers=headers)
    fmt = body.get("response_format") or {}
    if fmt.get("type") == "json_schema":
        why = "response_format.type: Input should be 'text' or 'json_object'"
        return httpx2.Response(500, json={"error": {"message": why, "code": 500}})
    if body.get("tools"):
        call = {"id": "c", "type": "function", "function": {"name": "Sum", "arguments": ANSWER}}
        return httpx2.Response(200, json=_completion({"content": None, "tool_calls": [call]}))
    if fmt.get("type") == "json_object":
        return httpx2.Response(200, json=_completion({"content": ANSWER}))
    return httpx2.Response(200, json=_completion({"content": f"Sure: {ANSWER}"}))


def online(settings: Settings) -> Settings:
    return settings.model_copy(
        update={"openai_api_key": SecretStr("sk-test"), "openai_base_url": "http://llm.test/v1",
                "llm_model": "gemma"}
    )  # fmt: skip


async def test_a_llama_cpp_like_endpoint_is_probed_mode_by_mode(settings: Settings):
    llm = model_client_with(online(settings), llama_cpp_like)
    report = await probe(llm)
    assert report.modes["json_schema"].startswith("refused (HTTP 500")
    assert {m: said for m, said in report.modes.items() if m != "json_schema"} == {
        "tools": "works", "json_object": "works", "text": "works",
    }  # fmt: skip
    assert report.auto_mode == "tools"
    assert report.streaming == "works, 4 chunks, usage included"
    assert report.context_window == 8192 and report.model == "gemma"
    await llm.close()


async def test_a_rejected_key_is_one_line(settings: Settings):
    async def denied(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(401, json={"error": {"message": "Incorrect API key provided"}})

    llm = model_client_with(online(settings), denied)
    with pytest.raises(ProbeFailed, match="OPENAI_API_KEY rejected by the endpoint"):
        await probe(llm)
    await llm.close()


async def test_the_workers_check_probes_each_model_once_and_asks_the_mode_that_works_first(
    settings: Settings, caplog: pytest.LogCaptureFixture
):
    asked: list[tuple[str, str]] = []

    async def counted(request: httpx2.Request) -> httpx2.Response:
        if request.method == "POST":
            body = json.loads(request.content)
            fmt = (body.get("response_format") or {}).get("type") or (
                "tools" if body.get("tools") else "text"
            )
            asked.append((body["model"], fmt))
        return await llama_cpp_like(request)

    coder = {Role.CODE_WRITER: RoleModel(model="coder")}
    two = online(settings).model_copy(update={"llm_roles": coder, "llm_stream": False})
    llm = model_client_with(two, counted)
    caplog.set_level("INFO", logger="model")
    reports = await check_at_start(llm)
    assert sorted(r.model for r in reports) == ["coder", "gemma"]  # each model once
    lines = [r.getMessage() for r in caplog.records if r.name == "model"]
    assert len(lines) == 2 and all("auto uses tools" in line for line in lines), lines
    assert "json_schema refused (HTTP 500" in lines[0] and "8,192 tokens" in lines[0]
    probed = len(asked)
    task = RoleTask(build_id="b", project_id="p", role=Role.Q_ASSISTANT,
                    state=BuildState.PLANNING, attempt=1, requirements="x")  # fmt: skip
    with pytest.raises(ApplicationError, match="did not match PlanOutput"):  # it answers Sums
        await llm.structured(task, PlanOutput)
    assert asked[probed][1] == "tools"  # the mode the check found, not a refused json_schema
    await llm.close()


async def test_the_workers_check_of_an_endpoint_that_refuses_it_is_one_line(
    settings: Settings, caplog: pytest.LogCaptureFixture
):
    async def denied(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(401, json={"error": {"message": "Incorrect API key provided"}})

    llm = model_client_with(online(settings), denied)
    assert await check_at_start(llm) == []  # said, not raised: the worker serves on
    (line,) = [r for r in caplog.records if r.name == "model"]
    assert line.levelname == "ERROR" and line.exc_info is None
    assert "OPENAI_API_KEY rejected by the endpoint (HTTP 401" in line.getMessage()
    await llm.close()
