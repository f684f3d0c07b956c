"""Pure decisions of a build: which messages are allowed, what the next role gets, what a
phase's output means for the build.

Deterministic and free of I/O: used by the workflow's handlers and validators alike, and
unit-tested without a Temporal server.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Any

from core.build_data import BuildData, Command
from core.build_io import BuildRequest
from core.events import NeedsAttention
from core.feedback import Feedback, Merge
from core.mirror import HandoffContext, HandoffMetadata
from core.outcomes import Ending, Setback
from core.releases import Conflict, RestoreTask, Retest, SmokeFailed
from core.reports import EMPTY_CHANGE, TestReport
from core.reruns import Replay
from core.role_io import RoleContext, RoleOutput, RoleTask, VerificationOutcome
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


def _choices(states: tuple[BuildState, ...]) -> str:
    return ", ".join(s.value for s in states) or "none"


def check_top_up(data: BuildData) -> str | None:
    if data.state in TERMINAL:
        return f"build is {data.state.value}; a finished build needs no budget"
    return None


def failure_signature(feedback: Feedback) -> str:
    """What makes two failures "the same": failing test ids with their messages, or the
    review's reasons, with numbers, addresses and spacing normalised away."""
    parts = [f"{f.test}: {f.message}" for f in feedback.failures or []]
    parts += feedback.reasons or []
    normal = sorted({_normalise(p) for p in parts})
    return hashlib.sha256("\n".join(normal).encode()).hexdigest()[:16]


def _normalise(text: str) -> str:
    text = re.sub(r"0x[0-9a-fA-F]+", "0xH", text)
    text = re.sub(r"\d+(\.\d+)?", "N", text)
    return re.sub(r"\s+", " ", text).strip().lower()


def first_reason(feedback: Feedback) -> str | None:
    """The first failing test (with its message) or review reason of a failure."""
    if feedback.failures:
        first = feedback.failures[0]
        return f"{first.test}: {first.message.splitlines()[0][:160] if first.message else ''}"
    if feedback.reasons:
        return feedback.reasons[0][:200]
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
    if (pending := data.steering.pending) is not None:
        return f"a {pending.command} to {pending.target.value} is already pending"
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
    gate = data.steering.waiting_at_gate
    if gate is None:
        return f"nothing waits for approval (build is at {data.state.value})"
    if data.steering.approved_gate == gate:
        return f"{gate.value} is already approved"
    return None


def reopened(phases: list[BuildState], target: BuildState) -> list[BuildState]:
    """The phases still complete once the build goes back to `target`: those before it."""
    return [s for s in phases if order(s) < order(target)]


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


def context_for(data: BuildData, state: BuildState) -> RoleContext:
    """What the role working in `state` is given: the earlier phases' outputs it needs, and at
    IMPLEMENTATION the feedback."""
    given: dict[str, Any] = {
        s.value: data.outputs[s] for s in CONTEXT_INPUTS[state] if s in data.outputs
    }
    if state is S.IMPLEMENTATION:
        given.update((name, value) for name, value in data.feedback if value is not None)
    return RoleContext.model_validate(given)


def handoff_parts(
    data: BuildData, handoff_state: BuildState, build_id: str
) -> tuple[Role, Role, BuildState, HandoffContext]:
    """from_role, to_role, next state and the context handed over at a HANDOFF_TO_* state."""
    spec = TABLE[handoff_state]
    to_role, next_state = spec.handoff_to, spec.next
    if to_role is None or next_state is None:
        raise ValueError(f"{handoff_state.value} is not a handoff state")
    source = previous_working(handoff_state)
    from_role = TABLE[source].role
    assert from_role is not None
    context = HandoffContext(
        instructions=INSTRUCTIONS[next_state],
        previous_output=data.outputs.get(source),
        phase_data=context_for(data, next_state),
        metadata=HandoffMetadata(
            build_id=build_id,
            from_state=source,
            attempt=data.attempts.get(next_state, 0) + 1,
            loop_backs=data.loop_backs,
            guidance=list(data.steering.guidance),
        ),
    )
    return from_role, to_role, next_state, context


def role_task(request: BuildRequest, data: BuildData, state: BuildState, attempt: int) -> RoleTask:
    """Attempt `attempt`'s task for the role of working state `state`."""
    role = role_of(state)
    if role is None:
        raise ValueError(f"{state.value} is not a working state")
    return RoleTask(
        build_id=request.build_id,
        project_id=request.project_id,
        role=role,
        state=state,
        attempt=attempt,
        requirements=request.requirements,
        context=context_for(data, state),
        guidance=list(data.steering.guidance),
        simulate=request.options.simulate,
        head=data.code.head,
        base=data.code.base,
        project=data.code.project,
        bump=request.options.bump,
        replay=_replay(request, role),
    )


def _replay(request: BuildRequest, role: Role) -> Replay | None:
    """How `role`'s calls are answered when not by its own model and prompt: a re-run's
    recording or live choices, an evaluation config's model and prompt."""
    if (rerun := request.options.rerun) is not None:
        return rerun.replay(role)
    if (evaluation := request.options.evaluation) is not None:
        return evaluation.choices.replay(role)
    return None


def restore_task(
    request: BuildRequest, data: BuildData, target: BuildState, *, code: bool
) -> RestoreTask:
    """The compensation of a rollback to `target` (code: put the code back as it was there),
    or of a retry after a release: undo the build's live release, reverting it on the
    project's branch when it was merged there."""
    built = data.code
    release = built.release
    landed = release is not None and release.delivery == "merge"
    return RestoreTask(
        build_id=request.build_id,
        project_id=request.project_id,
        commit=built.commit_at.get(target) if code else built.head,
        undo_release=release.version if release else None,
        release_to=release.previous if release else None,
        project=built.project,
        landed_from=built.base_before_release if landed else None,
        landed=release.commit if release and landed else None,
    )


@dataclass(frozen=True)
class Verdict:
    """What a phase's output means: on to `next_state`, or back to IMPLEMENTATION because of
    `why`, with the feedback the Code Writer gets. A failure with a `signature` asks a person
    when it repeats; one without loops back until the retries run out."""

    next_state: BuildState | None
    why: Setback | None = None
    feedback: Feedback = field(default_factory=Feedback)
    summary: str = ""
    signature: str | None = None
    # Not the code's failure: the build waits for a person at once, no Code Writer attempt.
    person: bool = False


def verdict(state: BuildState, output: RoleOutput) -> Verdict:
    """The decision after a phase: failing tests, a review that asks for changes and a release
    that did not go out send the build back; anything else moves it forward."""
    match output:
        case TestReport(setup_failed=True):
            feedback = Feedback(failures=list(output.failures))
            return Verdict(None, Setback.ENVIRONMENT_FAILED, feedback, output.summary,
                           failure_signature(feedback), person=True)  # fmt: skip
        case TestReport(empty=True) | SmokeFailed(empty=True):
            return Verdict(None, Setback.EMPTY_CHANGE, Feedback(error=EMPTY_CHANGE), output.summary,
                           failure_signature(Feedback(reasons=[EMPTY_CHANGE])))  # fmt: skip
        case TestReport(passed=False):
            feedback = Feedback(failures=list(output.failures))
            return Verdict(None, Setback.TESTS_FAILED, feedback, output.summary,
                           failure_signature(feedback))  # fmt: skip
        case VerificationOutcome(approved=False):
            feedback = Feedback(reasons=list(output.reasons))
            return Verdict(None, Setback.CHANGES_REQUESTED, feedback, output.summary,
                           failure_signature(feedback))  # fmt: skip
        case Retest():
            return Verdict(S.TESTING)  # the merged tree is tested before it can land
        case Conflict():
            merge = Merge(branch_head=output.branch_head, conflicts=list(output.conflicts))
            return Verdict(None, Setback.MERGE_CONFLICT, Feedback(merge=merge), output.summary)
        case SmokeFailed():
            return Verdict(None, Setback.RELEASE_FAILED, Feedback(release=output), output.summary)
    next_state = TABLE[state].next
    if next_state is None:
        raise ValueError(f"{state.value} is not a working state")
    return Verdict(next_state)


def attention(verdict: Verdict, state: BuildState, build_id: str) -> tuple[str, NeedsAttention]:
    """What a build that waits for a person after `verdict` says, and its event (with how it
    ends if nobody answers): a failure that repeated; or one that is not the code's, with its
    whole cause and the command that runs the state again."""
    assert verdict.why is not None  # a verdict that stops the build says why
    asked = NeedsAttention(
        reason=verdict.why,
        ending=Ending.UNANSWERED if verdict.person else Ending.NON_CONVERGING,
        signature=verdict.signature,
        feedback=verdict.feedback,
    )
    first = first_reason(verdict.feedback) or verdict.summary
    if not verdict.person:
        return f"{verdict.why} twice the same way at {state.value}: {first}", asked
    failures = verdict.feedback.failures or []
    return (
        f"{verdict.why} at {state.value}: {failures[0].message if failures else first}\n"
        f"Then `starter.py rollback {build_id} --to {state.value}` runs it again, or "
        f"`starter.py abort {build_id}` ends the build."
    ), asked


def aborting(data: BuildData) -> bool:
    """An abort is pending (it ends a pause at once)."""
    pending = data.steering.pending
    return pending is not None and pending.command is Command.ABORT
