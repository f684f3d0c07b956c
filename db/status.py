"""A build's read model (core/build_io.BuildStatus) from its mirror row: the same fields the
workflow's `status` query answers, as of the row's last event. What the row cannot know is
left empty: the model call in flight, and the progress of a paused build's phase (its state's).
And the list of builds. Both read only the columns they show."""

from __future__ import annotations

from pydantic import ValidationError
from sqlalchemy import func
from sqlalchemy.orm import defer, load_only
from sqlmodel import Session, col, select

from core.build_io import BuildOptions, BuildRepository, BuildStatus
from core.scores import report_of, tests_of
from core.states import WORKING, BuildState, progress_of, role_of
from db.models import BuildSummaryPublic, BuildWorkflowRow

# What status_of never reads: the requirements and the role outputs but the tests'. They are
# most of a row's bytes, and a status read runs many times a minute for every build watched.
UNREAD = [defer(BuildWorkflowRow.requirements)] + [
    defer(getattr(BuildWorkflowRow, f"{state.value}_output"))
    for state in WORKING
    if state is not BuildState.TESTING
]


# What a list shows of a build (BuildSummaryPublic).
SUMMARY = [
    load_only(*(getattr(BuildWorkflowRow, name) for name in BuildSummaryPublic.model_fields))
]


def status_row(session: Session, *, workflow_id: str) -> BuildWorkflowRow | None:
    """The build's row with what status_of reads loaded, and the rest of its outputs not."""
    query = select(BuildWorkflowRow).where(BuildWorkflowRow.workflow_id == workflow_id)
    return session.exec(query.options(*UNREAD)).first()


def status_of(row: BuildWorkflowRow) -> BuildStatus:
    state = BuildState(row.current_state)
    tested = report_of(row.testing_output)
    options = _options(row.workflow_metadata)
    return BuildStatus(
        build_id=row.build_id,
        project_id=row.project_id,
        user_id=row.user_id,
        state=state,
        current_role=role_of(state),
        progress=progress_of(state),
        completed_phases=[BuildState(s) for s in row.completed_phases or []],
        attempts={BuildState(k): v for k, v in (row.attempts or {}).items()},
        loop_backs=row.loop_backs,
        max_retries=options.max_retries,
        last_error=row.last_error,
        waiting_for=row.waiting_for,
        pending_command=row.pending_command,
        events=row.last_seq,
        usage=row.usage or {},
        tokens=row.tokens,
        cost_usd=row.cost_usd,
        repository=repository_of(row),
        sandbox=(tested.sandbox or None) if tested else None,
        setup=(tested.setup or None) if tested else None,
        tests=tested.counts.line() if tested and not tested.setup_failed else None,
        rerun_of=options.rerun.original if options.rerun else None,
        live_roles=options.rerun.live_roles() if options.rerun else [],
        failed_state=BuildState(row.failed_state) if row.failed_state else None,
        failure_reason=row.failure_reason,
        test_counts=tests_of(row.testing_output),
    )


def repository_of(row: BuildWorkflowRow) -> BuildRepository | None:
    if row.repository is None or row.branch is None:
        return None
    return BuildRepository(
        repository=row.repository,
        branch=row.branch,
        base=row.base_commit,
        build_branch=row.build_branch,
        head=row.head_commit,
        delivered=row.delivered_commit,
        version=row.version,
        delivery=row.delivery or "merge",
    )


def _options(metadata: object) -> BuildOptions:
    """The build's options as its row keeps them (without its role policy); a row of another
    version, or without them: the defaults."""
    found = metadata.get("options") if isinstance(metadata, dict) else None
    try:
        return BuildOptions.model_validate(found or {})
    except ValidationError:
        return BuildOptions()


def list_builds(
    session: Session,
    *,
    project_id: str | None = None,
    state: str | None = None,
    limit: int = 50,
    offset: int = 0,
) -> tuple[list[BuildWorkflowRow], int]:
    """Builds newest first, filtered by project and state; and how many match in all."""
    conditions = []
    if project_id is not None:
        conditions.append(BuildWorkflowRow.project_id == project_id)
    if state is not None:
        conditions.append(BuildWorkflowRow.current_state == state)
    counted = select(func.count()).select_from(BuildWorkflowRow).where(*conditions)
    total = session.exec(counted).one()
    query = (
        select(BuildWorkflowRow)
        .options(*SUMMARY)
        .where(*conditions)
        .order_by(col(BuildWorkflowRow.created_at).desc(), col(BuildWorkflowRow.id).desc())
        .offset(offset)
        .limit(limit)
    )
    return list(session.exec(query).all()), total
