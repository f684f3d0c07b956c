"""Evaluation suites: the same cases (a project's repository at a base commit, requirements,
and acceptance tests the roles never see) built under one or more configs (models, prompts,
options), one child build per case and config under a parent workflow (workflows/evals.py),
scored from the builds' cards into a table per config and a winner per case.

The hidden tests travel in the child build's options (`Evaluation`), which no role task
carries (core/rules.py builds those); they are written only into a fresh checkout of the
delivered commit, after delivery (activities/evals.py), as SWE-bench does."""

from __future__ import annotations

import hashlib

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from core.build_io import (
    BudgetLimits,
    BuildOptions,
    BuildRequest,
    BuildResult,
    Requirements,
    RolePolicy,
    Simulation,
    check_requirements,
    workflow_id_for,
)
from core.eval_build import NAME_PATTERN, Acceptance, Evaluation, HiddenTests, ModelChoices
from core.eval_stats import Comparison, ConfigStats, compare, config_stats
from core.projects import ProjectConfig, check_branch, check_repository
from core.reruns import scratch_project
from core.scores import ScoreCard
from core.states import BuildState

MAX_PARALLEL = 16
MAX_SAMPLES = 20
MAX_RUN_HIDDEN_CHARS = 1_000_000  # the run's input is one payload (Temporal's limit: 2 MB)


class EvalConfig(BaseModel):
    """One way of building (`--config A.yaml`): models and prompts per role, and options."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_PATTERN)
    choices: ModelChoices = Field(default_factory=ModelChoices)
    simulate: list[Simulation] = Field(default_factory=list)  # the offline model's branches
    max_retries: int = Field(default=3, ge=0, le=20)
    max_tokens: int | None = Field(default=None, ge=1)
    max_cost_usd: float | None = Field(default=None, gt=0)


class EvalCase(BaseModel):
    """One case: a repository (an absolute path or a URL) at a base commit, and requirements;
    `hidden` scores what the build delivered."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=NAME_PATTERN)
    repository: str
    branch: str = "main"
    base: str = Field(pattern=r"^[0-9a-f]{7,64}$")
    requirements: Requirements
    test_command: str = "python -m pytest"
    setup_command: str = ""
    hidden: HiddenTests | None = None

    _requirements = field_validator("requirements")(check_requirements)
    _repository = field_validator("repository")(lambda cls, v: check_repository(v))
    _branch = field_validator("branch")(lambda cls, v: check_branch(v))


class EvalRun(BaseModel):
    """The parent workflow's one input: every case under every config, `parallel` at a time.
    The child builds' requests are made from it (`child_requests`), so a resumed run starts
    the same ones under the same ids."""

    model_config = ConfigDict(extra="forbid")

    run_id: str = Field(pattern=r"^[a-z0-9]{4,16}$")
    suite: str = Field(min_length=1, max_length=200)
    cases: list[EvalCase] = Field(min_length=1)
    configs: list[EvalConfig] = Field(min_length=1)
    parallel: int = Field(default=2, ge=1, le=MAX_PARALLEL)
    samples: int = Field(default=1, ge=1, le=MAX_SAMPLES)  # builds per case and config
    # The whole run's budget: once its ended builds spent it, no other build starts (those
    # running go on; each build keeps its config's own budget).
    max_tokens: int | None = Field(default=None, ge=1)
    max_cost_usd: float | None = Field(default=None, gt=0)
    user_id: str = "anonymous"
    policy: RolePolicy = Field(default_factory=RolePolicy)
    # A child that waits for a person fails after this: an evaluation runs unattended.
    attention_wait_seconds: float = Field(default=1.0, gt=0)

    @model_validator(mode="after")
    def _fits(self) -> EvalRun:
        for what, names in (("case", [c.id for c in self.cases]),
                            ("config", [c.name for c in self.configs])):  # fmt: skip
            if len(set(names)) != len(names):
                raise ValueError(f"two {what}s have one name: {sorted(names)}")
        hidden = sum(len(t) for c in self.cases if c.hidden for t in c.hidden.files.values())
        if hidden > MAX_RUN_HIDDEN_CHARS:
            raise ValueError(
                f"the cases' hidden tests are {hidden} characters; a run carries at most "
                f"{MAX_RUN_HIDDEN_CHARS} (split the suite)"
            )
        return self

    @property
    def workflow_id(self) -> str:
        return eval_workflow_id(self.run_id)


def child_requests(run: EvalRun) -> list[BuildRequest]:
    """A build per case and config, case by case; delivered to its own branch, scored after."""
    requests = []
    for case in run.cases:
        project = scratch_project(
            ProjectConfig(
                repository=case.repository,
                branch=case.branch,
                test_command=case.test_command,
                setup_command=case.setup_command,
            )
        )
        for config, sample in ((c, s) for c in run.configs for s in range(run.samples)):
            evaluation = Evaluation(
                run=run.workflow_id,
                case=case.id,
                config=config.name,
                sample=sample,
                base=case.base,
                hidden=case.hidden,
                choices=config.choices,
            )
            options = BuildOptions(
                max_retries=config.max_retries,
                simulate=config.simulate,
                policy=run.policy,
                budget=BudgetLimits(max_tokens=config.max_tokens, max_cost_usd=config.max_cost_usd),
                attention_wait_seconds=run.attention_wait_seconds,
                evaluation=evaluation,
            )
            requests.append(
                BuildRequest(
                    project_id=f"eval-{case.id}",
                    build_id=child_build_id(run.run_id, case.id, config.name, sample),
                    user_id=run.user_id,
                    requirements=case.requirements,
                    options=options,
                    project=project,
                )
            )
    return requests


def eval_workflow_id(run_id: str) -> str:
    return f"eval-{run_id}"


def child_build_id(run_id: str, case: str, config: str, sample: int = 0) -> str:
    """`<run>-<case>-<config>` (and `-<n>` for samples after the first); a digest of them
    where that would pass a build id's 64 characters."""
    named = f"{run_id}-{case}-{config}" + (f"-{sample}" if sample else "")
    if len(named) <= 64:
        return named
    digest = hashlib.sha256(f"{case}\0{config}\0{sample}".encode()).hexdigest()[:16]
    return f"{run_id}-{digest}"


class EvalChild(BaseModel):
    """A child build of a suite run: its case and config."""

    case: str
    config: str
    build_id: str

    @property
    def workflow_id(self) -> str:
        return workflow_id_for(self.build_id)


class EvalReportTask(BaseModel):
    """Read the suite run's table from its children's score cards."""

    run_id: str
    suite: str
    configs: list[str]
    children: list[EvalChild]


class EvalProgress(BaseModel):
    """The parent's `progress` query: children done, running and waiting."""

    total: int
    done: list[str] = Field(default_factory=list)
    running: list[str] = Field(default_factory=list)


class CaseResult(BaseModel):
    """One child build, as the table reads it."""

    case: str
    config: str
    build_id: str
    sample: int = 0  # which of the run's samples of this case and config
    outcome: str  # complete, failed; cancelled, terminated, timed out; not run (the budget)
    passed: bool  # delivered, and its hidden tests (if it has any) pass on what it delivered
    reason: str | None = None  # why it did not pass: how it ended, or what its hidden tests said
    acceptance: Acceptance | None = None
    tokens: int = 0
    cost_usd: float = 0.0
    loop_backs: int = 0
    wall_seconds: float | None = None


class ConfigRow(BaseModel):
    """One config over the suite's cases."""

    config: str
    cases: int
    passed: int
    pass_rate: float
    tokens: int
    cost_usd: float
    loop_backs: int
    wall_seconds: float


class EvalReport(BaseModel):
    """The parent's result: a row per config, each child's result, and per case which config
    won (None: a tie, or none passed)."""

    run_id: str
    suite: str
    configs: list[ConfigRow]
    results: list[CaseResult]
    winners: dict[str, str | None]
    stats: list[ConfigStats] = Field(default_factory=list)  # core/eval_stats.py
    comparisons: list[Comparison] = Field(default_factory=list)  # each pair of configs


def ended_case(case: str, config: str, ended: BuildResult, sample: int = 0) -> CaseResult:
    """A child build's result from how it ended (its result, or its failure's detail)."""
    accepted = ended.acceptance
    delivered = ended.state is BuildState.COMPLETE
    return CaseResult(
        case=case,
        config=config,
        sample=sample,
        build_id=ended.build_id,
        outcome=ended.state.value,
        passed=delivered and (accepted is None or accepted.passed),
        reason=_why(ended.failure_reason, accepted),
        acceptance=accepted,
        tokens=ended.tokens,
        cost_usd=ended.cost_usd,
        loop_backs=ended.loop_backs,
        wall_seconds=ended.wall_seconds,
    )


def _why(failure: str | None, accepted: Acceptance | None) -> str | None:
    """Why a build did not pass, and the test infrastructure it changed (whatever its end)."""
    said = failure
    if said is None and accepted is not None and not accepted.passed:
        said = f"hidden tests: {accepted.summary}"
    if accepted is not None and accepted.integrity:
        changed = f"changed test infrastructure (the base's ran): {', '.join(accepted.integrity)}"
        said = f"{said}; {changed}" if said else changed
    return said


def case_result(case: str, config: str, card: ScoreCard) -> CaseResult:
    """A child build's result from its score card (the runs that read the mirror)."""
    accepted = card.acceptance
    delivered = card.outcome == "complete"
    return CaseResult(
        case=case,
        config=config,
        build_id=card.build_id,
        outcome=card.outcome,
        passed=delivered and (accepted is None or accepted.passed),
        reason=_why(card.failure_reason, accepted),
        acceptance=accepted,
        tokens=card.tokens,
        cost_usd=card.cost_usd,
        loop_backs=sum(card.loop_backs.values()),
        wall_seconds=card.wall_seconds,
    )


def report(run_id: str, suite: str, configs: list[str], results: list[CaseResult]) -> EvalReport:
    """The table: per config, pass rate and what it spent; per case, the winner: of the configs
    that passed it, the one that spent fewest tokens, then fewest loop-backs (None: a tie)."""
    rows = []
    for config in configs:
        mine = [r for r in results if r.config == config]
        passed = sum(r.passed for r in mine)
        rows.append(
            ConfigRow(
                config=config,
                cases=len(mine),
                passed=passed,
                pass_rate=round(passed / len(mine), 4) if mine else 0.0,
                tokens=sum(r.tokens for r in mine),
                cost_usd=round(sum(r.cost_usd for r in mine), 8),
                loop_backs=sum(r.loop_backs for r in mine),
                wall_seconds=round(sum(r.wall_seconds or 0.0 for r in mine), 3),
            )
        )
    winners: dict[str, str | None] = {}
    for case in dict.fromkeys(r.case for r in results):
        ranked = sorted(
            (_standing([r for r in results if r.case == case and r.config == c]), c)
            for c in configs
            if any(r.case == case and r.config == c and r.passed for r in results)
        )
        tied = len(ranked) > 1 and ranked[0][0] == ranked[1][0]
        winners[case] = ranked[0][1] if ranked and not tied else None
    samples = {c: _samples(results, c) for c in configs}
    return EvalReport(
        run_id=run_id,
        suite=suite,
        configs=rows,
        results=results,
        winners=winners,
        stats=[config_stats(c, samples[c]) for c in configs if samples[c]],
        comparisons=[
            found
            for i, a in enumerate(configs)
            for b in configs[i + 1 :]
            if (found := compare(a, b, samples[a], samples[b])) is not None
        ],
    )


def _standing(mine: list[CaseResult]) -> tuple[float, float, float]:
    """How a config did on a case over its samples, best first when sorted: pass rate, then
    tokens, then loop-backs (means)."""
    n = len(mine)
    return (
        -sum(r.passed for r in mine) / n,
        sum(r.tokens for r in mine) / n,
        sum(r.loop_backs for r in mine) / n,
    )


def _samples(results: list[CaseResult], config: str) -> dict[str, list[bool]]:
    """Per case, whether each of `config`'s samples passed."""
    per_case: dict[str, list[bool]] = {}
    for r in results:
        if r.config == config:
            per_case.setdefault(r.case, []).append(r.passed)
    return per_case
