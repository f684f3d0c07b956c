"""EvalWorkflow: one suite run (core/eval_suites.py), a child BuildWorkflow per case and config,
`parallel` at a time, then the table read from their score cards.

The children's ids come from the run's id, case and config, so a run resumed after a crash
(the worker killed, the server restarted) starts each child once: Temporal holds which ones
started and ended. A child that fails is a result (its card says how), not the run's failure;
the Web UI shows the children under the run."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ChildWorkflowError
from temporalio.workflow import ParentClosePolicy

with workflow.unsafe.imports_passed_through():
    from core.attributes import of_project
    from core.build_io import BuildRequest, BuildResult, CallOptions
    from core.contracts import EVAL_REPORT
    from core.eval_suites import (
        EvalChild,
        EvalProgress,
        EvalReport,
        EvalReportTask,
        EvalRun,
        child_requests,
    )
    from workflows.calls import execute

BUILD_WORKFLOW = "BuildWorkflow"
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

    @workflow.run
    async def run(self, run: EvalRun) -> EvalReport:
        waiting = list(self.requests)

        async def lane() -> None:
            while waiting:
                await self._build(waiting.pop(0))

        await asyncio.gather(*(lane() for _ in range(min(run.parallel, len(waiting)))))
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
        summary = f"{evaluation.case} x {evaluation.config}" if evaluation else request.build_id
        with contextlib.suppress(ChildWorkflowError):  # its score card says how it ended
            await workflow.execute_child_workflow(
                BUILD_WORKFLOW,
                request,
                id=request.workflow_id,
                result_type=BuildResult,
                parent_close_policy=ParentClosePolicy.REQUEST_CANCEL,
                search_attributes=of_project(request.project_id),
                static_summary=summary,
            )
        self.running.remove(request.build_id)
        self.done.append(request.build_id)

    @workflow.query
    def progress(self) -> EvalProgress:
        return EvalProgress(
            total=len(self.requests), done=list(self.done), running=list(self.running)
        )
