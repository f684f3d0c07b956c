"""Builds whose roles do real work, end to end on the real dev server: a failed release put
back, unsafe files refused, a rollback after a release compensated, big code kept out of
workflow history."""

from __future__ import annotations

import asyncio
import json
import os
import uuid

import httpx2
import pytest
from sqlalchemy import Engine
from sqlmodel import Session
from temporalio.client import Client

from activities import offline_model
from activities.workspace import Workspace
from core.messages import RollbackRequest
from core.models import EventType
from core.settings import Settings
from core.states import BuildState
from db import crud
from tests.helpers import (
    make_request,
    model_client_with,
    running_worker,
    save_history,
    start,
    status_of,
    wait_until,
)
from workflows.build import BuildWorkflow

S = BuildState
PAYLOAD_LIMIT = 256 * 1024


async def test_a_release_whose_smoke_check_fails_is_put_back_and_fixed(client: Client, worker):
    handle = await start(client, worker, make_request(simulate=["release_fails"]))
    result = await handle.result()
    assert result.state is S.COMPLETE
    build = result.build_id
    assert result.release["version"] == f"0.1.1+{build}"
    events = await handle.query(BuildWorkflow.event_log, 0)
    loop = next(e for e in events if e.event_type is EventType.LOOP_BACK)
    assert loop.state is S.DEPLOYMENT and loop.data["reason"] == "release failed"
    assert (
        loop.data["release"]["restored"] and "self-check failed" in loop.data["release"]["summary"]
    )
    status = await status_of(handle)
    assert status.attempts["deployment"] == 2 and status.attempts["implementation"] == 2
    releases = worker.releases / "proj-test"
    assert (releases / f"0.1.0+{build}").is_dir()  # the failed one, kept to inspect
    assert os.readlink(releases / "current") == result.release["version"]
    await save_history(handle, "release_fails_once")


async def test_files_outside_the_workspace_fail_the_attempt_and_nothing_is_written(
    client: Client, settings: Settings, engine: Engine
):
    code_writer_calls = 0

    async def model(request: httpx2.Request) -> httpx2.Response:
        nonlocal code_writer_calls
        body = json.loads(request.content)
        if body["response_format"]["json_schema"]["name"] == "ImplementationOutput":
            code_writer_calls += 1
            if code_writer_calls == 1:
                escape = {"path": "../../escaped.py", "content": "print('out')\n"}
                answer = {"summary": "escape", "files": [escape]}
                return httpx2.Response(200, json=offline_model.completion(body, json.dumps(answer)))
        return await offline_model.handle(request)

    async with running_worker(client, settings, engine, model_client_with(settings, model)):
        handle = await start(client, settings, make_request())
        result = await handle.result()
        events = await handle.query(BuildWorkflow.event_log, 0)
        status = await status_of(handle)
    assert result.state is S.COMPLETE and code_writer_calls == 2
    loop = next(e for e in events if e.event_type is EventType.LOOP_BACK)
    assert loop.state is S.IMPLEMENTATION and loop.data["reason"] == "unsafe file paths"
    assert "'..' is refused" in loop.data["error"]
    assert status.attempts["implementation"] == 2 and status.loop_backs == 1
    assert not (settings.workspaces / "escaped.py").exists()
    assert not (settings.workspaces.parent / "escaped.py").exists()
    await save_history(handle, "unsafe_paths_refused")


@pytest.mark.slow  # two builds and a 3 s window
async def test_a_rollback_after_a_release_restores_the_previous_release_and_the_code(
    client: Client, settings: Settings, engine: Engine
):
    project = f"p-{uuid.uuid4().hex[:6]}"
    async with running_worker(client, settings, engine):
        first = await (await start(client, settings, make_request(project=project))).result()

    async def slow_release_notes(request: httpx2.Request) -> httpx2.Response:
        # The release and its smoke check are done when the notes are asked for: a wide,
        # sure window in which the rollback arrives after the release.
        if json.loads(request.content)["response_format"]["json_schema"]["name"] == "ReleaseNotes":
            await asyncio.sleep(3)
        return await offline_model.handle(request)

    llm = model_client_with(settings, slow_release_notes)
    async with running_worker(client, settings, engine, llm):
        handle = await start(client, settings, make_request(project=project))
        await wait_until(handle, lambda s: s.state is S.DEPLOYMENT, seconds=60)
        back = RollbackRequest(target_state=S.IMPLEMENTATION, reason="the copy is wrong")
        accepted = await handle.execute_update(BuildWorkflow.update_rollback, back)
        assert accepted.applies == "after_current_phase"
        result = await handle.result()
        events = await handle.query(BuildWorkflow.event_log, 0)
    await save_history(handle, "rollback_after_release")
    build = result.build_id
    restored = next(e for e in events if e.event_type is EventType.RESTORED)
    assert restored.data["release_undone"] == f"0.1.0+{build}"
    assert restored.data["release_current"] == first.release["version"]
    # The code as it was when the build entered IMPLEMENTATION: the new, empty workspace.
    changes = [e for e in events if e.event_type is EventType.STATE_CHANGED]
    assert next(e.data["commit"] for e in changes if e.data["to"] == "implementation") is None
    workspace = Workspace(settings.workspaces / build)
    assert restored.data["commit"] == workspace.git("rev-list", "--max-parents=0", "HEAD")
    log = workspace.git("log", "--format=%s").splitlines()
    assert log[0].startswith("implementation attempt 2") and len(log) == 2  # attempt 1 undone
    # The build went on: implemented again, released again, and that release is current.
    assert result.release["version"] == f"0.1.1+{build}"
    assert os.readlink(settings.releases / project / "current") == result.release["version"]
    with Session(engine) as session:
        kinds = [r.event_type for r in crud.list_events(session, workflow_id=handle.id)]
    assert "restored" in kinds  # the mirror records what was restored


async def test_a_megabyte_of_code_stays_out_of_workflow_history(
    client: Client, settings: Settings, engine: Engine
):
    big = "DATA = [\n" + "".join(f"    {i:>10},\n" for i in range(75_000)) + "]\n"
    assert len(big) > 1_000_000

    async def model(request: httpx2.Request) -> httpx2.Response:
        body = json.loads(request.content)
        answer = await offline_model.handle(request)
        if body["response_format"]["json_schema"]["name"] != "ImplementationOutput":
            return answer
        content = json.loads(json.loads(answer.content)["choices"][0]["message"]["content"])
        content["files"].append({"path": "big_table.py", "content": big})
        return httpx2.Response(200, json=offline_model.completion(body, json.dumps(content)))

    async with running_worker(client, settings, engine, model_client_with(settings, model)):
        handle = await start(client, settings, make_request())
        result = await handle.result()
    assert result.state is S.COMPLETE
    history = await handle.fetch_history()
    # Every event of the history, payloads included (role results, mirror markers, inputs).
    largest = max(event.ByteSize() for event in history.events)
    assert largest < PAYLOAD_LIMIT
    assert (settings.workspaces / result.build_id / "repo" / "big_table.py").stat().st_size > 10**6
