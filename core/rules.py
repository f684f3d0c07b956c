"""Pure decisions of a build: which messages are allowed, what the next role gets, what a
phase's output means for the build.

Deterministic and free of I/O: used by the workflow's handlers and validators alike, and
unit-tested without a Temporal server.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal

from core.models import BuildRequest
from core.projects import ProjectConfig
from core.role_io import (
    ModelUsage,
    OpenResult,
    ReleaseOutcome,
    RestoreTask,
    RoleOutput,
    RoleTask,
    TestReport,
    VerificationOutcome,
)
from core.states import (
    PATH,
    TABLE,
    TERMINAL,
    WORKING,
    BuildState,
    Role,
    order,
    role_of,
    rollback_targets,
)

S = BuildState


class Command(StrEnum):
    """A person's command that waits for the pipeline's next boundary to apply."""

    RETRY = "retry"
    ROLLBACK = "rollback"
    ABORT = "abort"


@dataclass
class Pending:
    """A retry, rollback or abort accepted but not yet applied (it applies at the next
    boundary)."""

    command: Command
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
    release: ReleaseOutcome | None = None  # this build's live release
    base_before_release: str | None = None  # `base` before this build released
    usage: dict[str, dict[str, float]] = field(default_factory=dict)  # per role, summed
    max_tokens: int | None = None  # the budget, top-ups included (None: no limit)
    max_cost_usd: float | None = None
    paused_from: BuildState | None = None  # the state a paused build paused in
    signatures: dict[str, str] = field(default_factory=dict)  # last failure per state
    attention: str | None = None  # what a person is asked to look at (NEEDS_ATTENTION)
    project: ProjectConfig | None = None  # the repository the build works on (None: none)
    branch: str | None = None  # the build's branch in its workspace
    project_base: str | None = None  # the project branch's commit the build started from
    turn: Literal["waiting", "holding"] | None = None  # its place in the release queue
    turn_ticket: int = 0  # how often it joined the queue: a grant for another ticket is stale
    turn_ahead: list[str] = field(default_factory=list)  # builds before it when it joined


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


def reopen_from(data: BuildData, target: BuildState) -> None:
    """Phases at or after `target` are no longer complete once the build goes back to it."""
    data.completed_phases = [s for s in data.completed_phases if order(s) < order(target)]


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


def role_task(request: BuildRequest, data: BuildData, state: BuildState) -> RoleTask:
    """The next attempt's task for the role of working state `state` (the attempt is counted)."""
    role = role_of(state)
    if role is None:
        raise ValueError(f"{state.value} is not a working state")
    attempt = data.attempts.get(state.value, 0) + 1
    data.attempts[state.value] = attempt
    return RoleTask(
        build_id=request.build_id,
        project_id=request.project_id,
        role=role,
        state=state,
        attempt=attempt,
        requirements=request.requirements,
        context=context_for(data, state),
        guidance=list(data.guidance),
        simulate=request.options.simulate,
        head=data.head,
        base=data.base,
        project=data.project,
        bump=request.options.bump,
    )


def opened(data: BuildData, result: OpenResult) -> None:
    """The workspace is open on the project's branch head: the build's base, and the commit
    every earlier state (a rollback to DISCOVERY) goes back to."""
    data.project, data.branch = result.project, result.branch
    data.project_base = data.base = data.head = result.base
    data.commit_at[data.state.value] = result.base


def restore_task(
    request: BuildRequest, data: BuildData, target: BuildState, *, code: bool
) -> RestoreTask:
    """The compensation of a rollback to `target` (code: put the code back as it was there),
    or of a retry after a release: undo the build's live release, reverting it on the
    project's branch when it was merged there."""
    release = data.release
    landed = release is not None and release.delivery == "merge"
    return RestoreTask(
        build_id=request.build_id,
        project_id=request.project_id,
        commit=data.commit_at.get(target.value) if code else data.head,
        undo_release=release.version if release else None,
        release_to=release.previous if release else None,
        project=data.project,
        landed_from=data.base_before_release if landed else None,
        landed=release.commit if release and landed else None,
    )


@dataclass(frozen=True)
class Verdict:
    """What a phase's output means: on to `next_state`, or back to IMPLEMENTATION because of
    `why`, with the feedback the Code Writer gets. A failure with a `signature` asks a person
    when it repeats; one without loops back until the retries run out."""

    next_state: BuildState | None
    why: str = ""
    feedback: dict[str, Any] = field(default_factory=dict)
    summary: str = ""
    signature: str | None = None


def verdict(state: BuildState, output: RoleOutput) -> Verdict:
    """The decision after a phase: failing tests, a review that asks for changes and a release
    that did not go out send the build back; anything else moves it forward."""
    feedback: dict[str, Any]
    if isinstance(output, TestReport) and not output.passed:
        feedback = {"failures": [f.model_dump(mode="json") for f in output.failures]}
        why = "tests failed"
    elif isinstance(output, VerificationOutcome) and not output.approved:
        feedback = {"reasons": list(output.reasons)}
        why = "verification requested changes"
    elif isinstance(output, ReleaseOutcome) and output.retest:
        return Verdict(S.TESTING)  # the merged tree is tested before it can land
    elif isinstance(output, ReleaseOutcome) and output.conflicts:
        merge = {"branch_head": output.branch_head, "conflicts": list(output.conflicts)}
        return Verdict(None, "merge conflict", {"merge": merge}, output.summary)
    elif isinstance(output, ReleaseOutcome) and not output.released:
        return Verdict(None, "release failed", {"release": output.model_dump(mode="json")},
                       output.summary)  # fmt: skip
    else:
        next_state = TABLE[state].next
        if next_state is None:
            raise ValueError(f"{state.value} is not a working state")
        return Verdict(next_state)
    return Verdict(None, why, feedback, output.summary, failure_signature(state, feedback))


def aborting(data: BuildData) -> bool:
    """An abort is pending (it ends a pause at once)."""
    return data.pending is not None and data.pending.command is Command.ABORT
