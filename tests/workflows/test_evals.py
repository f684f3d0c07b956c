"""EvalWorkflow on faked activities and skipped time (the fast tier): its table is made from
how each child build ended, with no mirror to read."""

from __future__ import annotations

import uuid

from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from core.eval_build import HiddenTests
from core.eval_suites import EvalCase, EvalConfig, EvalReport, EvalRun
from core.mirror import RoleCall
from core.role_io import RoleOutput
from core.states import BuildState
from tests.workflows.fakes import Fakes, default, failing
from workflows.build import BuildWorkflow
from workflows.evals import EvalWorkflow

S = BuildState


def failing_tests_for(marker: str):
    """The Test Auditor's answer: failing for the builds whose id holds `marker`."""

    def answer(call: RoleCall) -> RoleOutput:
        return failing() if marker in call.build_id else default(call)

    return answer


async def evaluated(env: WorkflowEnvironment, fakes: Fakes, run: EvalRun) -> EvalReport:
    """The run's report, its children built on the fakes (no eval_report activity: the mirror
    is never read)."""
    queue = f"fast-eval-{uuid.uuid4().hex[:8]}"
    async with Worker(
        env.client,
        task_queue=queue,
        workflows=[EvalWorkflow, BuildWorkflow],
        activities=fakes.activities(),
    ):
        return await env.client.execute_workflow(
            EvalWorkflow.run, run, id=run.workflow_id, task_queue=queue
        )


async def test_the_table_is_made_from_how_each_child_ended(
    skipping: WorkflowEnvironment, fakes: Fakes
):
    fakes.script = {(S.TESTING, n): failing_tests_for("-bad") for n in range(1, 5)}
    fakes.hidden_failing = "-wrong-"
    hidden = HiddenTests(files={"tests/test_hidden.py": "def test_x():\n    pass\n"})
    run = EvalRun(
        run_id=uuid.uuid4().hex[:12],
        suite="fast",
        cases=[
            EvalCase(
                id=case, repository="/repos/x", base="abc1234", requirements="r", hidden=hidden
            )
            for case in ("right", "wrong")
        ],
        configs=[EvalConfig(name="good"), EvalConfig(name="bad", max_retries=1)],
        parallel=4,
    )
    got = await evaluated(skipping, fakes, run)
    by = {(r.case, r.config): r for r in got.results}
    assert len(by) == 4
    passed = by["right", "good"]
    assert passed.passed and passed.outcome == "complete" and passed.reason is None
    assert passed.tokens == 600 and passed.wall_seconds is not None  # 6 calls of 100 tokens
    assert passed.acceptance is not None and passed.acceptance.passed
    hidden_failed = by["wrong", "good"]
    assert not hidden_failed.passed and hidden_failed.outcome == "complete"
    assert hidden_failed.reason == "hidden tests: 1 failed"
    for case in ("right", "wrong"):
        failed = by[case, "bad"]
        assert not failed.passed and failed.outcome == "failed"
        assert failed.reason and failed.reason.startswith("retries exhausted")
        assert failed.loop_backs == 1 and failed.tokens > 0
    rows = {row.config: row for row in got.configs}
    assert (rows["good"].passed, rows["good"].cases, rows["bad"].passed) == (1, 2, 0)
    assert got.winners == {"right": "good", "wrong": None}


async def test_samples_give_each_config_pass_at_k_and_pass_hat_k(
    skipping: WorkflowEnvironment, fakes: Fakes
):
    fakes.script = {(S.TESTING, n): failing_tests_for("-flaky-1") for n in range(1, 5)}
    run = EvalRun(
        run_id=uuid.uuid4().hex[:12],
        suite="fast",
        cases=[
            EvalCase(id=case, repository="/repos/x", base="abc1234", requirements="r")
            for case in ("one", "two")
        ],
        configs=[EvalConfig(name="steady"), EvalConfig(name="flaky", max_retries=0)],
        parallel=8,
        samples=2,
    )
    got = await evaluated(skipping, fakes, run)
    assert len(got.results) == 8 and {r.sample for r in got.results} == {0, 1}
    stats = {s.config: s for s in got.stats}
    steady, flaky = stats["steady"], stats["flaky"]
    assert (steady.pass_at_1.value, flaky.pass_at_1.value) == (1.0, 0.5)
    assert flaky.pass_at_k is not None and flaky.pass_at_k.value == 1.0
    assert flaky.pass_hat_k is not None and flaky.pass_hat_k.value == 0.0
    (versus,) = got.comparisons
    assert (versus.first, versus.second, versus.difference.value) == ("steady", "flaky", 0.5)
    assert got.winners == {"one": "steady", "two": "steady"}


async def test_no_child_starts_once_the_runs_budget_is_spent(
    skipping: WorkflowEnvironment, fakes: Fakes
):
    run = EvalRun(
        run_id=uuid.uuid4().hex[:12],
        suite="fast",
        cases=[
            EvalCase(id=case, repository="/repos/x", base="abc1234", requirements="r")
            for case in ("one", "two", "three")
        ],
        configs=[EvalConfig(name="only")],
        parallel=1,
        max_tokens=600,  # one build's six calls of 100 tokens
    )
    got = await evaluated(skipping, fakes, run)
    assert [(r.case, r.outcome) for r in got.results] == [
        ("one", "complete"),
        ("two", "not run"),
        ("three", "not run"),
    ]
    assert got.results[1].reason == "the run's budget was spent: 600 of 600 tokens"
    assert len(fakes.calls) == 6  # the one build's role calls, no others
