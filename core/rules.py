"""Pure decisions of a build: which messages are allowed, what context the next role gets.

Deterministic and free of I/O: used by the workflow's handlers and validators alike, and
unit-tested without a Temporal server.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from core.models import BuildRequest, BuildSnapshot, BuildStatus, ModelUsage
from core.states import (
    PATH,
    TABLE,
    TERMINAL,
    WORKING,
    BuildState,
    Role,
    order,
    progress_of,
    role_of,
    rollback_targets,
)

S = BuildState


@dataclass
class Pending:
    """A retry or rollback accepted but not yet applied (it applies at the next boundary)."""

    command: str
    target: BuildState
    reason: str
    requested_by: str


@dataclass
class BuildData:
    """The whole mutable state of a build, held by the workflow."""

    state: BuildState = S.DISCOVERY
    completed_phases: list[BuildState] = field(default_factory=list)
    attempts: dict[str, int] = field(default_factory=dict)
    loop_backs: int = 0
    last_error: str | None = None
    waiting_at_gate: BuildState | None = None
    approved_gate: BuildState | None = None
    pending: Pending | None = None
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    feedback: dict[str, Any] = field(default_factory=dict)
    guidance: list[str] = field(default_factory=list)
    phase_running: bool = False
    failed_state: BuildState | None = None
    failure_reason: str | None = None
    head: str | None = None  # the workspace commit the build's code is at (None: empty)
    base: str | None = None  # the commit of this build's live release (None: none)
    commit_at: dict[str, str | None] = field(default_factory=dict)  # head when entering a state
    release: dict[str, Any] = field(default_factory=dict)  # this build's live release
    usage: dict[str, dict[str, float]] = field(default_factory=dict)  # per role, summed
    max_tokens: int | None = None  # the budget, top-ups included (None: no limit)
    max_cost_usd: float | None = None
    paused_from: BuildState | None = None  # the state a paused build paused in
    signatures: dict[str, str] = field(default_factory=dict)  # last failure per state
    attention: str | None = None  # what a person is asked to look at (NEEDS_ATTENTION)


USAGE_FIELDS = ("prompt_tokens", "completion_tokens", "cost_usd", "requests")


def add_usage(data: BuildData, role: str, usage: ModelUsage) -> None:
    """Add one role call's tokens, cost and requests to the build's per-role totals."""
    totals = data.usage.setdefault(role, {"calls": 0, **dict.fromkeys(USAGE_FIELDS, 0)})
    totals["calls"] += 1
    for name in USAGE_FIELDS:
        totals[name] = round(totals[name] + getattr(usage, name), 8)


def tokens_of(data: BuildData) -> int:
    return int(sum(u["prompt_tokens"] + u["completion_tokens"] for u in data.usage.values()))


def cost_of(data: BuildData) -> float:
    return round(sum(u["cost_usd"] for u in data.usage.values()), 8)


def _choices(states: tuple[BuildState, ...]) -> str:
    return ", ".join(s.value for s in states) or "none"


def budget_problem(data: BuildData) -> str | None:
    """What of the budget is spent, or None while some is left."""
    tokens, cost = tokens_of(data), cost_of(data)
    if data.max_tokens is not None and tokens >= data.max_tokens:
        return f"{tokens} of {data.max_tokens} tokens used"
    if data.max_cost_usd is not None and cost >= data.max_cost_usd:
        return f"${cost:.4f} of ${data.max_cost_usd:.4f} spent"
    return None


def check_top_up(data: BuildData) -> str | None:
    if data.state in TERMINAL:
        return f"build is {data.state.value}; a finished build needs no budget"
    return None


def apply_top_up(data: BuildData, tokens: int, cost_usd: float) -> None:
    """Add to the limits the build has (a dimension without a limit stays without one)."""
    if data.max_tokens is not None:
        data.max_tokens += tokens
    if data.max_cost_usd is not None:
        data.max_cost_usd = round(data.max_cost_usd + cost_usd, 8)


def failure_signature(state: BuildState, output: dict[str, Any]) -> str:
    """What makes two failures "the same": failing test ids with their messages, or the
    review's reasons, with numbers, addresses and spacing normalised away."""
    if state is S.TESTING:
        parts = [f"{f['test']}: {f['message']}" for f in output.get("failures", [])]
    else:
        parts = list(output.get("reasons", []))
    normal = sorted({_normalise(p) for p in parts})
    return hashlib.sha256("\n".join(normal).encode()).hexdigest()[:16]


def _normalise(text: str) -> str:
    text = re.sub(r"0x[0-9a-fA-F]+", "0xH", text)
    text = re.sub(r"\d+(\.\d+)?", "N", text)
    return re.sub(r"\s+", " ", text).strip().lower()


def first_reason(feedback: dict[str, Any]) -> str | None:
    """The first failing test (with its message) or review reason of a failure."""
    if feedback.get("failures"):
        first = feedback["failures"][0]
        return f"{first['test']}: {str(first['message']).splitlines()[0][:160]}"
    if feedback.get("reasons"):
        return str(feedback["reasons"][0])[:200]
    return None


def check_abort(data: BuildData) -> str | None:
    if data.state in TERMINAL:
        return f"build is {data.state.value}; it has already ended"
    return None


def _cannot_steer(data: BuildData, what: str) -> str | None:
    """The refusals retry and rollback share: the build has ended, is paused for its budget,
    or already has a command pending."""
    if data.state in TERMINAL:
        return f"build is {data.state.value}; a finished build cannot be {what}"
    if data.state is S.BUDGET_EXHAUSTED:
        return "build is paused until its budget is topped up (top_up); then it can be steered"
    if data.pending is not None:
        return f"a {data.pending.command} to {data.pending.target.value} is already pending"
    return None


def check_retry(data: BuildData) -> str | None:
    """Why a retry is refused now, or None when it is allowed."""
    if problem := _cannot_steer(data, "retried"):
        return problem
    if TABLE[data.state].retry_to is None:
        allowed = tuple(s for s in PATH if TABLE[s].retry_to is not None)
        return f"nothing to retry at {data.state.value}; retry is possible from {_choices(allowed)}"
    return None


def retry_target(state: BuildState) -> BuildState:
    target = TABLE[state].retry_to
    if target is None:
        raise ValueError(f"{state.value} has no retry edge")
    return target


def check_rollback(data: BuildData, target: BuildState) -> str | None:
    """Why a rollback to `target` is refused now, or None when it is allowed."""
    if problem := _cannot_steer(data, "rolled back"):
        return problem
    allowed = rollback_targets(data.state)
    if target in allowed:
        return None
    if target == data.state:
        return f"build is already at {target.value}"
    if target not in WORKING:
        return f"{target.value} is not a working state; roll back to one of {_choices(allowed)}"
    if order(target) > order(data.state):
        return (
            f"cannot roll back forward from {data.state.value} to {target.value}; "
            f"earlier states: {_choices(allowed)}"
        )
    return f"cannot roll back from {data.state.value} to {target.value}"


def check_approve(data: BuildData) -> str | None:
    if data.state in TERMINAL:
        return f"build is {data.state.value}; nothing waits for approval"
    if data.waiting_at_gate is None:
        return f"nothing waits for approval (build is at {data.state.value})"
    if data.approved_gate == data.waiting_at_gate:
        return f"{data.waiting_at_gate.value} is already approved"
    return None


def previous_working(state: BuildState) -> BuildState:
    """The working state just before `state` on the happy path."""
    earlier = [s for s in WORKING if order(s) < order(state)]
    if not earlier:
        raise ValueError(f"no working state before {state.value}")
    return earlier[-1]


# What each working state needs from earlier phases, and what it is asked to do.
CONTEXT_INPUTS: dict[BuildState, tuple[BuildState, ...]] = {
    S.DISCOVERY: (),
    S.PLANNING: (S.DISCOVERY,),
    S.IMPLEMENTATION: (S.DISCOVERY, S.PLANNING),
    S.TESTING: (S.DISCOVERY, S.PLANNING, S.IMPLEMENTATION),
    S.VERIFICATION: (S.DISCOVERY, S.IMPLEMENTATION, S.TESTING),
    S.DEPLOYMENT: (S.PLANNING, S.IMPLEMENTATION, S.VERIFICATION),
}

INSTRUCTIONS: dict[BuildState, str] = {
    S.DISCOVERY: "Gather the requirements and acceptance criteria of the request.",
    S.PLANNING: "Plan the implementation: steps, files, test strategy.",
    S.IMPLEMENTATION: "Implement the plan; fix every failure or review reason listed.",
    S.TESTING: "Test the implementation against the acceptance criteria.",
    S.VERIFICATION: "Review the implementation and test report; approve or request changes.",
    S.DEPLOYMENT: "Release the approved implementation and write the release notes.",
}


def context_for(data: BuildData, state: BuildState) -> dict[str, Any]:
    """Phase-specific data the role working in `state` receives."""
    ctx: dict[str, Any] = {
        s.value: data.outputs[s.value] for s in CONTEXT_INPUTS[state] if s.value in data.outputs
    }
    if state is S.IMPLEMENTATION and data.feedback:
        ctx.update(data.feedback)
    return ctx


def handoff_parts(
    data: BuildData, handoff_state: BuildState, build_id: str
) -> tuple[Role, Role, BuildState, dict[str, Any]]:
    """from_role, to_role, next state and the context handed over at a HANDOFF_TO_* state."""
    spec = TABLE[handoff_state]
    to_role, next_state = spec.handoff_to, spec.next
    if to_role is None or next_state is None:
        raise ValueError(f"{handoff_state.value} is not a handoff state")
    source = previous_working(handoff_state)
    from_role = TABLE[source].role
    assert from_role is not None
    context = {
        "instructions": INSTRUCTIONS[next_state],
        "previous_output": data.outputs.get(source.value, {}),
        "phase_data": context_for(data, next_state),
        "metadata": {
            "build_id": build_id,
            "from_state": source.value,
            "attempt": data.attempts.get(next_state.value, 0) + 1,
            "loop_backs": data.loop_backs,
            "guidance": list(data.guidance),
        },
    }
    return from_role, to_role, next_state, context


def waiting_for(data: BuildData) -> str | None:
    if data.state is S.NEEDS_ATTENTION:
        return f"a person: {data.attention} (retry with guidance, rollback or abort)"
    if data.state is S.BUDGET_EXHAUSTED:
        return f"a budget top-up ({budget_problem(data) or 'topped up'})"
    return f"approval at {data.waiting_at_gate.value}" if data.waiting_at_gate else None


def pending_command(data: BuildData) -> str | None:
    pending = data.pending
    return f"{pending.command} to {pending.target.value}" if pending else None


def status(request: BuildRequest, data: BuildData, *, events: int) -> BuildStatus:
    """The answer of the workflow's `status` query."""
    return BuildStatus(
        build_id=request.build_id,
        project_id=request.project_id,
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
        usage={role: dict(u) for role, u in data.usage.items()},
        tokens=tokens_of(data),
        cost_usd=cost_of(data),
    )


def current_details(status: BuildStatus) -> str:
    """Markdown for the Web UI's current details."""
    role = status.current_role.value if status.current_role else "-"
    attempts = ", ".join(f"{k} {v}" for k, v in status.attempts.items()) or "-"
    lines = [
        f"**State:** {status.state.value} ({status.progress}%) · **Role:** {role}",
        f"**Attempts:** {attempts} · **Loop-backs:** {status.loop_backs}/{status.max_retries}",
        f"**Tokens:** {status.tokens} · **Cost:** ${status.cost_usd:.4f}",
    ]
    if status.waiting_for:
        lines.append(
            f"**Waiting for:** {status.waiting_for} (signal `approve`, `retry` or `rollback`)"
        )
    if status.pending_command:
        lines.append(f"**Pending:** {status.pending_command}")
    if status.last_error:
        lines.append(f"**Last error:** {status.last_error}")
    return "\n\n".join(lines)


def snapshot(
    request: BuildRequest,
    data: BuildData,
    *,
    workflow_id: str,
    started: datetime,
    now: datetime,
    last_seq: int,
    outputs: set[str],
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
        failure_reason=data.failure_reason,
        usage={role: dict(u) for role, u in data.usage.items()},
        tokens=tokens_of(data),
        cost_usd=cost_of(data),
        outputs={k: data.outputs[k] for k in sorted(outputs)},
        options=request.options.model_dump(mode="json", exclude={"policy"}),
        created_at=started,
        updated_at=now,
        completed_at=now if finished else None,
        duration_seconds=(now - started).total_seconds() if finished else None,
        last_seq=last_seq,
    )
