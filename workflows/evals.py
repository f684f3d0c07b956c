"""EvalWorkflow: one suite run (core/eval_suites.py), a child BuildWorkflow per case and config,
`parallel` at a time, then the table made from how each child ended.

The children's ids come from the run's id, case and config, so a run resumed after a crash
(the worker killed, the server restarted) starts each child once: Temporal holds which ones
started and ended. A child that fails is a result (its failure's detail says how), not the
run's failure; the Web UI shows the children under the run. Runs that started before
TABLE_FROM_CHILDREN_PATCH read the table from the children's score cards in the mirror."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import (
    ApplicationError,
    CancelledError,
    ChildWorkflowError,
    TerminatedError,
    TimeoutError,
)
from temporalio.workflow import ParentClosePolicy

with workflow.unsafe.imports_passed_through():
    from core.attributes import of_project
    from core.build_io import BuildRequest, BuildResult, CallOptions
    from core.contracts import EVAL_REPORT
    from core.eval_build import Evaluation
    from core.eval_suites import (
        CaseResult,
        EvalChild,
        EvalProgress,
        EvalReport,
        EvalReportTask,
        EvalRun,
        child_requests,
        ended_case,
        report,
    )
    from workflows.calls import execute

BUILD_WORKFLOW = "BuildWorkflow"
TABLE_FROM_CHILDREN_PATCH = "eval-table-from-children"
# The mirror may lag behind a child's end (an outage): the table is read again until it has all.
REPORT = CallOptions(
    timedelta(seconds=60),
    RetryPolicy(maximum_interval=timedelta(seconds=10), maximum_attempts=60),
)


@workflow.defn(name="EvalWorkflow")
class EvalWorkflow:
    @workflow.init
    def __init__(self, run: EvalRun) -> None:
        self.requests = child_requests(run)
        self.done: list[str] = []
        self.running: list[str] = []
        self.results: dict[str, CaseResult] = {}  # by build id

    @workflow.run
    async def run(self, run: EvalRun) -> EvalReport:
        waiting = list(self.requests)

        async def lane() -> None:
            while waiting:
                request = waiting.pop(0)
                if (spent := self._spent(run)) is not None:  # the run's budget: none starts
                    self.results[request.build_id] = _not_run(request, spent)
                    self.done.append(request.build_id)
                    continue
                await self._build(request)

        await asyncio.gather(*(lane() for _ in range(min(run.parallel, len(waiting)))))
        if workflow.patched(TABLE_FROM_CHILDREN_PATCH):
            results = [self.results[r.build_id] for r in self.requests]
            return report(run.run_id, run.suite, [c.name for c in run.configs], results)
        children = [
            EvalChild(case=e.case, config=e.config, build_id=r.build_id)
            for r in self.requests
            if (e := r.options.evaluation) is not None
        ]
        task = EvalReportTask(
            run_id=run.run_id,
            suite=run.suite,
            configs=[c.name for c in run.configs],
            children=children,
        )
        return await execute(EVAL_REPORT, task, REPORT, summary=f"table of {len(children)} builds")

    async def _build(self, request: BuildRequest) -> None:
        """One child build to its end; a failed one is a result, not the run's failure."""
        self.running.append(request.build_id)
        evaluation = request.options.evaluation
        assert evaluation is not None  # child_requests made it a case
        try:
            ended: BuildResult | CaseResult = await workflow.execute_child_workflow(
                BUILD_WORKFLOW,
                request,
                id=request.workflow_id,
                result_type=BuildResult,
                parent_close_policy=ParentClosePolicy.REQUEST_CANCEL,
                search_attributes=of_project(request.project_id),
                static_summary=f"{evaluation.case} x {evaluation.config}",
            )
        except ChildWorkflowError as err:
            ended = _failed(request.build_id, evaluation, err)
        if isinstance(ended, BuildResult):
            ended = ended_case(evaluation.case, evaluation.config, ended, evaluation.sample)
        self.results[request.build_id] = ended
        self.running.remove(request.build_id)
        self.done.append(request.build_id)

    def _spent(self, run: EvalRun) -> str | None:
        """Why no other child starts: what the ended ones spent reached the run's budget."""
        ended = self.results.values()
        tokens, cost = sum(r.tokens for r in ended), sum(r.cost_usd for r in ended)
        if run.max_tokens is not None and tokens >= run.max_tokens:
            return f"the run's budget was spent: {tokens:,} of {run.max_tokens:,} tokens"
        if run.max_cost_usd is not None and cost >= run.max_cost_usd:
            return f"the run's budget was spent: ${cost:.4f} of ${run.max_cost_usd:.4f}"
        return None

    @workflow.query
    def progress(self) -> EvalProgress:
        return EvalProgress(
            total=len(self.requests), done=list(self.done), running=list(self.running)
        )


def _not_run(request: BuildRequest, why: str) -> CaseResult:
    evaluation = request.options.evaluation
    assert evaluation is not None
    return CaseResult(
        case=evaluation.case,
        config=evaluation.config,
        sample=evaluation.sample,
        build_id=request.build_id,
        outcome="not run",
        passed=False,
        reason=why,
    )


def _failed(
    build_id: str, evaluation: Evaluation, err: ChildWorkflowError
) -> BuildResult | CaseResult:
    """How a child that did not complete ended: what its failure's detail says (a build that
    ended FAILED), or what ended it from outside."""
    cause = err.cause
    if isinstance(cause, ApplicationError) and cause.details:
        return BuildResult.model_validate(cause.details[0])
    outside = {CancelledError: "cancelled", TerminatedError: "terminated"}
    outcome = next((o for kind, o in outside.items() if isinstance(cause, kind)), None)
    if outcome is None:
        outcome = "timed out" if isinstance(cause, TimeoutError) else "failed"
    return CaseResult(
        case=evaluation.case,
        config=evaluation.config,
        sample=evaluation.sample,
        build_id=build_id,
        outcome=outcome,
        passed=False,
        reason=str(cause or err) or outcome,
    )
