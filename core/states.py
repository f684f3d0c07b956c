"""The build state machine: one declarative table, used by the workflow, validators, docs and tests.

Pure standard library, so workflow code can import it at top level.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class BuildState(StrEnum):
    DISCOVERY = "discovery"
    PLANNING = "planning"
    HANDOFF_TO_CODER = "handoff_to_coder"
    IMPLEMENTATION = "implementation"
    HANDOFF_TO_TESTER = "handoff_to_tester"
    TESTING = "testing"
    HANDOFF_TO_VERIFIER = "handoff_to_verifier"
    VERIFICATION = "verification"
    HANDOFF_TO_RELEASER = "handoff_to_releaser"
    DEPLOYMENT = "deployment"
    COMPLETE = "complete"
    FAILED = "failed"
    CANCELLED = "cancelled"
    BUDGET_EXHAUSTED = "budget_exhausted"
    NEEDS_ATTENTION = "needs_attention"


class Role(StrEnum):
    Q_ASSISTANT = "q_assistant"
    CODE_WRITER = "code_writer"
    TEST_AUDITOR = "test_auditor"
    VERIFICATION_OVERSEER = "verification_overseer"
    RELEASE_MANAGER = "release_manager"


class EdgeKind(StrEnum):
    FORWARD = "forward"
    RETRY = "retry"
    ROLLBACK = "rollback"
    FAILURE = "failure"
    PAUSE = "pause"
    RESUME = "resume"


@dataclass(frozen=True)
class StateSpec:
    """One row of the table: who works in a state, how far along it is, where it may go."""

    role: Role | None
    progress: int
    next: BuildState | None = None
    retry_to: BuildState | None = None
    handoff_to: Role | None = None


S = BuildState
R = Role

# The happy path in order; every other edge is derived from this table.
TABLE: dict[BuildState, StateSpec] = {
    S.DISCOVERY: StateSpec(R.Q_ASSISTANT, 0, next=S.PLANNING),
    S.PLANNING: StateSpec(R.Q_ASSISTANT, 10, next=S.HANDOFF_TO_CODER),
    S.HANDOFF_TO_CODER: StateSpec(None, 20, next=S.IMPLEMENTATION, handoff_to=R.CODE_WRITER),
    S.IMPLEMENTATION: StateSpec(R.CODE_WRITER, 30, next=S.HANDOFF_TO_TESTER),
    S.HANDOFF_TO_TESTER: StateSpec(
        None, 40, next=S.TESTING, retry_to=S.IMPLEMENTATION, handoff_to=R.TEST_AUDITOR
    ),
    S.TESTING: StateSpec(R.TEST_AUDITOR, 50, next=S.HANDOFF_TO_VERIFIER, retry_to=S.IMPLEMENTATION),
    S.HANDOFF_TO_VERIFIER: StateSpec(
        None,
        60,
        next=S.VERIFICATION,
        retry_to=S.IMPLEMENTATION,
        handoff_to=R.VERIFICATION_OVERSEER,
    ),
    S.VERIFICATION: StateSpec(
        R.VERIFICATION_OVERSEER, 70, next=S.HANDOFF_TO_RELEASER, retry_to=S.IMPLEMENTATION
    ),
    S.HANDOFF_TO_RELEASER: StateSpec(
        None, 80, next=S.DEPLOYMENT, retry_to=S.IMPLEMENTATION, handoff_to=R.RELEASE_MANAGER
    ),
    S.DEPLOYMENT: StateSpec(R.RELEASE_MANAGER, 90, next=S.COMPLETE, retry_to=S.IMPLEMENTATION),
    S.COMPLETE: StateSpec(None, 100),
    S.FAILED: StateSpec(None, 100),
    S.CANCELLED: StateSpec(None, 100),
    # A pause, entered before a role call when the build's budget is spent; the build goes
    # back to the state it paused in (its progress is that state's).
    S.BUDGET_EXHAUSTED: StateSpec(None, 0),
    # A pause, entered when TESTING or VERIFICATION fails the same way twice: a person
    # retries with guidance, rolls back or aborts.
    S.NEEDS_ATTENTION: StateSpec(None, 0, retry_to=S.IMPLEMENTATION),
}

TERMINAL: frozenset[BuildState] = frozenset({S.COMPLETE, S.FAILED, S.CANCELLED})
PAUSES: frozenset[BuildState] = frozenset({S.BUDGET_EXHAUSTED, S.NEEDS_ATTENTION})
# Where a build can pause for a person: a failure that repeats (TESTING, VERIFICATION), the
# revert of its release that conflicts on the project's branch (DEPLOYMENT).
ATTENTION_FROM: tuple[BuildState, ...] = (S.TESTING, S.VERIFICATION, S.DEPLOYMENT)
PATH: tuple[BuildState, ...] = tuple(
    s for s in TABLE if s not in (S.FAILED, S.CANCELLED) and s not in PAUSES
)
WORKING: tuple[BuildState, ...] = tuple(s for s in PATH if TABLE[s].role is not None)
HANDOFFS: tuple[BuildState, ...] = tuple(s for s in PATH if TABLE[s].handoff_to is not None)


def order(state: BuildState) -> int:
    """Position on the happy path; terminal failure states sort after everything."""
    return PATH.index(state) if state in PATH else len(PATH)


def rollback_targets(state: BuildState) -> tuple[BuildState, ...]:
    """Earlier working states a build in `state` may be rolled back to."""
    if state is S.NEEDS_ATTENTION:
        return tuple(s for s in WORKING if order(s) <= order(ATTENTION_FROM[0]))
    if state in TERMINAL or state in PAUSES:
        return ()
    return tuple(s for s in WORKING if order(s) < order(state))


def edges() -> list[tuple[BuildState, BuildState, EdgeKind]]:
    """Every valid edge of the machine, derived from the table."""
    out: list[tuple[BuildState, BuildState, EdgeKind]] = []
    for state, spec in TABLE.items():
        if spec.next is not None:
            out.append((state, spec.next, EdgeKind.FORWARD))
        if spec.retry_to is not None:
            out.append((state, spec.retry_to, EdgeKind.RETRY))
        out.extend((state, target, EdgeKind.ROLLBACK) for target in rollback_targets(state))
        if state not in TERMINAL:
            out.append((state, S.FAILED, EdgeKind.FAILURE))
            out.append((state, S.CANCELLED, EdgeKind.FAILURE))
    for working in WORKING:
        out.append((working, S.BUDGET_EXHAUSTED, EdgeKind.PAUSE))
        out.append((S.BUDGET_EXHAUSTED, working, EdgeKind.RESUME))
    out.extend((state, S.NEEDS_ATTENTION, EdgeKind.PAUSE) for state in ATTENTION_FROM)
    return out


_EDGES: dict[tuple[BuildState, BuildState], EdgeKind] = {}
for _src, _dst, _kind in edges():
    # Retry wins over rollback where both reach the same state: the retry edge is the
    # one the workflow takes on its own.
    _EDGES.setdefault((_src, _dst), _kind)


def edge_kind(src: BuildState, dst: BuildState) -> EdgeKind | None:
    """The kind of the edge src -> dst, or None when the transition is not allowed."""
    return _EDGES.get((src, dst))


def is_valid(src: BuildState, dst: BuildState) -> bool:
    return (src, dst) in _EDGES


def role_of(state: BuildState) -> Role | None:
    return TABLE[state].role


def progress_of(state: BuildState) -> int:
    return TABLE[state].progress


def mermaid() -> str:
    """A Mermaid state diagram generated from the table (for the README)."""
    lines = ["stateDiagram-v2", f"    [*] --> {S.DISCOVERY.value}"]
    for src, dst, kind in edges():
        if kind is EdgeKind.ROLLBACK:
            continue  # every earlier working state: drawn as a note, not 40 arrows
        if kind is EdgeKind.FAILURE and dst is S.CANCELLED:
            continue
        if kind is EdgeKind.FAILURE and src not in WORKING and src not in PAUSES:
            continue
        if S.BUDGET_EXHAUSTED in (src, dst) and kind in (EdgeKind.PAUSE, EdgeKind.RESUME):
            continue  # from and back to every working state: drawn as a note
        label = "" if kind is EdgeKind.FORWARD else f": {kind.value}"
        lines.append(f"    {src.value} --> {dst.value}{label}")
    lines += [f"    {t.value} --> [*]" for t in (S.COMPLETE, S.FAILED, S.CANCELLED)]
    lines.append(
        "    note right of deployment: rollback from any state to any earlier working state;"
        " cancel from any non-terminal state"
    )
    lines.append(
        f"    note left of {S.BUDGET_EXHAUSTED.value}: entered from any working state when the"
        " budget is spent; top_up resumes that state"
    )
    return "\n".join(lines)
