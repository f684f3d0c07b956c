"""The SQL mirror, on SQLite and on PostgreSQL: idempotent writes, and builds mirrored exactly."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import httpx2
import pytest
from sqlalchemy import Engine, func
from sqlmodel import Session, select
from temporalio import activity
from temporalio.client import Client, WorkflowFailureError
from temporalio.testing import ActivityEnvironment
from temporalio.worker import Worker

from activities.mirror import MirrorActivities
from activities.model import offline
from activities.projects import registry
from activities.roles import RoleActivities
from core.contracts import ROLE_CALLS
from core.events import EventType, StateChanged, stored
from core.messages import ApproveRequest, RollbackRequest
from core.mirror import BuildEvent, BuildSnapshot, MirrorBatch, MirrorReceipt, RoleCall
from core.role_io import RoleTask
from core.settings import Settings
from core.states import WORKING, BuildState, Role
from db import crud
from db.models import WorkflowEventRow
from tests.helpers import fields, make_request, model_client_with, running_worker, start, wait_until
from workflows.build import BuildWorkflow
from workflows.project import ProjectWorkflow

ROLE_CALL_NAMES = {call.name for call in ROLE_CALLS.values()}


def test_migrations_create_exactly_the_tables_of_the_models(mirror_db: Engine):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    from sqlmodel import SQLModel

    with mirror_db.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), SQLModel.metadata)
    assert diff == []


def _batch(workflow_id: str, seqs: range, state: BuildState, last_seq: int) -> MirrorBatch:
    now = datetime.now(UTC)
    return MirrorBatch(
        snapshot=BuildSnapshot(
            build_id=workflow_id.removeprefix("build-"),
            workflow_id=workflow_id,
            project_id="p",
            user_id="u",
            requirements="x",
            state=state,
            current_role=None,
            attempts={"discovery": 1},
            loop_backs=0,
            last_error=None,
            created_at=now,
            updated_at=now,
            last_seq=last_seq,
        ),
        events=[
            BuildEvent(
                seq=i, state=state, triggered_by="t", data=StateChanged(to=state), timestamp=now
            )
            for i in seqs
        ],
        handoffs=[],
    )


def test_writing_a_batch_again_changes_nothing(mirror_db: Engine):
    wid = f"build-m{uuid.uuid4().hex[:8]}"
    first = crud.record_batch(mirror_db, batch=_batch(wid, range(1, 4), BuildState.PLANNING, 3))
    assert (first.events_inserted, first.build_updated) == (3, True)
    again = crud.record_batch(mirror_db, batch=_batch(wid, range(1, 4), BuildState.PLANNING, 3))
    assert again.events_inserted == 0
    overlap = crud.record_batch(mirror_db, batch=_batch(wid, range(2, 6), BuildState.TESTING, 5))
    assert overlap.events_inserted == 2
    with Session(mirror_db) as session:
        rows = crud.list_events(session, workflow_id=wid)
        assert [r.seq for r in rows] == [1, 2, 3, 4, 5]
        build = crud.get_build(session, workflow_id=wid)
        assert build is not None and build.current_state == "testing" and build.last_seq == 5


def test_a_stale_snapshot_never_overwrites_a_newer_one(mirror_db: Engine):
    wid = f"build-m{uuid.uuid4().hex[:8]}"
    crud.record_batch(mirror_db, batch=_batch(wid, range(1, 8), BuildState.VERIFICATION, 7))
    stale = crud.record_batch(mirror_db, batch=_batch(wid, range(1, 4), BuildState.PLANNING, 3))
    assert not stale.build_updated
    with Session(mirror_db) as session:
        build = crud.get_build(session, workflow_id=wid)
        assert build is not None and build.current_state == "verification"


def test_status_and_list_reads_leave_the_outputs_they_do_not_show_unread(mirror_db: Engine):
    from sqlalchemy import inspect

    from db.status import list_builds, status_of, status_row

    wid = f"build-m{uuid.uuid4().hex[:8]}"
    crud.record_batch(mirror_db, batch=_batch(wid, range(1, 4), BuildState.TESTING, 3))
    with Session(mirror_db) as session:
        row = crud.get_build(session, workflow_id=wid)
        assert row is not None
        row.implementation_output = {"files": {"big.py": "x" * 100_000}}
        row.testing_output = {"passed": True}
        session.add(row)
        session.commit()
        session.refresh(row)
        full = status_of(row)
    with Session(mirror_db) as session:
        lean = status_row(session, workflow_id=wid)
    with Session(mirror_db) as session:
        listed, total = list_builds(session, project_id="p")
    assert lean is not None and {"requirements", "implementation_output"} <= inspect(lean).unloaded
    assert "testing_output" not in inspect(lean).unloaded
    assert status_of(lean) == full  # read after its session closed: nothing it needs is unloaded
    ours = next(r for r in listed if r.workflow_id == wid)
    assert total >= 1 and {"testing_output", "implementation_output"} <= inspect(ours).unloaded


async def test_a_build_is_mirrored_exactly(client: Client, settings: Settings, mirror_db: Engine):
    async with running_worker(client, settings, mirror_db):
        handle = await start(client, settings, make_request(simulate=["tests_fail_once"]))
        await handle.result()
        events = await handle.query(BuildWorkflow.event_log, 0)
        handoffs = await handle.query(BuildWorkflow.handoff_log)
    with Session(mirror_db) as session:
        rows = crud.list_events(session, workflow_id=handle.id)
        assert [(r.seq, r.event_type, r.state) for r in rows] == [
            (e.seq, e.event_type.value, e.state.value) for e in events
        ]
        assert rows[-1].event_type == "completed"
        mirrored_handoffs = crud.list_handoffs(session, workflow_id=handle.id)
        assert [(h.seq, h.from_role, h.to_role) for h in mirrored_handoffs] == [
            (h.seq, h.from_role.value, h.to_role.value) for h in handoffs
        ]
        assert mirrored_handoffs[1].data_transferred["previous_output"]["files"]
        build = crud.get_build(session, workflow_id=handle.id)
        assert build is not None
        assert build.current_state == "complete" and build.completed_at is not None
        assert build.attempts[BuildState.TESTING] == 2 and build.loop_backs == 1
        assert build.last_seq == len(events)
        for state in WORKING:
            assert getattr(build, f"{state.value}_output"), state
        assert build.testing_output["passed"] is True  # the latest attempt's output
        assert build.requirements == {"feature": "Dark mode", "priority": "high"}


async def test_the_workflow_writes_the_mirror_before_each_role_call_and_no_call_carries_it(
    client: Client, settings: Settings, mirror_db: Engine
):
    """Before each role call the workflow writes what the mirror has not confirmed through a
    local activity of its own, so a role's model finds every event up to its call mirrored;
    the role call's input carries no batch and its result reports no write."""
    seen: list[dict[str, Any]] = []

    async def model(request: httpx2.Request) -> httpx2.Response:
        with Session(mirror_db) as session:  # what the API could read while the role works
            rows = session.exec(select(func.count()).where(WorkflowEventRow.workflow_id == wid))
            seen.append({"rows": rows.one(), "body": request.content.decode()})
        return await offline.handle(request)

    request = make_request()
    wid = request.workflow_id
    async with running_worker(client, settings, mirror_db, model_client_with(settings, model)):
        handle = await start(client, settings, request)
        await handle.result()
        events = await handle.query(BuildWorkflow.event_log, 0)
    history = await handle.fetch_history()
    scheduled = {
        e.event_id: e.activity_task_scheduled_event_attributes
        for e in history.events
        if e.HasField("activity_task_scheduled_event_attributes")
        and e.activity_task_scheduled_event_attributes.activity_type.name in ROLE_CALL_NAMES
    }
    carried = [
        RoleCall.model_validate_json(a.input.payloads[0].data).mirror for a in scheduled.values()
    ]
    results = [
        json.loads(e.activity_task_completed_event_attributes.result.payloads[0].data)
        for e in history.events
        if e.HasField("activity_task_completed_event_attributes")
        and e.activity_task_completed_event_attributes.scheduled_event_id in scheduled
    ]
    local = [
        e
        for e in history.events
        if e.HasField("marker_recorded_event_attributes")
        and e.marker_recorded_event_attributes.marker_name == "core_local_activity"
    ]
    assert len(carried) == len(seen) == len(results) == 6
    assert carried == [None] * 6 and all(r.get("mirrored_seq", 0) == 0 for r in results)
    assert len(local) == 7  # one write before each call, one at the end
    # Each call's model found the events before it mirrored: the state it entered, at least.
    entered = [
        e.seq for e in events if isinstance(e.data, StateChanged) and e.data.to in ROLE_CALLS
    ]
    for call, entered_at in zip(seen, entered, strict=True):
        assert call["rows"] >= entered_at
        assert '"snapshot"' not in call["body"]  # no batch is ever part of a prompt
    with Session(mirror_db) as session:
        rows = crud.list_events(session, workflow_id=handle.id)
        build = crud.get_build(session, workflow_id=handle.id)
    assert [(r.seq, r.event_type) for r in rows] == [(e.seq, e.event_type.value) for e in events]
    assert build is not None and build.last_seq == len(events) and build.current_state == "complete"


async def test_a_role_call_that_carries_a_batch_still_writes_it_and_says_so(
    settings: Settings, mirror_db: Engine
):
    """Builds that started before the workflow fed the mirror itself carry their batch with
    each role call to their end: the call writes it before its role works and reports the
    last event it wrote, so the workflow does not send it again."""
    wid = f"build-{uuid.uuid4().hex[:8]}"
    task = RoleTask(
        build_id=wid.removeprefix("build-"),
        project_id="p",
        role=Role.Q_ASSISTANT,
        state=BuildState.DISCOVERY,
        attempt=1,
        requirements="x",
    )
    roles = RoleActivities(
        model_client_with(settings, offline.handle), mirror=MirrorActivities(mirror_db)
    )
    call = RoleCall.of(task, _batch(wid, range(1, 4), BuildState.DISCOVERY, 3))
    result = await ActivityEnvironment().run(roles.q_assistant, call)
    assert result.mirrored_seq == 3
    with Session(mirror_db) as session:
        assert [r.seq for r in crud.list_events(session, workflow_id=wid)] == [1, 2, 3]
    fed = await ActivityEnvironment().run(roles.q_assistant, RoleCall.of(task, None))
    assert fed.mirrored_seq == 0  # a call of a build the workflow feeds carries nothing


async def _mirrored_event(engine: Engine, workflow_id: str, kind: str) -> WorkflowEventRow:
    """The mirror is written by the worker; wait (bounded) until the event is there."""
    query = select(WorkflowEventRow).where(
        WorkflowEventRow.workflow_id == workflow_id, WorkflowEventRow.event_type == kind
    )
    async with asyncio.timeout(10):
        while True:
            with Session(engine) as session:
                row = session.exec(query).first()
            if row is not None:
                return row
            await asyncio.sleep(0.05)


async def test_what_happens_at_a_gate_is_mirrored_while_the_build_waits(
    client: Client, settings: Settings, mirror_db: Engine
):
    async with running_worker(client, settings, mirror_db):
        handle = await start(client, settings, make_request(approval_gates=["handoff_to_coder"]))
        await wait_until(handle, lambda s: s.waiting_for is not None)
        bad = RollbackRequest(target_state=BuildState.TESTING, reason="forward")
        await handle.signal(BuildWorkflow.rollback, bad)
        rejected = await _mirrored_event(mirror_db, handle.id, "signal_rejected")
        assert "cannot roll back forward" in rejected.event_data["reason"]
        with Session(mirror_db) as session:
            build = crud.get_build(session, workflow_id=handle.id)
            assert build is not None and build.current_state == "handoff_to_coder"
        await handle.cancel()
        with pytest.raises(WorkflowFailureError):
            await handle.result()
    with Session(mirror_db) as session:
        build = crud.get_build(session, workflow_id=handle.id)
        assert build is not None and build.current_state == "cancelled"
        count = session.exec(
            select(func.count()).where(WorkflowEventRow.workflow_id == handle.id)
        ).one()
        assert count == build.last_seq


class CrashAfterCommitMirror(MirrorActivities):
    """Writes the batch, then fails every other write, as if the connection died after the
    commit: a wait's or the end's write is retried and writes the same rows again, a write
    before a role call is left and its batch sent again with the workflow's next one; neither
    may change anything."""

    def __init__(self, engine: Engine) -> None:
        super().__init__(engine)
        self.calls: Counter[str] = Counter()
        self.failures: Counter[str] = Counter()

    def write(self, batch: MirrorBatch) -> MirrorReceipt:
        receipt = super().write(batch)
        way = "local" if activity.info().activity_type == "mirror_build" else "carried"
        self.calls[way] += 1
        if self.calls[way] % 2 == 1:
            self.failures[way] += 1
            raise RuntimeError("connection lost after commit")
        return receipt


@pytest.mark.slow  # about 7 s per database
async def test_mirror_is_exact_through_a_retry_loop_a_rollback_and_failing_activities(
    client: Client, settings: Settings, mirror_db: Engine
):
    model_calls = 0

    async def flaky_model(request: httpx2.Request) -> httpx2.Response:
        nonlocal model_calls
        model_calls += 1
        if model_calls % 5 == 2:  # every fifth model call fails; Temporal retries the role
            return httpx2.Response(500, json={"error": {"message": "overloaded"}})
        return await offline.handle(request)

    mirror = CrashAfterCommitMirror(mirror_db)
    roles = RoleActivities(model_client_with(settings, flaky_model), mirror=mirror)
    gate = "handoff_to_releaser"
    worker = Worker(
        client,
        task_queue=settings.temporal_task_queue,
        workflows=[BuildWorkflow, ProjectWorkflow],
        activities=[*roles.all(), mirror.mirror_build, *registry(settings)],
    )
    async with worker:
        request = make_request(simulate=["tests_fail_once"], approval_gates=[gate])
        handle = await start(client, settings, request)
        await wait_until(handle, lambda s: s.waiting_for is not None)
        back = RollbackRequest(target_state=BuildState.PLANNING, reason="plan again")
        await handle.execute_update(BuildWorkflow.update_rollback, back)
        await wait_until(
            handle, lambda s: s.waiting_for is not None and s.attempts[BuildState.PLANNING] == 2
        )
        await handle.execute_update(BuildWorkflow.update_approve, ApproveRequest())
        await handle.result()
        events = await handle.query(BuildWorkflow.event_log, 0)
    assert model_calls >= 12 + 3  # 12 logical calls
    assert mirror.failures["local"] >= 6 and mirror.calls["carried"] == 0
    kinds = [e.event_type for e in events]
    assert EventType.LOOP_BACK in kinds and EventType.ROLLBACK in kinds
    with Session(mirror_db) as session:
        rows = crud.list_events(session, workflow_id=handle.id)
        build = crud.get_build(session, workflow_id=handle.id)
    assert [(r.seq, r.event_type, r.state, r.event_data) for r in rows] == [
        (e.seq, e.event_type.value, e.state.value, stored(e.data)) for e in events
    ]
    assert [r.seq for r in rows] == list(range(1, len(events) + 1))  # no gap, no duplicate
    assert build is not None and build.last_seq == len(events)
    assert build.current_state == "complete" and build.attempts[BuildState.PLANNING] == 2


def test_text_past_its_column_and_nul_characters_are_bounded_before_the_write(
    mirror_db: Engine,
):
    """PostgreSQL refuses both (SQLite takes them): the mirror cuts and cleans every text
    column to what its table declares, so the same build writes on either."""
    workflow_id = f"build-{uuid.uuid4().hex[:8]}"
    batch = _batch(workflow_id, range(1, 3), BuildState.DEPLOYMENT, 2)
    ahead = ", ".join(f"build-{n:04d}" for n in range(38))
    batch.snapshot.waiting_for = f"its turn in the project's release queue (behind {ahead})"
    batch.snapshot.failure_reason = "a\x00b" * 200
    batch.events[0].triggered_by = "x" * 500
    receipt = crud.record_batch(mirror_db, batch=batch)
    assert receipt.events_inserted == 2 and receipt.build_updated
    with Session(mirror_db) as session:
        build = crud.get_build(session, workflow_id=workflow_id)
        events = crud.list_events(session, workflow_id=workflow_id)
    assert build is not None and build.waiting_for is not None
    assert len(build.waiting_for) == 200 and build.waiting_for.endswith(crud.ELLIPSIS)
    assert build.failure_reason is not None and "\x00" not in build.failure_reason
    assert len(events[0].triggered_by) == 128


def test_a_row_the_database_refuses_for_its_data_is_not_retried(mirror_db: Engine):
    if mirror_db.dialect.name != "postgresql":
        pytest.skip("SQLite stores any integer it is given")
    from temporalio.exceptions import ApplicationError

    from core.contracts import Failure

    batch = _batch(f"build-{uuid.uuid4().hex[:8]}", range(1, 2), BuildState.TESTING, 2**40)
    with pytest.raises(ApplicationError) as refused:
        MirrorActivities(mirror_db).write(batch)  # last_seq beyond PostgreSQL's integer
    assert refused.value.type == Failure.MIRROR_REFUSED and refused.value.non_retryable
    assert "out of range" in str(refused.value)


async def test_a_refused_mirror_write_is_recorded_and_the_build_goes_on(
    client: Client, settings: Settings, mirror_db: Engine, monkeypatch: pytest.MonkeyPatch
):
    from sqlalchemy.exc import DataError

    from activities import mirror as mirror_module

    refusals = 0
    real = crud.record_batch

    def refusing(engine: Engine, *, batch: MirrorBatch) -> MirrorReceipt:
        nonlocal refusals
        if activity.info().activity_type == "mirror_build" and refusals == 0:
            refusals += 1
            cause = Exception("value too long for type character varying(200)")
            raise DataError("INSERT ...", {}, cause)
        return real(engine, batch=batch)

    monkeypatch.setattr(mirror_module, "record_batch", refusing)
    async with running_worker(client, settings, mirror_db):
        handle = await start(client, settings, make_request())
        await handle.result()
        events = await handle.query(BuildWorkflow.event_log, 0)
    refused = [e for e in events if e.event_type is EventType.MIRROR_REFUSED]
    assert refusals == 1 and len(refused) == 1
    assert "character varying(200)" in fields(refused[0])["reason"]
    with Session(mirror_db) as session:
        build = crud.get_build(session, workflow_id=handle.id)
    assert build is not None and build.current_state == "complete"
