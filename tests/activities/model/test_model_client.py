"""Role calls through the real openai SDK: the offline model, schema re-asks, refused requests."""

from __future__ import annotations

import json
from pathlib import Path

import httpx2
import pytest
from temporalio.exceptions import ApplicationError

from activities.model.llm import ModelClient
from activities.model.offline import SIMULATE_HEADER, slug
from activities.model.wire import retry_after
from core.reports import TestReport
from core.role_io import RoleTask
from core.settings import Settings
from core.states import BuildState, Role
from tests.helpers import model_client_with

S = BuildState


def task(state: BuildState, role: Role, attempt: int = 1, simulate=()) -> RoleTask:
    return RoleTask(
        build_id="b1",
        project_id="p",
        role=role,
        state=state,
        attempt=attempt,
        requirements={"feature": "Dark mode", "priority": "high"},
        simulate=list(simulate),
    )


@pytest.fixture(autouse=True)
def own_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test's settings keep their answers in a folder of its own (DATA_DIR is relative)."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def offline() -> ModelClient:
    return ModelClient(Settings(_env_file=None, openai_api_key=None))  # type: ignore[call-arg]


def test_slug_makes_importable_module_names():
    assert slug("Dark mode") == "dark_mode"
    assert slug("2FA login!") == "f_2fa_login"
    assert slug("???") == "feature"


def _scripted(settings: Settings, answers: list[httpx2.Response], seen: list[dict]) -> ModelClient:
    async def handler(request: httpx2.Request) -> httpx2.Response:
        seen.append({"body": json.loads(request.content), "headers": dict(request.headers)})
        return answers.pop(0)

    return model_client_with(settings, handler)


def _chat(content: str) -> httpx2.Response:
    return httpx2.Response(
        200,
        json={
            "id": "x",
            "object": "chat.completion",
            "created": 0,
            "model": "m",
            "choices": [
                {
                    "index": 0,
                    "finish_reason": "stop",
                    "message": {"role": "assistant", "content": content, "refusal": None},
                }
            ],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
        },
    )


GOOD_REPORT = json.dumps({"passed": True, "summary": "ok", "tests_run": 1, "failures": []})


async def test_schema_invalid_answer_is_asked_again_with_the_error():
    seen: list[dict] = []
    settings = Settings(_env_file=None, openai_api_key="sk-test")  # type: ignore[call-arg]
    client = _scripted(settings, [_chat('{"passed": "maybe"}'), _chat(GOOD_REPORT)], seen)
    report, usage = await client.structured(task(S.TESTING, Role.TEST_AUDITOR), TestReport)
    assert report.passed
    assert len(seen) == 2
    retry_prompt = seen[1]["body"]["messages"][-1]["content"]
    assert "did not match the schema" in retry_prompt and "passed" in retry_prompt
    assert usage.prompt_tokens == 20  # the invalid answer was paid for too
    assert SIMULATE_HEADER not in seen[0]["headers"]  # real endpoints never see simulate


async def test_schema_invalid_every_time_is_non_retryable():
    seen: list[dict] = []
    settings = Settings(_env_file=None, openai_api_key="sk-test", llm_schema_reasks=3)  # type: ignore[call-arg]
    client = _scripted(settings, [_chat('{"passed": "maybe"}')] * 4, seen)
    with pytest.raises(ApplicationError) as err:
        await client.structured(task(S.TESTING, Role.TEST_AUDITOR), TestReport)
    assert err.value.non_retryable and err.value.type == "ModelOutputInvalid"
    assert len(seen) == 4  # LLM_SCHEMA_REASKS re-asks after the first answer
    (spent,) = err.value.details  # what the four answers cost, for the build's records
    assert spent["requests"] == 4 and spent["prompt_tokens"] == 40
    assert spent["completion_tokens"] == 20 and spent["output_mode"] == "json_schema"


async def test_rejected_key_is_a_clear_non_retryable_error():
    seen: list[dict] = []
    settings = Settings(_env_file=None, openai_api_key="sk-bad")  # type: ignore[call-arg]
    denied = httpx2.Response(401, json={"error": {"message": "Incorrect API key provided"}})
    client = _scripted(settings, [denied], seen)
    with pytest.raises(ApplicationError) as err:
        await client.structured(task(S.TESTING, Role.TEST_AUDITOR), TestReport)
    assert err.value.non_retryable
    assert "OPENAI_API_KEY rejected by the endpoint" in str(err.value)
    assert len(seen) == 1  # the SDK's own retries are off


async def test_server_errors_stay_retryable_for_temporal_after_retry_after():
    seen: list[dict] = []
    settings = Settings(_env_file=None, openai_api_key="sk-test")  # type: ignore[call-arg]
    busy = httpx2.Response(503, json={"error": {"message": "busy"}})
    limited = httpx2.Response(
        429, headers={"retry-after": "7"}, json={"error": {"message": "slow down"}}
    )
    client = _scripted(settings, [busy, limited], seen)
    with pytest.raises(ApplicationError) as err:
        await client.structured(task(S.TESTING, Role.TEST_AUDITOR), TestReport)
    assert not err.value.non_retryable and err.value.type == "ModelUnavailable"
    assert err.value.next_retry_delay is None
    with pytest.raises(ApplicationError) as err:
        await client.structured(task(S.TESTING, Role.TEST_AUDITOR), TestReport)
    assert err.value.type == "ModelRateLimited" and not err.value.non_retryable
    assert err.value.next_retry_delay is not None
    assert err.value.next_retry_delay.total_seconds() == 7
    assert len(seen) == 2


def test_retry_after_reads_seconds_and_dates():
    assert retry_after("3") == 3.0
    assert retry_after(None) is None and retry_after("soon") is None
    assert retry_after("100000") == 300.0  # capped
    assert retry_after("Wed, 21 Oct 2015 07:28:00 GMT") is None  # in the past
