"""A project's release queue (workflows/project.py, workflows/turn.py), through a real worker
and real git: builds deliver one at a time in order of arrival, the build holding the turn
keeps it while it re-tests a moved base, and a build that leaves or is gone frees the turn."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import Engine
from temporalio.client import Client, WorkflowHandle

from activities.repository.gitcmd import git
from client.projects import get_project, put_project
from core.build_io import BuildRequest, BuildStatus
from core.events import EventType
from core.messages import AbortRequest, ApproveRequest
from core.projects import (
    MEMO_KEY,
    PROJECT_WORKFLOW,
    ProjectConfig,
    ProjectStart,
    ProjectView,
    project_workflow_id,
)
from core.settings import Settings
from core.states import BuildState
from tests.git_projects import make_project, push_change, tags_of, tree_of
from tests.helpers import (
    REGISTRY_HISTORIES,
    fields,
    make_request,
    release_of,
    running_worker,
    save_history,
    start,
    status_of,
    wait_until,
)
from workflows.build import BuildWorkflow

S = BuildState
GATE = {"approval_gates": [S.HANDOFF_TO_RELEASER]}


@pytest.fixture
async def worker(client: Client, settings: Settings, engine: Engine) -> AsyncIterator[Settings]:
    """A worker whose release queues ask a holder every half second whether it still runs."""
    quick = settings.model_copy(update={"release_queue_check_seconds": 0.5})
    async with running_worker(client, quick, engine):
        yield quick


def at_gate(status: BuildStatus) -> bool:
    return (status.waiting_for or "").startswith("approval")


def queued(status: BuildStatus) -> bool:
    """Waiting in the queue, its place known (`behind` the builds before it)."""
    return (status.waiting_for or "").startswith("its turn in the project's release queue (")


async def project_of(client: Client, settings: Settings, tmp_path: Path) -> tuple[str, Path]:
    project = f"q{uuid.uuid4().hex[:10]}"
    remote = make_project(tmp_path)
    await put_project(client, settings, project, ProjectConfig(repository=str(remote)))
    return project, remote


async def at_their_gates(
    client: Client, settings: Settings, project: str, features: list[str]
) -> list[tuple[BuildRequest, WorkflowHandle]]:
    builds = []
    for feature in features:
        request = make_request({"feature": feature}, project, **GATE)
        builds.append((request, await start(client, settings, request)))
    for _, handle in builds:
        await wait_until(handle, at_gate, seconds=60)
    return builds


async def approve(handle: WorkflowHandle) -> None:
    await handle.execute_update(BuildWorkflow.update_approve, ApproveRequest())


async def release_queue(client: Client, project: str) -> list[str]:
    return (await get_project(client, project)).release_queue


async def turn_signals(handle: WorkflowHandle) -> int:
    """How many release_turn signals the build's history holds."""
    history = await handle.fetch_history()
    return sum(
        1
        for event in history.events
        if event.HasField("workflow_execution_signaled_event_attributes")
        and event.workflow_execution_signaled_event_attributes.signal_name == "release_turn"
    )


async def three_in_the_queue(
    client: Client, settings: Settings, tmp_path: Path
) -> tuple[str, Path, list[tuple[BuildRequest, WorkflowHandle]]]:
    """Three builds of a new project approved one after another: the first holds the turn
    while it re-tests (the branch moved under it), the two others wait behind it in order;
    the project, its remote and the builds."""
    project, remote = await project_of(client, settings, tmp_path)
    builds = await at_their_gates(
        client, settings, project, ["Dark mode", "Audit log", "CSV export"]
    )
    (_, first), *rest = builds
    push_change(remote, {"docs.md": "# Docs\n"}, "docs, pushed meanwhile")
    await approve(first)  # first to arrive: the branch moved, it re-tests holding the turn
    await wait_until(
        first, lambda s: at_gate(s) and s.attempts[BuildState.TESTING] == 2, seconds=60
    )
    # It found the queue empty: its turn came with the registry's answer, not by a signal.
    # (Counted now, while it is alone: once others wait, the registry asks it every
    # check_seconds whether it still runs, with the same signal.)
    assert await turn_signals(first) == 0
    for _, handle in rest:
        await approve(handle)
        await wait_until(handle, queued)
    return project, remote, builds


async def test_releases_go_in_order_of_arrival_and_a_retest_keeps_the_turn(
    client: Client, worker: Settings, tmp_path: Path
) -> None:
    project, remote, [(ra, a), (rb, b), (rc, c)] = await three_in_the_queue(
        client, worker, tmp_path
    )
    status = await status_of(c)
    assert status.waiting_for is not None and f"behind {ra.build_id}, {rb.build_id}" in (
        status.waiting_for
    )
    assert await release_queue(client, project) == [ra.build_id, rb.build_id, rc.build_id]

    await approve(a)
    assert release_of(await a.result()).version == "v0.1.0"
    # b's turn: the branch moved (a landed), so b re-tests; c waits behind it meanwhile.
    await wait_until(b, lambda s: at_gate(s) and s.attempts[BuildState.TESTING] == 2, seconds=60)
    assert queued(await status_of(c))
    assert await release_queue(client, project) == [rb.build_id, rc.build_id]
    await approve(b)
    assert release_of(await b.result()).version == "v0.2.0"
    await wait_until(c, lambda s: at_gate(s) and s.attempts[BuildState.TESTING] == 2, seconds=60)
    await approve(c)
    assert release_of(await c.result()).version == "v0.3.0"

    assert tags_of(remote) == ["v0.1.0", "v0.2.0", "v0.3.0"]
    assert {"docs.md", "dark_mode.py", "audit_log.py", "csv_export.py"} <= tree_of(remote)
    # Each wrote its line under "Unreleased"; the merges kept every line (the union driver).
    changelog = git(remote, "show", "main:CHANGELOG.md").splitlines()
    assert changelog.count("## Unreleased") == 1
    assert {"- Dark mode: `dark_mode.py`", "- Audit log: `audit_log.py`"} <= set(changelog)
    assert "- CSV export: `csv_export.py`" in changelog
    assert await release_queue(client, project) == []
    events = await c.query(BuildWorkflow.event_log)
    [turn] = [e for e in events if e.event_type is EventType.RELEASE_TURN]
    assert fields(turn)["waited_seconds"] > 0
    assert await turn_signals(c) >= 1  # c waited behind others: its turn came by a signal
    await save_history(c, "release_queue_waited_its_turn")
    registry = client.get_workflow_handle(project_workflow_id(project))
    await save_history(registry, "release_queue_of_three_granted_at_enqueue", REGISTRY_HISTORIES)


async def test_a_build_that_leaves_or_is_gone_frees_the_turn(
    client: Client, worker: Settings, tmp_path: Path
) -> None:
    project, remote, [(rx, x), (ry, y), (_, z)] = await three_in_the_queue(client, worker, tmp_path)

    # A person aborts a waiting build: it leaves its place.
    await z.execute_update(BuildWorkflow.update_abort, AbortRequest(reason="not this one"))
    await wait_until(z, lambda s: s.state is S.FAILED)
    assert await release_queue(client, project) == [rx.build_id, ry.build_id]

    # The holder is terminated: it says nothing, the queue finds it gone and y goes on.
    await x.terminate("gone")
    status = await wait_until(
        y, lambda s: at_gate(s) and s.attempts[BuildState.TESTING] == 2, seconds=30
    )
    assert status.state is S.HANDOFF_TO_RELEASER
    assert await release_queue(client, project) == [ry.build_id]
    await approve(y)
    async with asyncio.timeout(60):
        assert release_of(await y.result()).version == "v0.1.0"
    assert tags_of(remote) == ["v0.1.0"]
    assert await release_queue(client, project) == []


async def test_a_registry_left_on_a_task_queue_nobody_polls_is_started_again_here(
    client: Client, worker: Settings, tmp_path: Path
) -> None:
    """TEMPORAL_TASK_QUEUE changed: the project's registry still runs on the old queue, and
    no worker polls it. A build's join starts it again on its own queue, registration kept."""
    project, remote = f"q{uuid.uuid4().hex[:10]}", make_project(tmp_path)
    view = ProjectView(project_id=project, config=ProjectConfig(repository=str(remote)))
    old = f"gone-{uuid.uuid4().hex[:8]}"
    await client.start_workflow(
        PROJECT_WORKFLOW,
        ProjectStart(project_id=project, view=view),
        id=project_workflow_id(project),
        task_queue=old,
        memo={MEMO_KEY: view.model_dump(mode="json")},
    )
    handle = await start(client, worker, make_request(project=project))
    async with asyncio.timeout(60):
        result = await handle.result()
    assert release_of(result).version == "v0.1.0" and tags_of(remote) == ["v0.1.0"]
    registry = client.get_workflow_handle(project_workflow_id(project))
    assert (await registry.describe()).task_queue == worker.temporal_task_queue
    assert (await get_project(client, project)).config.repository == str(remote)
