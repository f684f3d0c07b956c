"""Model calls that survive the real world: a fake OpenAI-compatible server on a real socket,
the real openai SDK pointed at it through OPENAI_BASE_URL, builds on the real dev server.
With faults injected, requests = logical calls + injected faults, exactly."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import pytest
from sqlalchemy import Engine
from temporalio.client import Client, WorkflowFailureError
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.model.llm import ModelClient
from core.events import EventType
from core.reports import TestAudit
from core.role_io import RoleTask
from core.settings import RoleModel, Settings
from core.states import BuildState, Role
from tests.fake_openai import FakeOpenAI, Fault
from tests.helpers import fields, make_request, running_worker, start, status_of
from workflows.build import BuildWorkflow

S = BuildState
LOGICAL_CALLS = 6  # discovery, plan, code, test audit, review, release notes


async def build(client: Client, settings: Settings, engine: Engine, **options):
    async with running_worker(client, settings, engine, ModelClient(settings)):
        handle = await start(client, settings, make_request(**options))
        try:
            result = await handle.result()
        finally:
            status = await status_of(handle)
    return handle, result, status


@pytest.mark.slow  # waits for Retry-After
async def test_429_with_retry_after_waits_at_least_that_long_then_succeeds(
    client: Client, online: Settings, engine: Engine, fake: FakeOpenAI
):
    fake.fail("DiscoveryOutput", Fault("status", 429, retry_after=2))
    _, result, _ = await build(client, online, engine)
    assert result.state is S.COMPLETE
    first, second = [r.at for r in fake.requests if r.schema == "DiscoveryOutput"]
    assert second - first >= 2.0
    assert fake.count() == LOGICAL_CALLS + 1


async def test_a_rejected_key_ends_failed_at_once_with_the_clear_message(
    client: Client, online: Settings, engine: Engine, fake: FakeOpenAI
):
    fake.fail("DiscoveryOutput", Fault("status", 401))
    async with running_worker(client, online, engine, ModelClient(online)):
        handle = await start(client, online, make_request())
        with pytest.raises(WorkflowFailureError):
            await handle.result()
        status = await status_of(handle)
    assert status.state is S.FAILED
    assert status.last_error is not None
    assert "OPENAI_API_KEY rejected by the endpoint (HTTP 401" in status.last_error
    assert fake.count() == 1  # no SDK retry, no Temporal retry


async def test_invalid_and_schema_breaking_answers_are_asked_again(
    client: Client, online: Settings, engine: Engine, fake: FakeOpenAI
):
    fake.fail("PlanOutput", Fault("invalid_json"), Fault("schema_break"))
    _, result, status = await build(client, online, engine)
    assert (
        result.state is S.COMPLETE and status.attempts[BuildState.PLANNING] == 1
    )  # re-asked in the call
    assert fake.count("PlanOutput") == 3 and fake.count() == LOGICAL_CALLS + 2


async def test_an_answer_never_the_schema_fails_the_build_with_its_spend_recorded(
    client: Client, online: Settings, engine: Engine, fake: FakeOpenAI
):
    tries = online.llm_schema_reasks + 1
    fake.fail("PlanOutput", *[Fault("schema_break")] * tries)
    async with running_worker(client, online, engine, ModelClient(online)):
        handle = await start(client, online, make_request())
        with pytest.raises(WorkflowFailureError):
            await handle.result()
        status = await status_of(handle)
        events = await handle.query(BuildWorkflow.event_log, 0)
    assert status.state is S.FAILED and status.last_error is not None
    assert f"did not match PlanOutput after {tries} tries" in status.last_error
    calls = [e for e in events if e.event_type is EventType.ROLE_CALL]
    failed = calls[-1]
    assert failed.triggered_by == "q_assistant" and fields(failed)["failed"] is True
    assert fields(failed)["requests"] == tries and fields(failed)["completion_tokens"] > 0
    assert fields(calls[0])["failed"] is False  # discovery's answer was used
    # Every request the server saw is paid for in some call's usage, the failed one's too.
    assert sum(u["requests"] for u in status.usage.values()) == fake.count()


@pytest.mark.slow
async def test_exact_request_count_under_every_kind_of_fault(
    client: Client, online: Settings, engine: Engine, fake: FakeOpenAI
):
    fake.fail("DiscoveryOutput", Fault("status", 500))
    fake.fail("PlanOutput", Fault("status", 503), Fault("cut"))
    fake.fail("ImplementationOutput", Fault("hang", seconds=3))  # past the 1.5 s timeout
    fake.fail("TestAudit", Fault("status", 429, retry_after=1))
    fake.fail("VerificationReport", Fault("invalid_json"))
    fake.fail("ReleaseNotes", Fault("status", 408), Fault("schema_break"))
    _, result, status = await build(client, online, engine)
    assert result.state is S.COMPLETE and status.loop_backs == 0
    assert fake.faults_injected == 8
    assert fake.count() == LOGICAL_CALLS + 8  # exactly: no SDK retry stacked on Temporal's
    # Every request the server saw is in the usage of the call it was part of: a failed
    # attempt's requests are carried into the attempt that succeeds (streaming.carried).
    assert sum(u["requests"] for u in status.usage.values()) == fake.count()


async def test_a_long_call_heartbeats_often_enough_for_its_heartbeat_timeout(
    online: Settings, fake: FakeOpenAI
):
    slow = online.model_copy(update={"llm_timeout_seconds": 5})
    fake.fail("TestAudit", Fault("hang", seconds=1.2))
    beats: list[str] = []
    env = ActivityEnvironment()
    # A 0.6 s heartbeat timeout: a beat every 0.2 s (a third), not the 5 s default.
    env.info = dataclasses.replace(env.info, heartbeat_timeout=timedelta(seconds=0.6))
    env.on_heartbeat = lambda *details: beats.append(str(details[0]))
    client = ModelClient(slow)
    task = RoleTask(
        build_id="b",
        project_id="p",
        role=Role.TEST_AUDITOR,
        state=S.TESTING,
        attempt=1,
        requirements="x",
    )
    with pytest.raises(ApplicationError) as err:  # the hang ends in a closed connection
        await env.run(client.structured, task, TestAudit)
    assert err.value.type == "ModelUnreachable" and not err.value.non_retryable
    asking = [b for b in beats if b.startswith("test_auditor asking gpt-4o-mini (json_schema)")]
    assert len(asking) >= 3 and asking[-1].endswith("no tokens yet after 1s")
    await client.close()


async def test_per_role_model_settings_and_a_fallback_after_failed_attempts(
    client: Client, online: Settings, engine: Engine, fake: FakeOpenAI
):
    roles = {
        Role.CODE_WRITER: RoleModel(
            model="gpt-4.1", temperature=0.2, max_tokens=3000, fallback_model="gpt-4o-mini"
        )
    }
    tuned = online.model_copy(update={"llm_roles": roles, "llm_fallback_after_attempts": 1})
    fake.fail("ImplementationOutput", Fault("status", 503))
    _, result, status = await build(client, tuned, engine)
    assert result.state is S.COMPLETE
    first, second = [r.body for r in fake.requests if r.schema == "ImplementationOutput"]
    assert (first["model"], first["temperature"], first["max_tokens"]) == ("gpt-4.1", 0.2, 3000)
    assert second["model"] == "gpt-4o-mini"  # the primary failed once: the fallback answers
    others = [r.body for r in fake.requests if r.schema != "ImplementationOutput"]
    assert {b["model"] for b in others} == {"gpt-4o-mini"} and "temperature" not in others[0]
    assert status.usage["code_writer"]["cost_usd"] > 0
