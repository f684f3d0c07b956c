"""A build ended from outside its workflow shows as such in the mirror: terminated from the
Temporal CLI (as the Web UI's Terminate does), it is written FAILED with the reason given;
a build reset from the CLI runs on in its new run and is left alone, and what the run the reset
dropped had mirrored is replaced by what the new run writes; a build that outlives an approval
gate's timer is not reconciled (the workflow says it itself)."""

from __future__ import annotations

import asyncio
import subprocess

from sqlalchemy import Engine
from sqlmodel import Session
from temporalio.client import Client

from core.messages import ApproveRequest
from core.settings import Settings
from db import crud, reconciled
from devtools.devserver import temporal_binary
from serving.reconcile import reconcile_once
from tests.helpers import make_request, start, wait_until
from workflows.build import BuildWorkflow

GATE = "handoff_to_releaser"


def temporal(settings: Settings, *args: str) -> str:
    return subprocess.run(
        [str(temporal_binary()), *args, "--address", settings.temporal_address],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout  # fmt: skip


async def test_a_build_terminated_from_outside_is_mirrored_failed_with_its_reason(
    client: Client, worker: Settings, engine: Engine
):
    handle = await start(client, worker, make_request(approval_gates=[GATE]))
    await wait_until(handle, lambda s: s.waiting_for is not None)
    temporal(worker, "workflow", "terminate", "-w", handle.id, "--reason", "stop it now")
    with Session(engine) as session:
        assert handle.id in reconciled.open_builds(session)
    assert await reconcile_once(client, engine) >= 1
    assert await reconcile_once(client, engine) == 0  # written once
    with Session(engine) as session:
        build = crud.get_build(session, workflow_id=handle.id)
        events = crud.list_events(session, workflow_id=handle.id)
    assert build is not None and build.current_state == "failed"
    assert build.failure_reason is not None
    assert build.failure_reason.startswith("terminated from outside the build: stop it now")
    assert build.waiting_for is None and build.completed_at is not None
    assert events[-1].event_type == "failed" and events[-1].event_data["outside"] is True
    assert [e.seq for e in events] == list(range(1, len(events) + 1))


async def test_a_build_reset_from_outside_runs_on_and_is_left_alone(
    client: Client, worker: Settings, engine: Engine
):
    handle = await start(client, worker, make_request(approval_gates=[GATE]))
    await wait_until(handle, lambda s: s.waiting_for is not None)
    temporal(worker, "workflow", "reset", "-w", handle.id, "--type", "LastWorkflowTask",
             "--reason", "try that again")  # fmt: skip
    await reconcile_once(client, engine)
    with Session(engine) as session:
        build = crud.get_build(session, workflow_id=handle.id)
    assert build is not None and build.current_state not in ("failed", "cancelled")
    latest = client.get_workflow_handle_for(BuildWorkflow.run, handle.id)
    await wait_until(latest, lambda s: s.waiting_for is not None)
    await latest.execute_update(BuildWorkflow.update_approve, ApproveRequest())
    assert (await latest.result()).state.value == "complete"
    assert await reconcile_once(client, engine) == 0


def _rows(engine: Engine, workflow_id: str) -> list[tuple[int, str, str]]:
    with Session(engine) as session:
        events = crud.list_events(session, workflow_id=workflow_id)
    return [(e.seq, e.event_type, e.timestamp.strftime("%H:%M:%S.%f")[:-3]) for e in events]


async def test_a_reset_to_the_start_replaces_what_the_dropped_run_mirrored(
    client: Client, worker: Settings, engine: Engine
):
    handle = await start(client, worker, make_request(approval_gates=[GATE]))
    await wait_until(handle, lambda s: s.waiting_for is not None)
    first = await handle.query(BuildWorkflow.event_log, 0)
    async with asyncio.timeout(20):  # the first run's rows, as it waits at the gate
        while len(_rows(engine, handle.id)) < len(first):  # noqa: ASYNC110 (a database)
            await asyncio.sleep(0.05)
    temporal(worker, "workflow", "reset", "-w", handle.id, "--type", "FirstWorkflowTask",
             "--reason", "from the start")  # fmt: skip
    latest = client.get_workflow_handle_for(BuildWorkflow.run, handle.id)
    await wait_until(latest, lambda s: s.waiting_for is not None)
    await latest.execute_update(BuildWorkflow.update_approve, ApproveRequest())
    assert (await latest.result()).state.value == "complete"
    events = await latest.query(BuildWorkflow.event_log, 0)
    assert events[0].timestamp != first[0].timestamp  # the new run made its events anew
    made = [(e.seq, e.event_type.value, e.timestamp.strftime("%H:%M:%S.%f")[:-3]) for e in events]
    assert _rows(engine, handle.id) == made
    with Session(engine) as session:
        build = crud.get_build(session, workflow_id=handle.id)
    assert build is not None and build.run_id == (await latest.describe()).run_id
    assert build.current_state == "complete" and build.last_seq == len(events)
