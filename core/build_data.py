"""The state a build's workflow holds, in parts, each changed by one owner only
(tests/core/test_owners.py holds every write to its owner):

- `BuildData`'s own fields, the walk through the states (the state, phases, attempts,
  loop-backs, outputs, feedback, pauses, the failure): workflows/build.py;
- `code`, the build's code in its project's repository: workflows/code.py;
- `queue`, its place in its project's release queue: workflows/turn.py;
- `steering`, what people ask of it (a pending command, a gate, guidance): workflows/messages.py;
- `budget`, its limits and what its model calls spent: core/budget.py.

Everything else, core/rules.py and core/views.py included, only reads them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal

from core.budget import BudgetLedger
from core.eval_build import Acceptance
from core.feedback import Feedback
from core.outcomes import Ending
from core.projects import ProjectConfig
from core.releases import Released
from core.role_io import RoleOutput
from core.states import BuildState


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
class CodeState:
    """The build's code. Owner: workflows/code.py."""

    project: ProjectConfig | None = None  # the repository the build works on (None: none)
    branch: str | None = None  # the build's branch in its workspace
    project_base: str | None = None  # the project branch's commit the build started from
    head: str | None = None  # the workspace commit the build's code is at (None: empty)
    base: str | None = None  # the commit its change is measured from (its live release's)
    commit_at: dict[BuildState, str | None] = field(default_factory=dict)  # head entering a state
    release: Released | None = None  # this build's live release
    base_before_release: str | None = None  # `base` before this build released
    accepted: Acceptance | None = None  # an evaluation case's hidden tests on its release


@dataclass
class QueueState:
    """The build's place in its project's release queue. Owner: workflows/turn.py."""

    turn: Literal["waiting", "holding"] | None = None
    ticket: int = 0  # how often it joined the queue: a grant for another ticket is stale
    ahead: list[str] = field(default_factory=list)  # builds before it when it joined


@dataclass
class Steering:
    """What people ask of the build. Owner: workflows/messages.py."""

    pending: Pending | None = None
    waiting_at_gate: BuildState | None = None
    approved_gate: BuildState | None = None
    guidance: list[str] = field(default_factory=list)  # given to every later role


@dataclass
class BuildData:
    """The whole mutable state of a build, held by the workflow. Owner of its own fields:
    workflows/build.py."""

    state: BuildState = BuildState.DISCOVERY
    completed_phases: list[BuildState] = field(default_factory=list)
    attempts: dict[BuildState, int] = field(default_factory=dict)
    loop_backs: int = 0
    last_error: str | None = None
    outputs: dict[BuildState, RoleOutput] = field(default_factory=dict)  # per state, the last
    feedback: Feedback = field(default_factory=Feedback)  # what the Code Writer fixes next
    phase_running: bool = False
    failed_state: BuildState | None = None
    ending: Ending | None = None  # why it ended FAILED
    ending_detail: str | None = None  # what says more: the setback, the error
    paused_from: BuildState | None = None  # the state a paused build paused in
    signatures: dict[BuildState, str] = field(default_factory=dict)  # last failure per state
    attention: str | None = None  # what a person is asked to look at (NEEDS_ATTENTION)
    code: CodeState = field(default_factory=CodeState)
    queue: QueueState = field(default_factory=QueueState)
    steering: Steering = field(default_factory=Steering)
    budget: BudgetLedger = field(default_factory=BudgetLedger)
