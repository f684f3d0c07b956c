"""Builds: start through Temporal; status, history, events and model output from the mirror and
the workflow (steering them: api/routes/steering.py)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Header, HTTPException, Path, Query, Response, status
from fastapi.responses import StreamingResponse
from sqlmodel import Session
from temporalio.client import Client

from api.deps import AppState, ClientDep, Mirror, MirrorDep, SettingsDep, StateDep, WorkflowId
from api.schemas import (
    BuildPage,
    BuildStarted,
    BuildStatusOut,
    EventPage,
    FailureGroup,
    HandoffHistory,
    ProjectStats,
    RoleTotals,
    StartBuild,
    VersionRow,
    answers,
)
from client import builds
from client.model_output import model_output
from core.attributes import BUILD_STATE, PROJECT_ID
from core.build_io import (
    BuildOptions,
    BuildRequest,
    BuildStatus,
    build_id_from,
    workflow_id_for,
)
from core.projects import PROJECT_ID_PATTERN
from core.scores import ScoreCard
from core.settings import Settings
from core.states import PATH, TERMINAL, BuildState, progress_of, role_of
from db import crud, scores
from db.models import (
    BuildSummaryPublic,
    WorkflowEventPublic,
    WorkflowHandoffPublic,
)
from db.status import list_builds as list_builds_of
from db.status import status_of, status_row

router = APIRouter(prefix="/api/workflows", tags=["workflows"], responses=answers(400, 401, 503))
log = logging.getLogger("api")

ProjectId = Annotated[
    str, Path(pattern=PROJECT_ID_PATTERN, description="Project id: letters, digits, . _ -")
]
FIRST = PATH[0]
MAX_INT = 2**31 - 1  # bounds numbers the databases compare with (SQLite overflows at 2**63)


@router.post("/{project_id}/start", status_code=status.HTTP_201_CREATED, responses=answers(409))
async def start_build(
    project_id: ProjectId,
    body: StartBuild,
    client: ClientDep,
    settings: SettingsDep,
    response: Response,
) -> BuildStarted:
    """Start a build of the project. The same build_id twice gets 409."""
    request = builds.new_request(
        settings,
        project_id,
        body.requirements,
        body.options,
        build_id=body.build_id,
        user_id=body.user_id,
    )
    handle = await builds.start_build(client, settings, request)
    log.info("build %s started for project %s by %s", request.build_id, project_id, body.user_id)
    return started(handle, request, settings, response)


def started(
    handle: builds.BuildHandle, request: BuildRequest, settings: Settings, response: Response
) -> BuildStarted:
    """The answer to a started build (a start, a re-run): where to follow it, in the body and
    as its Location."""
    status_url = f"{router.prefix}/{handle.id}/status"
    response.headers["Location"] = status_url
    first_role = role_of(FIRST)
    assert first_role is not None
    return BuildStarted(
        workflow_id=handle.id,
        build_id=request.build_id,
        project_id=request.project_id,
        initial_state=FIRST,
        next_role=first_role,
        ui_url=settings.ui_link(handle.id),
        status_url=status_url,
    )


@router.get("/{workflow_id}/status", responses=answers(404))
async def build_status(
    workflow_id: WorkflowId, mirror: MirrorDep, state: StateDep
) -> BuildStatusOut:
    """State, role, progress, attempts and what the build waits for, from the mirror.

    The mirror is written before each role call and at every gate, so it is as current as the
    phase the build is in. A build no worker has picked up yet is answered from Temporal.
    """
    settings = state.settings
    wf = workflow_id_for(build_id_from(workflow_id))
    row = await mirror.read(status_row, workflow_id=wf)
    if row is None:
        return await _status_from_temporal(await state.temporal(), settings, wf)
    return BuildStatusOut.of(
        status_of(row),
        workflow_id=wf,
        source="mirror",
        ui_url=settings.ui_link(wf),
        created_at=row.created_at,
        updated_at=row.updated_at,
        completed_at=row.completed_at,
    )


async def _status_from_temporal(client: Client, settings: Settings, wf: str) -> BuildStatusOut:
    """A build started but not mirrored yet (no worker has run it): what Temporal knows."""
    described = await builds.describe(builds.handle_for(client, wf))
    state = BuildState(described.typed_search_attributes.get(BUILD_STATE) or FIRST.value)
    known = BuildStatus(
        build_id=build_id_from(wf),
        project_id=described.typed_search_attributes.get(PROJECT_ID) or "",
        state=state,
        current_role=role_of(state),
        progress=progress_of(state),
        completed_phases=[],
        attempts={},
        loop_backs=0,
        max_retries=BuildOptions().max_retries,
        last_error=None,
        waiting_for=None,
        pending_command=None,
        events=0,
    )
    return BuildStatusOut.of(
        known,
        workflow_id=wf,
        source="temporal",
        ui_url=settings.ui_link(wf),
        created_at=described.start_time,
        updated_at=None,
        completed_at=described.close_time,
    )


async def _require_known(mirror: Mirror, state: AppState, wf: str) -> None:
    """404 unless the mirror or Temporal knows the build (Temporal is asked only if needed)."""
    if await mirror.read(crud.get_build, workflow_id=wf) is None:
        await builds.describe(builds.handle_for(await state.temporal(), wf))


@router.get("/{workflow_id}/history", responses=answers(404))
async def handoff_history(
    workflow_id: WorkflowId, mirror: MirrorDep, state: StateDep
) -> HandoffHistory:
    """The build's handoffs in order, with what each one handed over."""
    wf = workflow_id_for(build_id_from(workflow_id))
    await _require_known(mirror, state, wf)
    rows = await mirror.read(crud.list_handoffs, workflow_id=wf)
    return HandoffHistory(
        workflow_id=wf, handoffs=[WorkflowHandoffPublic.model_validate(r) for r in rows]
    )


@router.get(
    "/{workflow_id}/model-output",
    responses=answers(404) | {200: {"content": {"text/event-stream": {}}}},
    response_class=StreamingResponse,
)
async def build_model_output(
    workflow_id: WorkflowId,
    mirror: MirrorDep,
    state: StateDep,
    offset: Annotated[
        int, Query(ge=0, le=MAX_INT, description="Start at this offset of the build's stream.")
    ] = 0,
    last_event_id: Annotated[
        int | None,
        Header(ge=0, le=MAX_INT, description="Resume after a dropped connection (the SSE way)."),
    ] = None,
) -> StreamingResponse:
    """What the build's models write, as server-sent events while they write it: `start` (a
    request), `text`, `retry` (an attempt abandoned, a new one begins), `done` (a call ended)
    each with its JSON; the event id is the offset to resume from. Ends with `end` when the
    build has ended and all it published was sent."""
    wf = workflow_id_for(build_id_from(workflow_id))
    await _require_known(mirror, state, wf)
    client = await state.temporal()
    start = last_event_id if last_event_id is not None else offset

    async def events() -> AsyncIterator[str]:
        async for at, item in model_output(client, wf, start):
            yield f"id: {at + 1}\nevent: {item.kind}\ndata: {item.model_dump_json()}\n\n"
        yield "event: end\ndata: {}\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


@router.get("/{workflow_id}/score", responses=answers(404))
async def build_score(workflow_id: WorkflowId, mirror: MirrorDep, state: StateDep) -> ScoreCard:
    """The build's score card, as the mirror has it: outcome, wall time, loop-backs per reason,
    calls, attempts, tokens and cost per role with their models and prompt versions, and its
    last test run (passed, failed, regressed)."""
    wf = workflow_id_for(build_id_from(workflow_id))
    card = await mirror.read(scores.score_of, workflow_id=wf)
    if card is None:
        await _require_known(mirror, state, wf)  # 404 in the usual words if no one knows it
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, f"{wf} is not in the mirror yet: its score card is not"
        )
    return card


@router.get("/{workflow_id}/events", responses=answers(404))
async def build_events(
    workflow_id: WorkflowId,
    mirror: MirrorDep,
    state: StateDep,
    after_seq: Annotated[
        int, Query(ge=0, le=MAX_INT, description="Only events after this seq.")
    ] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
) -> EventPage:
    """The build's events in seq order, a page at a time."""
    wf = workflow_id_for(build_id_from(workflow_id))
    await _require_known(mirror, state, wf)
    rows = await mirror.read(crud.list_events, workflow_id=wf, after_seq=after_seq, limit=limit)
    return EventPage(
        workflow_id=wf,
        events=[WorkflowEventPublic.of(r) for r in rows],
        next_after_seq=rows[-1].seq if rows else after_seq,
    )


@router.get("")
async def list_builds(
    mirror: MirrorDep,
    project_id: Annotated[str | None, Query(max_length=128)] = None,
    state: BuildState | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_INT)] = 0,
) -> BuildPage:
    """Builds newest first, filtered by project and state."""
    rows, total = await mirror.read(
        list_builds_of,
        project_id=project_id,
        state=state.value if state else None,
        limit=limit,
        offset=offset,
    )
    return BuildPage(
        items=[BuildSummaryPublic.model_validate(r) for r in rows],
        total=total,
        limit=limit,
        offset=offset,
    )


@router.get("/project/{project_id}/stats")
async def project_stats(project_id: ProjectId, mirror: MirrorDep) -> ProjectStats:
    """Totals, completion rate, durations, retries and why builds failed."""
    return await mirror.read(_project_stats, project_id)


def _project_stats(session: Session, project_id: str) -> ProjectStats:
    counts = crud.project_state_counts(session, project_id=project_id)
    failures = crud.project_failures(session, project_id=project_id)
    total = sum(c.builds for c in counts)
    cost = sum(c.cost_usd for c in counts)
    finished = sum(c.builds for c in counts if BuildState(c.state) in TERMINAL)
    complete = next((c for c in counts if c.state == BuildState.COMPLETE.value), None)
    return ProjectStats(
        project_id=project_id,
        total=total,
        by_state={c.state: c.builds for c in counts},
        finished=finished,
        completion_rate=(complete.builds if complete else 0) / finished if finished else None,
        average_duration_seconds=complete.average_duration_seconds if complete else None,
        retries_per_build=sum(c.loop_backs for c in counts) / total if total else None,
        tokens=sum(c.tokens for c in counts),
        cost_usd=round(cost, 8),
        cost_per_build_usd=round(cost / total, 8) if total else None,
        by_role={
            role: RoleTotals.model_validate(totals)
            for role, totals in crud.project_usage_by_role(session, project_id=project_id).items()
        },
        by_model=scores.project_model_scores(session, project_id=project_id),
        versions=[
            VersionRow(
                version=r.version or "",
                build_id=r.build_id,
                commit=r.delivered_commit,
                delivery=r.delivery,
                loop_backs=r.loop_backs,
                duration_seconds=r.duration_seconds,
                tokens=r.tokens,
                cost_usd=r.cost_usd,
                completed_at=r.completed_at,
            )
            for r in crud.project_versions(session, project_id=project_id)
        ],
        failure_analysis=[
            FailureGroup(
                failed_state=BuildState(f.failed_state) if f.failed_state else None,
                failure_reason=f.failure_reason,
                builds=f.builds,
                example=f.example,
            )
            for f in failures
        ],
    )
