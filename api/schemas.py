"""Request and response bodies of the HTTP API (rows of the mirror use db.models' XPublic)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
)

from core.build_io import (
    BUILD_ID_PATTERN,
    MAX_REQUIREMENTS_CHARS,
    BuildRepository,
    BuildStatus,
    StartOptions,
    check_requirements,
    check_size,
)
from core.messages import (
    AbortRequest,
    CommandAccepted,
    RetryRequest,
    RollbackRequest,
    TopUpRequest,
)
from core.reruns import MAX_PROMPT_CHARS
from core.scores import ModelScore, TestScore
from core.states import WORKING, BuildState, Role
from db.models import BuildSummaryPublic, WorkflowEventPublic, WorkflowHandoffPublic

Reason = Annotated[str, Field(min_length=1, max_length=2000)]
Person = Annotated[str, Field(min_length=1, max_length=128)]


class ErrorBody(BaseModel):
    detail: str = Field(description="Why, in words a person can act on.")


class InvalidBody(BaseModel):
    detail: str | list[dict[str, Any]] = Field(
        description="Why, in words a person can act on; or the invalid fields, each named."
    )


def answers(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI documentation of the error answers an endpoint can give."""
    meaning = {
        400: "the body is not valid JSON text",
        401: "API_KEY is set and the request does not carry it",
        403: "the repository is outside PROJECT_REPOSITORY_ROOTS",
        404: "no such build or project",
        409: "the build cannot take this command now; the reason says why",
        413: "the request body is larger than API_MAX_BODY_BYTES",
        422: "a field is not valid, or git cannot read the repository; the reason says why",
        503: "Temporal, a worker or the database did not answer; try again",
    }
    return {
        code: {"model": InvalidBody if code == 422 else ErrorBody, "description": meaning[code]}
        for code in codes
    }


RequirementsIn = (
    Annotated[str, Field(min_length=1, max_length=MAX_REQUIREMENTS_CHARS)]
    | Annotated[dict[str, Any], Field(min_length=1)]
)


class StartBuild(BaseModel):
    model_config = ConfigDict(extra="forbid")

    build_id: str | None = Field(
        default=None, pattern=BUILD_ID_PATTERN, description="Default: random."
    )
    user_id: Person = "api"
    requirements: RequirementsIn = Field(description="Free text or a JSON object.")
    options: StartOptions = Field(default_factory=StartOptions)

    _requirements = field_validator("requirements")(check_requirements)


class BuildStarted(BaseModel):
    workflow_id: str
    build_id: str
    project_id: str
    initial_state: BuildState
    next_role: Role
    ui_url: str
    status_url: str
    rerun_of: str | None = None  # the build this one re-runs


class RerunBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    build_id: str | None = Field(
        default=None, pattern=BUILD_ID_PATTERN, description="The re-run's id; default: random."
    )
    user_id: Person = "api"
    live: list[Role] = Field(
        default_factory=list,
        description="Roles that call their models; the others answer from the original's "
        "kept answers.",
    )
    models: dict[Role, Annotated[str, Field(min_length=1, max_length=200)]] = Field(
        default_factory=dict, description="A role's model (the role is live)."
    )
    prompts: dict[Role, Annotated[str, Field(min_length=1, max_length=MAX_PROMPT_CHARS)]] = Field(
        default_factory=dict, description="A role's system prompt (the role is live)."
    )
    live_after_divergence: bool = Field(
        default=False,
        description="Where the re-run reaches a call the original never made, ask the role's "
        "model (default: the build stops in needs_attention and says so).",
    )


class Advance(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Role = Field(description="The role (or its owner) that advances the build.")
    phase_result: dict[str, Any] | None = Field(
        default=None, description="Anything to hand the next role, recorded with the approval."
    )
    notes: Annotated[str, Field(max_length=2000)] = ""

    @field_validator("phase_result")
    @classmethod
    def _small(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        check_size(value, "phase_result")
        return value


class RetryBody(RetryRequest):
    model_config = ConfigDict(extra="forbid")

    reason: Reason = Field(description="Handed to the Code Writer as guidance.")
    requested_by: Person = "api"


class CommandAnswer(BaseModel):
    workflow_id: str
    from_state: BuildState
    target_state: BuildState
    applies: Literal["now", "after_current_phase"] = Field(
        description="now: at a gate or handoff; otherwise when the running phase ends."
    )

    @classmethod
    def of(cls, workflow_id: str, accepted: CommandAccepted, **more: Any) -> Self:
        """The answer to a person's command the build's workflow accepted."""
        return cls(
            workflow_id=workflow_id,
            from_state=accepted.from_state,
            target_state=accepted.target_state,
            applies=accepted.applies,
            **more,
        )


class Advanced(CommandAnswer):
    advanced_by: Role
    state: BuildState = Field(description="The state the build moves to (= target_state).")


class RetryAccepted(CommandAnswer):
    retry_requested: bool = True


class RollbackBody(RollbackRequest):
    model_config = ConfigDict(extra="forbid")

    requested_by: Person = "api"


class RollbackAccepted(CommandAnswer):
    rollback_requested: bool = True


class AbortBody(AbortRequest):
    model_config = ConfigDict(extra="forbid")

    reason: Reason = Field(description="Recorded as the build's failure.")
    requested_by: Person = "api"


class AbortAccepted(CommandAnswer):
    abort_requested: bool = True


class TopUpBody(TopUpRequest):
    # The schema says what the validator checks: a top-up adds tokens, money, or both.
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "anyOf": [
                {"required": ["tokens"], "properties": {"tokens": {"minimum": 1}}},
                {"required": ["cost_usd"], "properties": {"cost_usd": {"exclusiveMinimum": 0}}},
            ]
        },
    )

    tokens: int = Field(default=0, ge=0, le=10**9)
    cost_usd: float = Field(default=0.0, ge=0, le=10**6)
    requested_by: Person = "api"


class TopUpAnswer(BaseModel):
    workflow_id: str
    max_tokens: int | None
    max_cost_usd: float | None
    tokens_used: int
    cost_used_usd: float
    resumes: bool = Field(description="The build was paused for its budget and goes on now.")


class Progress(BaseModel):
    percentage: int
    completed_phases: int
    total_phases: int


class BuildStatusOut(BaseModel):
    """A build as the mirror last recorded it (or as Temporal knows it before the first record)."""

    workflow_id: str
    build_id: str
    project_id: str
    user_id: str | None
    current_state: BuildState
    current_role: Role | None
    progress: Progress
    completed_phases: list[BuildState]
    attempts: dict[str, int]
    loop_backs: int
    last_error: str | None
    waiting_for: str | None
    pending_command: str | None
    failed_state: BuildState | None
    failure_reason: str | None
    created_at: datetime | None
    updated_at: datetime | None
    completed_at: datetime | None
    usage: dict[str, dict[str, float]] = Field(
        description="Per role: calls, requests, prompt and completion tokens, cost in USD."
    )
    tokens: int
    cost_usd: float
    as_of_seq: int = Field(description="Events of the build the answer includes.")
    source: Literal["mirror", "temporal"]
    ui_url: str
    repository: BuildRepository | None = Field(
        default=None,
        description="The project's repository and branch, the base commit, the build's branch "
        "and commit, and what it delivered (version, commit).",
    )
    tests: TestScore | None = Field(
        default=None,
        description="The last test run: cases run, passed, failed and errors (the build's "
        "own), pre-existing (failing on its base too), skipped; the environment it ran in.",
    )

    @classmethod
    def of(
        cls,
        status: BuildStatus,
        *,
        workflow_id: str,
        source: Literal["mirror", "temporal"],
        ui_url: str,
        created_at: datetime | None,
        updated_at: datetime | None,
        completed_at: datetime | None,
    ) -> Self:
        """The build's read model (what the CLI and the Web UI show too), as the API answers
        it, with when it started and last changed and where its answer came from."""
        return cls(
            workflow_id=workflow_id,
            build_id=status.build_id,
            project_id=status.project_id,
            user_id=status.user_id,
            current_state=status.state,
            current_role=status.current_role,
            progress=Progress(
                percentage=status.progress,
                completed_phases=len(status.completed_phases),
                total_phases=len(WORKING),
            ),
            completed_phases=status.completed_phases,
            attempts={state.value: n for state, n in status.attempts.items()},
            loop_backs=status.loop_backs,
            last_error=status.last_error,
            waiting_for=status.waiting_for,
            pending_command=status.pending_command,
            failed_state=status.failed_state,
            failure_reason=status.failure_reason,
            created_at=created_at,
            updated_at=updated_at,
            completed_at=completed_at,
            usage=status.usage,
            tokens=status.tokens,
            cost_usd=status.cost_usd,
            as_of_seq=status.events,
            source=source,
            ui_url=ui_url,
            repository=status.repository,
            tests=status.test_counts,
        )


class BuildPage(BaseModel):
    items: list[BuildSummaryPublic]
    total: int
    limit: int
    offset: int


class HandoffHistory(BaseModel):
    workflow_id: str
    handoffs: list[WorkflowHandoffPublic]


class EventPage(BaseModel):
    workflow_id: str
    events: list[WorkflowEventPublic]
    next_after_seq: int = Field(description="Pass as after_seq to get the events after these.")


class FailureGroup(BaseModel):
    failed_state: BuildState | None
    failure_reason: str | None
    builds: int
    example: str | None


class RoleTotals(BaseModel):
    calls: int
    tokens: int
    cost_usd: float


class VersionRow(BaseModel):
    """A version a build delivered into the project's branch."""

    version: str
    build_id: str
    commit: str | None
    delivery: str | None
    loop_backs: int
    duration_seconds: float | None
    tokens: int
    cost_usd: float
    completed_at: datetime | None


class ProjectStats(BaseModel):
    project_id: str
    total: int
    by_state: dict[str, int]
    finished: int
    completion_rate: float | None = Field(description="COMPLETE / finished builds.")
    average_duration_seconds: float | None = Field(description="Of COMPLETE builds.")
    retries_per_build: float | None = Field(description="Loop-backs per build.")
    tokens: int
    cost_usd: float
    cost_per_build_usd: float | None
    by_role: dict[str, RoleTotals] = Field(description="Calls, tokens and cost per role.")
    by_model: list[ModelScore] = Field(
        default_factory=list,
        description="Per role, model and prompt version: the builds it answered in, how many "
        "of them completed, its calls, tokens and cost.",
    )
    failure_analysis: list[FailureGroup]
    versions: list[VersionRow] = Field(
        default_factory=list, description="What each delivered version cost, oldest first."
    )


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    status: Literal["ready", "not ready"]
    checks: dict[str, str]
