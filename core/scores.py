"""A build's score card: what it came to and what it took, per role, read from what the mirror
keeps of it (its row and its events), so builds can be set side by side (`starter.py compare`,
`GET /api/workflows/{id}/score`) and a project's builds summed by model and prompt version.

Pure: the inputs are anything shaped like the mirror's rows (db/models.py)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, ClassVar, Protocol

from pydantic import BaseModel, Field, ValidationError

from core.eval_build import Acceptance
from core.events import EventType
from core.reports import RUN, TestReport
from core.reruns import Rerun
from core.states import TERMINAL, BuildState


class BuildFacts(Protocol):
    """What a score card reads of a build's row."""

    build_id: str
    workflow_id: str
    project_id: str
    current_state: str
    failure_reason: str | None
    loop_backs: int
    duration_seconds: float | None
    created_at: datetime
    completed_at: datetime | None
    tokens: int
    cost_usd: float
    testing_output: Any
    workflow_metadata: Any  # {"options": the build's options}: a re-run's says of what


class EventFacts(Protocol):
    """What a score card reads of one of a build's events."""

    event_type: str
    triggered_by: str
    event_data: Any


class RoleScore(BaseModel):
    """One role's part: its calls (`failed`: answers that were not usable), the highest attempt
    it was asked for, what it spent, and the models and prompt versions that answered."""

    calls: int = 0
    failed: int = 0
    reused: int = 0  # answers kept from an earlier try, not paid again
    replayed: int = 0  # a re-run's answers from its original build, not paid again
    attempts: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    tokens: int = 0
    cost_usd: float = 0.0
    models: list[str] = Field(default_factory=list)
    prompt_versions: list[str] = Field(default_factory=list)


class TestScore(BaseModel):
    """The build's last test run, each case counted once (run = passed + failed + errors +
    pre_existing; skipped beside them): failed and errors are the build's own, pre-existing
    failed on its base already; the regressions among its own failures (they passed on the
    base), and whether the run itself failed (it hung, crashed, ran out of memory, or its
    environment could not be made)."""

    __test__: ClassVar[bool] = False  # not a pytest class

    run: int
    passed: int
    failed: int
    regressed: int
    pre_existing: int
    run_failed: bool
    errors: int = 0
    skipped: int = 0
    environment: str = ""  # what made the run's environment, made then or reused


class ScoreCard(BaseModel):
    build_id: str
    workflow_id: str
    project_id: str
    outcome: str  # the build's state: complete, failed, needs_attention, ... or where it runs
    finished: bool
    failure_reason: str | None = None
    wall_seconds: float | None = None  # start to end (None: not ended)
    loop_backs: dict[str, int] = Field(default_factory=dict)  # why -> how often
    roles: dict[str, RoleScore] = Field(default_factory=dict)
    tests: TestScore | None = None
    tokens: int = 0
    cost_usd: float = 0.0
    rerun_of: str | None = None  # the build this one re-runs (core/reruns.py)
    live_roles: list[str] = Field(default_factory=list)  # a re-run's roles that called models
    # An evaluation case's hidden tests on the delivered commit (None: the build has none, or
    # delivered nothing).
    acceptance: Acceptance | None = None


def _rerun(metadata: Any) -> Rerun | None:
    found = ((metadata or {}).get("options") or {}).get("rerun")
    try:
        return Rerun.model_validate(found) if found else None
    except ValidationError:  # a row written by another version: not told as a re-run
        return None


def _acceptance(events: Sequence[EventFacts]) -> Acceptance | None:
    for event in reversed(events):
        if event.event_type == EventType.ACCEPTANCE_TESTED.value:
            try:
                return Acceptance.model_validate(event.event_data or {})
            except ValidationError:  # an event written by another version
                return None
    return None


def report_of(output: Any) -> TestReport | None:
    """A mirrored test report (None: none, or a row written by another version's shape)."""
    if not output:
        return None
    try:
        return TestReport.model_validate(output)
    except ValidationError:
        return None


def tests_of(output: Any) -> TestScore | None:
    """The last test run's card row from a mirrored report (None: none, or another shape)."""
    if (report := report_of(output)) is None:
        return None
    counts = report.counts
    if counts.run + counts.skipped == 0 and report.tests_run:  # a report without its counts
        failed = sum(1 for f in report.failures if f.test != RUN)
        counts = counts.model_copy(
            update={"passed": max(report.tests_run - failed - len(report.pre_existing), 0),
                    "failed": failed, "pre_existing": len(report.pre_existing)}
        )  # fmt: skip
    return TestScore(
        run=counts.run,
        passed=counts.passed,
        failed=counts.failed,
        errors=counts.errors,
        skipped=counts.skipped,
        regressed=len(report.regressions),
        pre_existing=counts.pre_existing,
        run_failed=any(f.test == RUN for f in report.failures),
        environment=report.setup,
    )


def _role_calls(events: Iterable[EventFacts]) -> dict[str, RoleScore]:
    roles: dict[str, RoleScore] = {}
    for event in events:
        if event.event_type != EventType.ROLE_CALL.value:
            continue
        data = event.event_data or {}
        score = roles.setdefault(event.triggered_by, RoleScore())
        score.calls += 1
        score.failed += bool(data.get("failed"))
        score.reused += bool(data.get("reused"))
        score.replayed += bool(data.get("replayed"))
        score.attempts = max(score.attempts, int(data.get("attempt", 0)))
        score.prompt_tokens += int(data.get("prompt_tokens", 0))
        score.completion_tokens += int(data.get("completion_tokens", 0))
        score.tokens = score.prompt_tokens + score.completion_tokens
        score.cost_usd = round(score.cost_usd + float(data.get("cost_usd", 0.0)), 8)
        for values, value in ((score.models, data.get("model")),
                              (score.prompt_versions, data.get("prompt_version"))):  # fmt: skip
            if value and value not in values:
                values.append(value)
    return roles


def score_card(build: BuildFacts, events: Sequence[EventFacts]) -> ScoreCard:
    """The score card of `build` from its row and its events, in order."""
    finished = BuildState(build.current_state) in TERMINAL
    reasons = Counter(
        str((e.event_data or {}).get("reason", "?"))
        for e in events
        if e.event_type == EventType.LOOP_BACK.value
    )
    wall = build.duration_seconds
    if wall is None and finished and build.completed_at is not None:
        wall = (build.completed_at - build.created_at).total_seconds()
    return ScoreCard(
        build_id=build.build_id,
        workflow_id=build.workflow_id,
        project_id=build.project_id,
        outcome=build.current_state,
        finished=finished,
        failure_reason=build.failure_reason,
        wall_seconds=wall if finished else None,
        loop_backs=dict(sorted(reasons.items())),
        roles=_role_calls(events),
        tests=tests_of(build.testing_output),
        tokens=build.tokens,
        cost_usd=round(build.cost_usd, 8),
        rerun_of=rerun.original if (rerun := _rerun(build.workflow_metadata)) else None,
        live_roles=[role.value for role in rerun.live_roles()] if rerun else [],
        acceptance=_acceptance(events),
    )


class ModelScore(BaseModel):
    """A role's model and prompt version over a project's builds: the builds it answered in,
    how many of those completed, and what its calls spent."""

    role: str
    model: str
    prompt_version: str
    builds: int = 0
    completed: int = 0
    completion_rate: float = 0.0  # completed / builds
    calls: int = 0
    tokens: int = 0
    cost_usd: float = 0.0


def by_model_and_prompt(
    outcomes: dict[str, str], calls: Iterable[tuple[str, EventFacts]]
) -> list[ModelScore]:
    """Role calls summed per (role, model, prompt version). `outcomes` is each build's state by
    workflow id; `calls` its role-call events as (workflow id, event)."""
    rows: dict[tuple[str, str, str], ModelScore] = {}
    seen: set[tuple[tuple[str, str, str], str]] = set()
    for workflow_id, event in calls:
        data = event.event_data or {}
        key = (event.triggered_by, str(data.get("model", "")), str(data.get("prompt_version", "")))
        row = rows.setdefault(key, ModelScore(role=key[0], model=key[1], prompt_version=key[2]))
        row.calls += 1
        row.tokens += int(data.get("prompt_tokens", 0)) + int(data.get("completion_tokens", 0))
        row.cost_usd = round(row.cost_usd + float(data.get("cost_usd", 0.0)), 8)
        if (key, workflow_id) not in seen:
            seen.add((key, workflow_id))
            row.builds += 1
            row.completed += outcomes.get(workflow_id) == BuildState.COMPLETE.value
            row.completion_rate = round(row.completed / row.builds, 4)
    return sorted(rows.values(), key=lambda r: (r.role, r.model, r.prompt_version))
