"""How a build is shown: the answer of its `status` query, the Web UI's current details, and
its row in the mirror. Pure functions of the workflow's state."""

from __future__ import annotations

from datetime import datetime

from core.build_data import BuildData
from core.build_io import (
    BuildRepository,
    BuildRequest,
    BuildResult,
    BuildStatus,
    workflow_id_for,
)
from core.mirror import BuildSnapshot
from core.outcomes import Setback, ending_text
from core.projects import redact
from core.reports import TestReport
from core.scores import tests_of
from core.states import TERMINAL, BuildState, progress_of, role_of

S = BuildState


def waiting_for(data: BuildData) -> str | None:
    if data.state is S.NEEDS_ATTENTION:
        # A failed environment's question says what to do: it is shown whole.
        if (data.attention or "").startswith(Setback.ENVIRONMENT_FAILED):
            return f"a person: {data.attention}"
        return f"a person: {data.attention} (retry with guidance, rollback or abort)"
    if data.state is S.BUDGET_EXHAUSTED:
        return f"a budget top-up ({data.budget.problem() or 'topped up'})"
    if data.queue.turn == "waiting":
        ahead = f" (behind {_some(data.queue.ahead)})" if data.queue.ahead else ""
        return f"its turn in the project's release queue{ahead}"
    gate = data.steering.waiting_at_gate
    return f"approval at {gate.value}" if gate else None


SHOWN_AHEAD = 3  # a queue grows with the work: its text names the next few, then counts


def _some(names: list[str]) -> str:
    more = len(names) - SHOWN_AHEAD
    return ", ".join(names[:SHOWN_AHEAD]) + (f" and {more} more" if more > 0 else "")


def pending_command(data: BuildData) -> str | None:
    pending = data.steering.pending
    return f"{pending.command} to {pending.target.value}" if pending else None


def repository(data: BuildData) -> BuildRepository | None:
    """The build's place in its project's repository (None: it has none)."""
    built, project = data.code, data.code.project
    if project is None:
        return None
    release = built.release
    return BuildRepository(
        repository=redact(project.repository),
        branch=project.branch,
        base=built.project_base,
        build_branch=built.branch,
        head=built.head,
        delivered=release.commit if release else None,
        version=release.version if release else None,
        delivery=project.delivery,
    )


def status(
    request: BuildRequest, data: BuildData, *, events: int, model_now: str | None = None
) -> BuildStatus:
    """The answer of the workflow's `status` query."""
    output = data.outputs.get(S.TESTING)
    tested = output if isinstance(output, TestReport) else None
    return BuildStatus(
        build_id=request.build_id,
        project_id=request.project_id,
        user_id=request.user_id,
        state=data.state,
        current_role=role_of(data.state),
        progress=progress_of(data.paused_from or data.state),
        completed_phases=list(data.completed_phases),
        attempts=dict(data.attempts),
        loop_backs=data.loop_backs,
        max_retries=request.options.max_retries,
        last_error=data.last_error,
        waiting_for=waiting_for(data),
        pending_command=pending_command(data),
        events=events,
        usage={role: dict(u) for role, u in data.budget.usage.items()},
        tokens=data.budget.tokens(),
        cost_usd=data.budget.cost(),
        repository=repository(data),
        sandbox=(tested.sandbox or None) if tested else None,
        setup=(tested.setup or None) if tested else None,
        tests=tested.counts.line() if tested and not tested.setup_failed else None,
        model_now=model_now if data.state not in TERMINAL else None,
        rerun_of=rerun.original if (rerun := request.options.rerun) else None,
        live_roles=rerun.live_roles() if rerun else [],
        failed_state=data.failed_state,
        failure_reason=ending_text(data.ending, data.ending_detail) if data.ending else None,
        test_counts=tests_of(tested) if tested else None,
    )


def result(request: BuildRequest, data: BuildData, *, wall_seconds: float) -> BuildResult:
    """How the build ended (the workflow's result, or its failure's detail)."""
    return BuildResult(
        build_id=request.build_id,
        state=data.state,
        attempts=dict(data.attempts),
        loop_backs=data.loop_backs,
        release=data.code.release,
        failed_state=data.failed_state,
        failure_reason=ending_text(data.ending, data.ending_detail) if data.ending else None,
        tokens=data.budget.tokens(),
        cost_usd=data.budget.cost(),
        wall_seconds=round(wall_seconds, 3),
        acceptance=data.code.accepted,
    )


def current_details(status: BuildStatus, namespace: str = "default") -> str:
    """Markdown for the Web UI's current details (a re-run's links its original's page)."""
    role = status.current_role.value if status.current_role else "-"
    attempts = ", ".join(f"{k} {v}" for k, v in status.attempts.items()) or "-"
    lines = [
        f"**State:** {status.state.value} ({status.progress}%) · **Role:** {role}",
        f"**Attempts:** {attempts} · **Loop-backs:** {status.loop_backs}/{status.max_retries}",
        f"**Tokens:** {status.tokens} · **Cost:** ${status.cost_usd:.4f}",
    ]
    if status.rerun_of:
        page = f"/namespaces/{namespace}/workflows/{workflow_id_for(status.rerun_of)}"
        live = ", ".join(r.value for r in status.live_roles) or "none"
        lines.append(f"**Re-run of:** [build {status.rerun_of}]({page}) · **Live roles:** {live}")
    if status.model_now:
        lines.append(f"**Model:** {status.model_now}")
    if status.waiting_for:
        lines.append(
            f"**Waiting for:** {status.waiting_for} (signal `approve`, `retry` or `rollback`)"
        )
    if status.pending_command:
        lines.append(f"**Pending:** {status.pending_command}")
    if status.repository is not None:
        lines.append(repository_line(status.repository))
    if status.sandbox:
        lines.append(f"**Sandbox of the last test run:** {status.sandbox}")
    if status.setup:
        lines.append(f"**Environment:** {status.setup}")
    if status.tests:
        lines.append(f"**Tests:** {status.tests}")
    if status.failure_reason:
        lines.append(f"**Ended:** {status.failure_reason}")
    if status.last_error:
        lines.append(f"**Last error:** {status.last_error}")
    return "\n\n".join(lines)


def repository_line(repo: BuildRepository) -> str:
    """One line of markdown: where the build started, where it is, what it delivered."""
    line = (
        f"**Repository:** `{repo.repository}` `{repo.branch}` from `{_short(repo.base)}` · "
        f"**Branch:** `{repo.build_branch}` at `{_short(repo.head)}`"
    )
    if repo.version:
        line += (
            f" · **Delivered ({repo.delivery}):** `{repo.version}` at `{_short(repo.delivered)}`"
        )
    return line


def _short(commit: str | None) -> str:
    return commit[:10] if commit else "-"


def snapshot(
    request: BuildRequest,
    data: BuildData,
    *,
    workflow_id: str,
    started: datetime,
    now: datetime,
    last_seq: int,
    outputs: set[BuildState],
    run_id: str | None = None,
) -> BuildSnapshot:
    """The build's mirror row as of `last_seq`, with only the phase outputs named in `outputs`."""
    finished = data.state in TERMINAL
    return BuildSnapshot(
        build_id=request.build_id,
        workflow_id=workflow_id,
        project_id=request.project_id,
        user_id=request.user_id,
        requirements=request.requirements,
        state=data.state,
        current_role=role_of(data.state),
        attempts=dict(data.attempts),
        loop_backs=data.loop_backs,
        last_error=data.last_error,
        completed_phases=list(data.completed_phases),
        waiting_for=waiting_for(data),
        pending_command=pending_command(data),
        failed_state=data.failed_state,
        failure_reason=ending_text(data.ending, data.ending_detail) if data.ending else None,
        usage={role: dict(u) for role, u in data.budget.usage.items()},
        tokens=data.budget.tokens(),
        cost_usd=data.budget.cost(),
        outputs={k: data.outputs[k] for k in sorted(outputs)},
        options=request.options,
        repository=repository(data),
        created_at=started,
        updated_at=now,
        completed_at=now if finished else None,
        duration_seconds=(now - started).total_seconds() if finished else None,
        last_seq=last_seq,
        run_id=run_id,
    )
