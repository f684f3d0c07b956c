"""Prompts fit the model (activities/model/fitting.py): a task is cut to the context window, set or
told by the server, with room for the answer; a server that still refuses the prompt's size
gets it once more at half the size, never the same prompt again."""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

import httpx2
import pytest
from pydantic import SecretStr
from temporalio.exceptions import ApplicationError

from activities.model import fitting, offline
from core.role_io import PlanOutput, RoleTask
from core.settings import Settings
from core.states import BuildState, Role
from tests.helpers import model_client_with


def big_task(repository_map: str) -> RoleTask:
    return RoleTask(
        build_id=f"b-{uuid.uuid4().hex[:8]}", project_id="p", role=Role.Q_ASSISTANT,
        state=BuildState.PLANNING, attempt=1, requirements={"feature": "Dark mode"},
        context={"repository_map": repository_map, "files": {"a.py": "x = 1\n" * 50}},
    )  # fmt: skip


def test_the_longest_texts_are_cut_first_and_marked_until_the_whole_fits():
    payload = {"map": "m" * 30_000, "file": "f" * 5_000, "small": "keep me", "n": 3}
    fitted, cut = fitting.fit(payload, 12_000)
    assert len(json.dumps(fitted, sort_keys=True)) <= 12_000
    assert fitted["small"] == "keep me" and fitted["n"] == 3 and fitted["file"] == payload["file"]
    assert "characters cut to fit the model's context window" in fitted["map"]
    assert fitted["map"].startswith("m" * 100) and fitted["map"].endswith("m" * 100)
    kept = re.sub(r"\n\[\.\.\. .* \.\.\.\]\n", "", fitted["map"])
    assert set(kept) == {"m"} and cut == 30_000 - len(kept)
    assert payload["map"] == "m" * 30_000  # the task itself is left as it was
    assert fitting.fit(payload, 10**6) == (payload, 0)


def test_what_cannot_be_cut_further_is_left_as_it_is():
    payload = {"items": ["x" * 100] * 50}
    fitted, cut = fitting.fit(payload, 500)
    assert (fitted, cut) == (payload, 0)


def test_the_budget_keeps_room_for_the_answer_and_the_system_prompt():
    assert fitting.budget(8192, "s" * 3000, None) == (8192 - 2048) * 3 - 3000
    assert fitting.budget(8192, "", 1000) == (8192 - 1000) * 3
    assert fitting.budget(1024, "s" * 10_000, None) == 0


def llama_cpp_sized(window: int, seen: list[int]) -> Any:
    """A server with a context of `window` tokens (four characters each): it says so in
    /props, and refuses a longer prompt as llama.cpp's server does."""

    async def handler(request: httpx2.Request) -> Any:
        if request.url.path.endswith("/models"):
            return httpx2.Response(200, json={"data": [{"id": "small", "object": "model"}]})
        if request.url.path.endswith("/props"):
            return httpx2.Response(200, json={"default_generation_settings": {"n_ctx": window}})
        body = json.loads(request.content)
        size = len(json.dumps(body["messages"])) // 4
        seen.append(size)
        if size > window:
            message = f"Requested tokens ({size}) exceed context window of {window}"
            return httpx2.Response(400, json={"error": {"message": message, "code": 400}})
        whole = {**body, "response_format": {"type": "json_schema",
                                             "json_schema": {"name": "PlanOutput"}}}  # fmt: skip
        answer = await offline.handle(httpx2.Request("POST", request.url, json=whole))
        return answer

    return handler


def online(settings: Settings, **update: Any) -> Settings:
    return settings.model_copy(update={
        "openai_api_key": SecretStr("k"), "openai_base_url": f"http://{uuid.uuid4().hex[:6]}.test/v1",
        "llm_model": "small", **update})  # fmt: skip


async def test_a_task_is_cut_to_the_window_the_server_tells(settings: Settings):
    seen: list[int] = []
    client = model_client_with(online(settings), llama_cpp_sized(4096, seen))
    answer, usage = await client.structured(big_task("def f(): pass\n" * 5_000), PlanOutput)
    assert answer.steps and usage.context_cut > 50_000
    assert len(seen) == 1 and seen[0] <= 4096  # asked once, and it fitted
    await client.close()


async def test_a_refusal_for_size_is_asked_once_more_at_half_and_then_given_up(
    settings: Settings,
):
    seen: list[int] = []
    # The setting claims 64k tokens; the server has 4k: the first prompt is refused.
    told = online(settings, llm_context_tokens=65_536)
    client = model_client_with(told, llama_cpp_sized(4096, seen))
    answer, usage = await client.structured(big_task("def f(): pass\n" * 1_500), PlanOutput)
    assert answer.steps and len(seen) == 2 and seen[1] < seen[0] * 0.75
    assert usage.context_cut > 0
    seen.clear()
    with pytest.raises(ApplicationError) as err:  # half of far too much is still too much
        await client.structured(big_task("def f(): pass\n" * 60_000), PlanOutput)
    assert err.value.type == "ModelContextExceeded" and err.value.non_retryable
    assert "LLM_CONTEXT_TOKENS" in str(err.value)
    assert len(seen) == 2
    await client.close()
