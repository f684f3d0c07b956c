"""Drills of evaluation suites (core/eval_suites.py, workflows/evals.py) on the real worker, dev
server and mirror:

  eval-kill-worker  the offline suite (evals/offline.yaml, its cases repeated to the drill's
                    size) under two configs, kill -9 of the worker at random moments: the run
                    ends with its table, every child build ran once (one execution per id) and
                    completed, and the mirror's rows equal each child's events
  eval-real-model   (only when named) evals/local-model.yaml against the real local model:
                    the run ends with its table, each child in words"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter

from rich.console import Console

from chaos.stack import ROOT, Size, Stack, Verdict, WorkerExited, log
from cli.evals import tables
from client.evals import eval_run, start_eval
from core.build_io import RolePolicy
from core.eval_suites import EvalReport, EvalRun, child_requests
from devtools.processes import free_port
from workflows.build import BuildWorkflow

SUITE = ROOT / "evals" / "offline.yaml"
CONFIGS = [
    ROOT / "evals" / "configs" / "baseline.yaml",
    ROOT / "evals" / "configs" / "flaky-coder.yaml",
]
REAL_SUITE = ROOT / "evals" / "local-model.yaml"
# As the build drills' (chaos/stack.py): a dead worker's call is retried after 10 s of silence.
POLICY = RolePolicy(
    heartbeat_seconds=10, initial_interval_seconds=0.2, maximum_interval_seconds=2, max_attempts=10
)


def show(report: EvalReport) -> None:
    console = Console(width=140, highlight=False)
    for table in tables(report):
        console.print(table)


def sized(run: EvalRun, children: int) -> EvalRun:
    """The run with its cases repeated (numbered) until it has `children` child builds, or
    the next multiple of its configs."""
    count = max(len(run.cases), -(-children // len(run.configs)))
    if count == len(run.cases):
        return run
    cases = [
        run.cases[n % len(run.cases)].model_copy(
            update={"id": f"{run.cases[n % len(run.cases)].id}-{n // len(run.cases)}"}
        )
        for n in range(count)
    ]
    return EvalRun.model_validate({**dict(run), "cases": cases})  # checked as a file's run is


async def _ended(
    s: Stack, run: EvalRun, seconds: float, kills: int, rng: random.Random
) -> tuple[EvalReport, int]:
    """The run's report, killing the worker `kills` times on the way."""
    handle = await start_eval(s.client, s.settings, run)
    result = asyncio.ensure_future(handle.result())
    killed = 0
    deadline = time.monotonic() + seconds
    try:
        while not result.done():
            await asyncio.wait({result}, timeout=rng.uniform(0.5, 4.0) if killed < kills else 0.5)
            if result.done():
                break
            if why := s.worker_exit():
                raise WorkerExited(why)
            if time.monotonic() > deadline:
                raise TimeoutError(f"the evaluation did not end within {seconds:g} s")
            if killed < kills:
                await s.kill_worker()
                killed += 1
                log(f"eval-kill-worker: kill {killed}/{kills}")
                await s.start_worker()
        report: EvalReport = result.result()
        return report, killed
    finally:
        result.cancel()


async def eval_kill_worker(s: Stack, size: Size) -> Verdict:
    rng = random.Random(13)
    run = eval_run(s.settings, SUITE, CONFIGS, parallel=4, user_id="chaos")
    run = sized(run.model_copy(update={"policy": POLICY}), size.builds)
    await s.start_worker()
    await s.wait_for_worker()
    report, killed = await _ended(s, run, 900, size.kills, rng)
    show(report)
    ids = [r.workflow_id for r in child_requests(run)]
    executions: Counter[str] = Counter()
    async for execution in s.client.list_workflows(f'WorkflowType = "{BuildWorkflow.__name__}"'):
        executions[execution.id] += 1
    once = all(executions[i] == 1 for i in ids) and len(report.results) == len(ids)
    handles = [s.client.get_workflow_handle_for(BuildWorkflow.run, i) for i in ids]
    verdict = await s.check("eval-kill-worker", handles, f", {killed} kill -9s", seconds=60)
    detail = (
        f"{len(ids)} children, each started once: {once} "
        f"({sum(executions[i] for i in ids)} executions); {verdict.detail}"
    )
    return Verdict("eval-kill-worker", verdict.passed and once, detail)


async def eval_real_model(s: Stack, size: Size) -> Verdict:
    from devtools import local_model

    port = free_port()
    async with local_model.serving(s.settings.data_dir, port, s.folder / "local-model.log") as env:
        await s.start_worker(**env, LLM_STREAM_PUBLISH_SECONDS="1", LLM_SCHEMA_REASKS="1")
        await s.wait_for_worker()
        run = eval_run(s.settings, REAL_SUITE, [], parallel=1, user_id="chaos")
        report, _ = await _ended(s, run, 3600, 0, random.Random(0))
    show(report)
    outcomes = Counter(r.outcome for r in report.results)
    for result in report.results:
        hidden = result.acceptance
        print(f"  {result.case}: {result.outcome}, {result.tokens} tokens, hidden tests "
              f"{hidden.summary if hidden else 'not run'}", flush=True)  # fmt: skip
    passed = len(report.results) == len(run.cases) * len(run.configs)
    detail = f"{len(report.results)} children ended ({dict(outcomes)}), pass rate " + ", ".join(
        f"{row.config} {row.pass_rate:.0%}" for row in report.configs
    )
    return Verdict("eval-real-model", passed, detail)
