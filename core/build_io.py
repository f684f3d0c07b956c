"""Types that cross the Temporal boundary: the workflow's input (a build request and its
options), what it reports (events, handoffs, status, result) and the mirror's batches. The
messages into a build are in core/messages.py, the role activities' types in core/role_io.py.

Side-effect free: no clients, no settings, no I/O. Workflow code imports these modules
through `workflow.unsafe.imports_passed_through()`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum
from typing import Annotated

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    WithJsonSchema,
    field_validator,
)
from temporalio.common import RetryPolicy

from core.eval_build import Acceptance, Evaluation
from core.projects import Bump, ProjectConfig, ProjectId
from core.releases import Released
from core.reruns import Rerun
from core.scores import TestScore
from core.states import HANDOFFS, BuildState, Role

WORKFLOW_ID_PREFIX = "build-"
BUILD_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
BUILD_ID_RULE = "letters, digits, '_', '.' and '-', up to 64, the first a letter or digit"


def workflow_id_for(build_id: str) -> str:
    return f"{WORKFLOW_ID_PREFIX}{build_id}"


def build_id_from(workflow_id: str) -> str:
    return workflow_id.removeprefix(WORKFLOW_ID_PREFIX)


class Simulation(StrEnum):
    """Branches the offline model makes happen on demand, through real artifacts (ignored by
    real models): the Code Writer writes a real bug, the review rejects, the smoke check fails,
    a teammate's change to the build's files lands on the project's branch just before the
    build's release (a real merge conflict)."""

    TESTS_FAIL_ONCE = "tests_fail_once"
    VERIFICATION_REJECTS_ONCE = "verification_rejects_once"
    TESTS_ALWAYS_FAIL = "tests_always_fail"
    RELEASE_FAILS = "release_fails"
    CONFLICT = "conflict"


@dataclass(frozen=True)
class CallOptions:
    """How long an activity call may take, how its worker's death is noticed, how it is
    retried (workflows/calls.py passes them to the SDK)."""

    start_to_close: timedelta
    retry: RetryPolicy
    heartbeat: timedelta | None = None  # None: a call that does not heartbeat


class RolePolicy(BaseModel):
    """Timeouts and retries for role activities; filled from settings by whoever starts a build."""

    start_to_close_seconds: float = Field(default=300, gt=0)
    max_attempts: int = Field(default=5, ge=1)
    initial_interval_seconds: float = Field(default=1, gt=0)
    maximum_interval_seconds: float = Field(default=30, gt=0)
    # Role activities heartbeat every few seconds; silence this long means their worker died.
    heartbeat_seconds: float = Field(default=30, gt=0)

    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(
            initial_interval=timedelta(seconds=self.initial_interval_seconds),
            maximum_interval=timedelta(seconds=self.maximum_interval_seconds),
            maximum_attempts=self.max_attempts,
        )

    def call_options(self) -> CallOptions:
        """The timeouts and retries of a role activity. The heartbeat timeout notices a worker
        that dies mid-call in seconds, not at start-to-close."""
        return CallOptions(
            start_to_close=timedelta(seconds=self.start_to_close_seconds),
            retry=self.retry_policy(),
            heartbeat=timedelta(seconds=self.heartbeat_seconds),
        )


def check_gates(gates: list[BuildState]) -> list[BuildState]:
    """Approval gates are handoff states, each named once."""
    bad = [g.value for g in gates if g not in HANDOFFS]
    if bad:
        allowed = ", ".join(h.value for h in HANDOFFS)
        raise ValueError(f"approval gates must be handoff states ({allowed}); got {bad}")
    return list(dict.fromkeys(gates))


class BudgetLimits(BaseModel):
    """What a build may spend before it pauses in BUDGET_EXHAUSTED (None: no limit), and how
    long it then waits for a top-up before it ends FAILED."""

    max_tokens: int | None = Field(default=None, ge=1)
    max_cost_usd: float | None = Field(default=None, gt=0)
    wait_seconds: float = Field(default=86_400, gt=0)


# Only handoff states can be gates; the schema says so, and check_gates enforces it.
GateState = Annotated[
    BuildState, WithJsonSchema({"type": "string", "enum": [h.value for h in HANDOFFS]})
]


class StartOptions(BaseModel):
    """What a person chooses when starting a build (CLI flags, the API's `options`); the
    settings fill in the rest (client.builds.new_request)."""

    model_config = ConfigDict(extra="forbid")

    max_retries: int | None = Field(
        default=None, ge=0, le=20, description="Default: BUILD_MAX_RETRIES."
    )
    approval_gates: list[GateState] = Field(
        default_factory=list, description="Handoff states where the build waits for `advance`."
    )
    simulate: list[Simulation] = Field(
        default_factory=list, description="Branches the offline model makes happen."
    )
    max_tokens: int | None = Field(
        default=None, ge=0, description="Token budget; default BUILD_MAX_TOKENS, 0: no limit."
    )
    max_cost_usd: float | None = Field(
        default=None, ge=0, description="USD budget; default BUILD_MAX_COST_USD, 0: no limit."
    )
    bump: Bump = Field(
        default="minor", description="Which part of the project's version the release raises."
    )

    _gates = field_validator("approval_gates")(check_gates)


class BuildOptions(BaseModel):
    max_retries: int = Field(default=3, ge=0, le=20)
    approval_gates: list[BuildState] = Field(default_factory=list)
    simulate: list[Simulation] = Field(default_factory=list)
    policy: RolePolicy = Field(default_factory=RolePolicy)
    budget: BudgetLimits = Field(default_factory=BudgetLimits)
    attention_wait_seconds: float = Field(default=86_400, gt=0)
    approval_wait_seconds: float = Field(default=7 * 86_400, gt=0)
    bump: Bump = "minor"  # which part of the project's version its release raises
    rerun: Rerun | None = None  # a re-run of an earlier build (core/reruns.py)
    evaluation: Evaluation | None = None  # a case of an evaluation suite (core/eval_suites.py)

    _gates = field_validator("approval_gates")(check_gates)

    def fixed_start(self) -> str | None:
        """The commit a re-run or an evaluation case starts from (None: the project branch's
        head). Such a build is delivered to its own branch (activities/roles.py decides it in
        one place) and takes no turn in the project's release queue."""
        if self.rerun is not None:
            return self.rerun.base
        if self.evaluation is not None:
            return self.evaluation.base
        return None


Requirements = str | dict[str, JsonValue]  # free text, or a JSON object
MAX_REQUIREMENTS_CHARS = 20_000


def check_size(value: object, what: str, limit: int = MAX_REQUIREMENTS_CHARS) -> None:
    """Inputs that travel in workflow history stay small (history limits are per payload)."""
    size = len(value) if isinstance(value, str) else len(json.dumps(value))
    if size > limit:
        raise ValueError(f"{what} is {size} characters; at most {limit} are accepted")


def check_requirements(value: Requirements) -> Requirements:
    """Requirements are not empty and small enough to travel in workflow history."""
    if isinstance(value, str) and not value.strip():
        raise ValueError("requirements must not be empty")
    if isinstance(value, dict) and not value:
        raise ValueError("requirements must not be an empty object")
    check_size(value, "requirements")
    return value


class BuildRequest(BaseModel):
    """The one input of BuildWorkflow."""

    project_id: ProjectId
    build_id: Annotated[str, Field(pattern=BUILD_ID_PATTERN)]
    user_id: str = "anonymous"
    requirements: Requirements
    options: BuildOptions = Field(default_factory=BuildOptions)
    # The project's registration when the build started (None: its greenfield repository).
    project: ProjectConfig | None = None

    _requirements = field_validator("requirements")(check_requirements)

    @property
    def workflow_id(self) -> str:
        return workflow_id_for(self.build_id)

    def requirements_text(self) -> str:
        if isinstance(self.requirements, str):
            return self.requirements
        return json.dumps(self.requirements, sort_keys=True)


def parse_requirements(text: str) -> Requirements:
    """Requirements given on a command line: a JSON object if it parses as one, else free text."""
    stripped = text.strip()
    if stripped.startswith("{"):
        try:
            value = json.loads(stripped)
        except json.JSONDecodeError:
            return text
        if isinstance(value, dict):
            return value
    return text


def feature_name(requirements: Requirements) -> str:
    """A short human name for the requested feature."""
    if isinstance(requirements, dict):
        for key in ("feature", "title", "name", "summary"):
            if isinstance(value := requirements.get(key), str) and value.strip():
                return value.strip()
        return json.dumps(requirements, sort_keys=True)[:60]
    first = requirements.strip().splitlines()[0] if requirements.strip() else "feature"
    return re.sub(r"\s+", " ", first)[:80]


# --- What the workflow reports -----------------------------------------------------------


class BuildRepository(BaseModel):
    """Where a build stands in its project's repository."""

    repository: str
    branch: str  # the project's branch the build starts from and delivers into
    base: str | None = None  # the branch's commit the build started from
    build_branch: str | None = None  # the build's branch in its workspace
    head: str | None = None  # the build's commit now
    delivered: str | None = None  # the commit that landed (merge) or was pushed (branch)
    version: str | None = None  # the tag it landed as (merge) or the branch (branch)
    delivery: str = "merge"


class BuildStatus(BaseModel):
    """A build as a person reads it: the answer of the `status` query, rendered by the CLI and
    the Web UI's current details, and what the API answers (from the mirror's row, where the
    same fields are read back: db/status.py)."""

    build_id: str
    project_id: str
    user_id: str | None = None
    state: BuildState
    current_role: Role | None
    progress: int
    completed_phases: list[BuildState]
    attempts: dict[BuildState, int]
    loop_backs: int
    max_retries: int
    last_error: str | None
    waiting_for: str | None
    pending_command: str | None
    events: int
    usage: dict[str, dict[str, float]] = Field(default_factory=dict)  # per role
    tokens: int = 0
    cost_usd: float = 0.0
    repository: BuildRepository | None = None  # None: a build without a project repository
    sandbox: str | None = None  # how the last test run was confined, and its limits
    # The project's environment of the last test run: what made it, made now or reused.
    setup: str | None = None
    tests: str | None = None  # the last test run's counts: run, passed, failed, pre-existing...
    # The model call in flight: "code_writer: 1,240 tokens so far, 38 tok/s" (workflows/stream.py)
    model_now: str | None = None
    rerun_of: str | None = None  # the build this one re-runs (core/reruns.py)
    live_roles: list[Role] = Field(default_factory=list)  # a re-run's roles that call models
    failed_state: BuildState | None = None  # where a FAILED build was when it ended
    failure_reason: str | None = None  # why it ended (core/outcomes.py's ending, and detail)
    test_counts: TestScore | None = None  # the last test run, counted (`tests` in words)


class BuildResult(BaseModel):
    """How a build ended: its result when it reached COMPLETE, and the first detail of its
    failure when it ended FAILED. Whoever started it (an evaluation run) reads it from there,
    without the mirror."""

    build_id: str
    state: BuildState
    attempts: dict[BuildState, int]
    loop_backs: int
    release: Released | None = None  # None: the build released nothing
    failed_state: BuildState | None = None  # where a FAILED build was
    failure_reason: str | None = None  # why it ended (core/outcomes.py's ending, and detail)
    tokens: int = 0
    cost_usd: float = 0.0
    wall_seconds: float | None = None  # its run's start to its end
    acceptance: Acceptance | None = None  # an evaluation case's hidden tests (core/eval_build.py)
