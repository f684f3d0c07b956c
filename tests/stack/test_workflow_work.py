"""Builds whose roles do real work, end to end on the real dev server: a failed release put
back, unsafe files refused, a rollback after a release compensated, big code kept out of
workflow history."""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from pathlib import Path

import httpx2
import pytest
from sqlalchemy import Engine
from sqlmodel import Session
from temporalio.client import Client, WorkflowFailureError

from activities.model import offline
from activities.repository.gitcmd import git
from client.projects import put_project
from core.events import EventType
from core.messages import AbortRequest, RollbackRequest
from core.projects import ProjectConfig
from core.settings import Settings
from core.states import BuildState
from db import crud
from tests.git_projects import make_project, push_change, tags_of, tree_of
from tests.helpers import (
    fields,
    make_request,
    model_client_with,
    release_of,
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
    project = f"p-{uuid.uuid4().hex[:8]}"
    handle = await start(client, worker, make_request(project=project, simulate=["release_fails"]))
    result = await handle.result()
    assert result.state is S.COMPLETE
    # The failed smoke check ran before anything was pushed: the version was not used up.
    assert release_of(result).version == "v0.1.0"
    events = await handle.query(BuildWorkflow.event_log, 0)
    loop = next(e for e in events if e.event_type is EventType.LOOP_BACK)
    assert loop.state is S.DEPLOYMENT and fields(loop)["reason"] == "release failed"
    summary = fields(loop)["feedback"]["release"]["summary"]
    assert "self-check failed" in summary and "nothing was delivered" in summary
    status = await status_of(handle)
    assert (
        status.attempts[BuildState.DEPLOYMENT] == 2
        and status.attempts[BuildState.IMPLEMENTATION] == 2
    )
    releases = worker.releases / project
    assert sorted(p.name for p in releases.iterdir() if not p.name.startswith(".")) == [
        "current",
        "v0.1.0",
    ]
    assert os.readlink(releases / "current") == release_of(result).version
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
                return offline.respond(body, json.dumps(answer))
        return await offline.handle(request)

    async with running_worker(client, settings, engine, model_client_with(settings, model)):
        handle = await start(client, settings, make_request())
        result = await handle.result()
        events = await handle.query(BuildWorkflow.event_log, 0)
        status = await status_of(handle)
    assert result.state is S.COMPLETE and code_writer_calls == 2
    loop = next(e for e in events if e.event_type is EventType.LOOP_BACK)
    assert loop.state is S.IMPLEMENTATION and fields(loop)["reason"] == "unsafe file paths"
    assert "'..' is refused" in fields(loop)["feedback"]["error"]
    assert status.attempts[BuildState.IMPLEMENTATION] == 2 and status.loop_backs == 1
    assert not (settings.workspaces / "escaped.py").exists()
    assert not (settings.workspaces.parent / "escaped.py").exists()
    await save_history(handle, "unsafe_paths_refused")


async def slow_release_notes(request: httpx2.Request) -> httpx2.Response:
    """The offline model, 3 s slow to write release notes: the release and its smoke check are
    done when the notes are asked for, a wide, sure window in which a rollback arrives after
    the release."""
    if json.loads(request.content)["response_format"]["json_schema"]["name"] == "ReleaseNotes":
        await asyncio.sleep(3)
    return await offline.handle(request)


@pytest.mark.slow  # two builds and a 3 s window
async def test_a_rollback_after_a_release_restores_the_previous_release_and_the_code(
    client: Client, settings: Settings, engine: Engine
):
    project = f"p-{uuid.uuid4().hex[:6]}"
    async with running_worker(client, settings, engine):
        first = await (await start(client, settings, make_request(project=project))).result()

    llm = model_client_with(settings, slow_release_notes)
    async with running_worker(client, settings, engine, llm):
        second = make_request({"feature": "Audit log"}, project=project)
        handle = await start(client, settings, second)
        # At DEPLOYMENT with its release turn: the Release Manager works.
        await wait_until(
            handle, lambda s: s.state is S.DEPLOYMENT and s.waiting_for is None, seconds=60
        )
        back = RollbackRequest(target_state=S.IMPLEMENTATION, reason="the copy is wrong")
        accepted = await handle.execute_update(BuildWorkflow.update_rollback, back)
        assert accepted.applies == "after_current_phase"
        result = await handle.result()
        events = await handle.query(BuildWorkflow.event_log, 0)
    await save_history(handle, "rollback_after_release")
    build = result.build_id
    restored = next(e for e in events if e.event_type is EventType.RESTORED)
    assert (release_of(first).version, fields(restored)["release_undone"]) == (
        "v0.1.0",
        "v0.2.0",
    )
    # Reverted on the project's branch by a new commit and version, which is deployed.
    assert fields(restored)["release_current"] == "v0.2.1"
    remote = settings.projects / f"{project}.git"
    revert = fields(restored)["reverted_by"]
    assert git(remote, "log", "-1", "--format=%s", revert) == f"Revert build {build} (v0.2.0)"
    assert git(remote, "rev-parse", "v0.2.1^{commit}") == revert
    assert "audit_log.py" in tree_of(remote, "v0.2.0")
    assert "audit_log.py" not in tree_of(remote, "v0.2.1")
    assert "dark_mode.py" in tree_of(remote, "v0.2.1")  # the first build's release stays
    # The code as it was when the build entered IMPLEMENTATION: its base, now on the revert.
    opened = next(e for e in events if e.event_type is EventType.WORKSPACE_OPENED)
    changes = [e for e in events if e.event_type is EventType.STATE_CHANGED]
    base = fields(opened)["base"]
    assert next(fields(e)["commit"] for e in changes if fields(e)["to"] == "implementation") == base
    assert fields(restored)["commit"] == revert
    # The build went on from the revert: implemented again, released again, current.
    assert release_of(result).version == "v0.3.0"
    assert git(remote, "merge-base", "--is-ancestor", revert, str(release_of(result).commit)) == ""
    assert tags_of(remote) == ["v0.1.0", "v0.2.0", "v0.2.1", "v0.3.0"]
    assert {"audit_log.py", "dark_mode.py"} <= tree_of(remote, "v0.3.0")
    with Session(engine) as session:
        kinds = [r.event_type for r in crud.list_events(session, workflow_id=handle.id)]
    assert "restored" in kinds  # the mirror records what was restored


def tagged(remote: Path, tag: str, seconds: float = 10) -> None:
    """Wait until the project's repository has `tag`."""
    deadline = time.monotonic() + seconds
    while tag not in tags_of(remote):
        assert time.monotonic() < deadline, f"{remote} has no tag {tag}"
        time.sleep(0.05)


@pytest.mark.slow  # a 3 s window
async def test_a_revert_that_conflicts_waits_for_a_person_and_changes_nothing(
    client: Client, settings: Settings, engine: Engine
):
    project = f"p-{uuid.uuid4().hex[:6]}"
    async with running_worker(
        client, settings, engine, model_client_with(settings, slow_release_notes)
    ):
        handle = await start(client, settings, make_request(project=project))
        await wait_until(
            handle, lambda s: s.state is S.DEPLOYMENT and s.waiting_for is None, seconds=60
        )
        back = RollbackRequest(target_state=S.IMPLEMENTATION, reason="take it back")
        await handle.execute_update(BuildWorkflow.update_rollback, back)
        remote = settings.projects / f"{project}.git"
        await asyncio.to_thread(tagged, remote, "v0.1.0")  # landed; the notes are being written
        # Meanwhile a teammate changes the released module: the revert cannot apply.
        theirs = push_change(remote, {"dark_mode.py": "ENABLED = True\n"}, "a teammate's edit")
        status = await wait_until(handle, lambda s: s.state is S.NEEDS_ATTENTION, seconds=30)
        assert status.waiting_for is not None and "conflicts in dark_mode.py" in status.waiting_for
        assert "revert it by hand" in status.waiting_for
        assert git(remote, "rev-parse", "main") == theirs and tags_of(remote) == ["v0.1.0"]
        await handle.execute_update(BuildWorkflow.update_abort, AbortRequest(reason="by hand"))
        with pytest.raises(WorkflowFailureError):
            await handle.result()
        final = await status_of(handle)
        events = await handle.query(BuildWorkflow.event_log, 0)
    await save_history(handle, "revert_conflict_needs_attention")
    assert final.state is S.FAILED
    assert git(remote, "rev-parse", "main") == theirs and tags_of(remote) == ["v0.1.0"]
    [asked] = [e for e in events if e.event_type is EventType.NEEDS_ATTENTION]
    assert fields(asked) == {
        "reason": "revert conflict",
        "ending": "unanswered",  # FAILED as unanswered if nobody comes
        "signature": None,
        "paused_in": "deployment",
        "release": "v0.1.0",
        "feedback": {},
    }


async def test_a_megabyte_of_code_stays_out_of_workflow_history(
    client: Client, settings: Settings, engine: Engine
):
    big = "DATA = [\n" + "".join(f"    {i:>10},\n" for i in range(75_000)) + "]\n"
    assert len(big) > 1_000_000

    async def model(request: httpx2.Request) -> httpx2.Response:
        body = json.loads(request.content)
        answer = await offline.handle(request)
        if body["response_format"]["json_schema"]["name"] != "ImplementationOutput":
            return answer
        content = json.loads(await offline.content_of(request))
        content["files"].append({"path": "big_table.py", "content": big})
        return offline.respond(body, json.dumps(content))

    async with running_worker(client, settings, engine, model_client_with(settings, model)):
        handle = await start(client, settings, make_request())
        result = await handle.result()
    assert result.state is S.COMPLETE
    history = await handle.fetch_history()
    # Every event of the history, payloads included (role results, mirror markers, inputs).
    largest = max(event.ByteSize() for event in history.events)
    assert largest < PAYLOAD_LIMIT
    assert (settings.workspaces / result.build_id / "repo" / "big_table.py").stat().st_size > 10**6


async def test_an_edit_that_does_not_apply_is_refused_and_the_code_writer_retries_with_why(
    client: Client, settings: Settings, engine: Engine
):
    prompts: list[str] = []

    async def model(request: httpx2.Request) -> httpx2.Response:
        body = json.loads(request.content)
        if body["response_format"]["json_schema"]["name"] == "ImplementationOutput":
            prompts.append(request.content.decode())
            if len(prompts) == 1:
                edit = {"kind": "replace", "path": "README.md", "search": "no such text",
                        "replace": "x", "content": "", "to": ""}  # fmt: skip
                answer = {"summary": "a blind edit", "files": [], "edits": [edit]}
                return offline.respond(body, json.dumps(answer))
        return await offline.handle(request)

    remote = make_project(settings.data_dir / f"edit-{uuid.uuid4().hex[:6]}", {"README.md": "Hi\n"})
    project = f"p-{uuid.uuid4().hex[:8]}"
    async with running_worker(client, settings, engine, model_client_with(settings, model)):
        await put_project(client, settings, project, ProjectConfig(repository=str(remote)))
        handle = await start(client, settings, make_request(project=project))
        result = await handle.result()
        events = await handle.query(BuildWorkflow.event_log, 0)
    assert result.state is S.COMPLETE and len(prompts) == 2
    loop = next(e for e in events if e.event_type is EventType.LOOP_BACK)
    assert loop.state is S.IMPLEMENTATION and fields(loop)["reason"] == "edits refused"
    assert (
        "the search text is not in README.md; the closest lines (1-1) are:\nHi"
        in (fields(loop)["feedback"]["error"])
    )
    assert "the search text is not in README.md" in prompts[1]  # the retry is told why
    # The Code Writer sees the repository: its map, cut to the budget, and the files it works on.
    task = json.loads(json.loads(prompts[0])["messages"][1]["content"])
    assert "README.md (3 B)" in task["context"]["repository_map"]
    assert task["context"]["repository_files"] == 1 and task["context"]["files"] == {}


async def test_an_empty_change_loops_back_once_then_waits_for_a_person(
    client: Client, settings: Settings, engine: Engine
):
    """A Code Writer whose files leave the project as it was: told so once, then a person is
    asked; nothing is released or tagged."""
    writes: list[str] = []

    async def model(request: httpx2.Request) -> httpx2.Response:
        body = json.loads(request.content)
        if body["response_format"]["json_schema"]["name"] == "ImplementationOutput":
            writes.append(request.content.decode())
            same = {"summary": "nothing new", "edits": [],
                    "files": [{"path": "README.md", "content": "Hi\n"}]}  # fmt: skip
            return offline.respond(body, json.dumps(same))
        return await offline.handle(request)

    remote = make_project(
        settings.data_dir / f"empty-{uuid.uuid4().hex[:6]}", {"README.md": "Hi\n"}
    )
    project = f"p-{uuid.uuid4().hex[:8]}"
    async with running_worker(client, settings, engine, model_client_with(settings, model)):
        await put_project(client, settings, project, ProjectConfig(repository=str(remote)))
        handle = await start(client, settings, make_request(project=project))
        status = await wait_until(handle, lambda s: s.state is S.NEEDS_ATTENTION, seconds=60)
        events = await handle.query(BuildWorkflow.event_log, 0)
        await handle.cancel()
    assert len(writes) == 2 and "the change is empty" in writes[1]
    assert status.waiting_for and "empty change twice the same way at testing" in (
        status.waiting_for
    )
    loops = [e for e in events if e.event_type is EventType.LOOP_BACK]
    assert [fields(e)["reason"] for e in loops] == ["empty change"]
    assert git(remote, "tag") == ""
