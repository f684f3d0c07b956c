"""EvalWorkflow on faked activities and skipped time (the fast tier): its table is made from
how each child build ended, with no mirror to read."""

from __future__ import annotations

import uuid

from temporalio.client import WorkflowHandle
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
    queue = f"fast-eval-{uuid.uuid4().hex[:8]}"
    async with Worker(
        skipping.client,
        task_queue=queue,
        workflows=[EvalWorkflow, BuildWorkflow],
        activities=fakes.activities(),  # no EVAL_REPORT: the mirror is never read
    ):
        handle: WorkflowHandle[EvalWorkflow, EvalReport] = await skipping.client.start_workflow(
            EvalWorkflow.run, run, id=run.workflow_id, task_queue=queue
        )
        got = await handle.result()
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
