"""`starter.py eval SUITE --config A.yaml [--config B.yaml]`: a suite's cases built under each
config as one durable EvalWorkflow (client/evals.py, workflows/evals.py), followed to its
table: pass rate, tokens, cost, loop-backs and wall time per config, and per case the winner."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from temporalio.client import Client, WorkflowFailureError
from temporalio.service import RPCError

from cli.console import console, run_command
from client.errors import BuildError
from client.evals import EvalHandle, SuiteError, eval_run, start_eval
from core.build_io import workflow_id_for
from core.eval_suites import MAX_SAMPLES, EvalProgress, EvalReport, eval_workflow_id
from core.settings import Settings
from workflows.evals import EvalWorkflow

POLL_SECONDS = 1.0


def tables(report: EvalReport, link: Callable[[str], str] | None = None) -> list[Table]:
    """The run's table per config, each case under each config with its winner, and each
    child build: how it ended and why (its id linked to the Web UI by `link`)."""
    per_config = Table(title=f"evaluation {report.suite} ({report.run_id})")
    per_config.add_column("config", no_wrap=True)
    for column in ("passed", "pass rate", "tokens", "cost", "loop-backs", "wall time"):
        per_config.add_column(column, justify="right")
    for row in report.configs:
        per_config.add_row(
            row.config, f"{row.passed}/{row.cases}", f"{row.pass_rate:.0%}", f"{row.tokens:,}",
            f"${row.cost_usd:.6f}", str(row.loop_backs), f"{row.wall_seconds:.1f} s",
        )  # fmt: skip
    configs = [row.config for row in report.configs]
    per_case = Table(title="per case")
    per_case.add_column("case", no_wrap=True)
    for config in configs:
        per_case.add_column(config)
    per_case.add_column("winner")
    cells = {(r.case, r.config): r for r in report.results}
    for case, winner in report.winners.items():
        shown = []
        for config in configs:
            result = cells.get((case, config))
            if result is None:
                shown.append("-")
                continue
            hidden = result.acceptance
            failed = "hidden tests failed" if result.outcome == "complete" else result.outcome
            mark = "[green]pass[/green]" if result.passed else f"[red]{failed}[/red]"
            tests = f" {hidden.tests_run - hidden.failed}/{hidden.tests_run}" if hidden else ""
            shown.append(f"{mark}{tests}, {result.tokens:,} tokens")
        per_case.add_row(case, *shown, winner or "-")
    tables_ = [per_config, per_case]
    if report.stats:
        k = max(s.samples for s in report.stats)
        stats = Table(title="statistics (95% intervals, bootstrap over cases and samples)")
        stats.add_column("config", no_wrap=True)
        for column in ("pass@1", *((f"pass@{k}", f"pass^{k}") if k > 1 else ())):
            stats.add_column(column, justify="right")
        for s in report.stats:
            more = [e.text() if e else "-" for e in (s.pass_at_k, s.pass_hat_k)] if k > 1 else []
            stats.add_row(s.config, s.pass_at_1.text(), *more)
        tables_.append(stats)
    if report.comparisons:
        paired = Table(title="configs compared, case by case (pass rate difference)")
        paired.add_column("comparison", overflow="fold")
        for comparison in report.comparisons:
            paired.add_row(comparison.text())
        tables_.append(paired)
    builds = Table(title="builds")
    for column in ("case", "config", "build", "ended", "why"):
        builds.add_column(column, no_wrap=column != "why", overflow="fold")
    for r in report.results:
        build = (
            f"[link={link(workflow_id_for(r.build_id))}]{r.build_id}[/link]" if link else r.build_id
        )
        ended = "[green]passed[/green]" if r.passed else f"[red]{r.outcome}[/red]"
        builds.add_row(r.case, r.config, build, ended, r.reason or "-")
    return [*tables_, builds]


async def follow_eval(handle: EvalHandle, *, quiet: bool = False) -> EvalReport:
    """Say each child build as it ends, then return the run's report."""
    said: set[str] = set()
    result = asyncio.ensure_future(handle.result())
    try:
        while not result.done():
            try:
                progress: EvalProgress = await handle.query(EvalWorkflow.progress)
            except RPCError:  # not yet picked up by a worker
                progress = EvalProgress(total=0)
            for build in progress.done:
                if build not in said and not quiet:
                    console.print(f"  {len(said) + 1}/{progress.total} ended: build {build}")
                said.add(build)
            await asyncio.wait({result}, timeout=POLL_SECONDS)
        report: EvalReport = result.result()
        for ended in report.results:  # those that ended since the last look
            if ended.build_id not in said and not quiet:
                console.print(
                    f"  {len(said) + 1}/{len(report.results)} ended: build {ended.build_id}"
                )
            said.add(ended.build_id)
        return report
    except WorkflowFailureError as err:
        raise BuildError(f"evaluation {handle.id} failed: {err.cause}") from err
    finally:
        result.cancel()


def eval_command(
    suite: Annotated[Path, typer.Argument(help="The suite file (evals/*.yaml).")],
    config: Annotated[
        list[Path] | None,
        typer.Option(
            help="A config file (models, prompts, options); repeatable. None: the "
            "settings' models and prompts as they are."
        ),
    ] = None,
    parallel: Annotated[
        int | None,
        typer.Option(min=1, max=16, help="Child builds at a time (default: the suite's)."),
    ] = None,
    samples: Annotated[
        int,
        typer.Option(
            min=1,
            max=MAX_SAMPLES,
            help="Builds per case and config: K > 1 gives pass@K and pass^K.",
        ),
    ] = 1,
    max_tokens: Annotated[
        int | None,
        typer.Option(min=1, help="The whole run's token budget: no build starts once it is spent."),
    ] = None,
    max_cost: Annotated[
        float | None,
        typer.Option(min=0.000001, help="The whole run's budget in USD, likewise."),
    ] = None,
    run_id: Annotated[str | None, typer.Option(help="The run's id (default: a new one).")] = None,
    show: Annotated[
        str | None,
        typer.Option(help="Show the table of an earlier run (its id) instead of starting one."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    user: Annotated[str, typer.Option(help="Who runs the evaluation.")] = "cli",
) -> None:
    """Build every case of SUITE under each config, as one durable workflow with a child build
    per case and config (delivered to their own branches, scored after delivery with the
    case's hidden tests, which no role sees), and print the table.

    Exit code 0 when the run ends with its table (whatever the builds came to)."""

    async def go(client: Client, settings: Settings) -> tuple[EvalReport, Settings]:
        if show is not None:
            handle = client.get_workflow_handle_for(EvalWorkflow.run, eval_workflow_id(show))
            try:
                return await follow_eval(handle, quiet=True), settings
            except RPCError as err:
                raise BuildError(f"no evaluation run {show}: {err.message}") from err
        try:
            run = eval_run(
                settings,
                suite,
                config or [],
                parallel=parallel,
                run_id=run_id,
                user_id=user,
                samples=samples,
                max_tokens=max_tokens,
                max_cost_usd=max_cost,
            )
        except SuiteError as err:
            raise BuildError(str(err)) from err
        handle = await start_eval(client, settings, run)
        children = len(run.cases) * len(run.configs) * run.samples
        times = f" x {run.samples} samples" if run.samples > 1 else ""
        console.print(
            f"evaluation [bold]{run.run_id}[/bold] started: {len(run.cases)} cases x "
            f"{len(run.configs)} configs{times} = {children} builds, {run.parallel} at a time"
        )
        console.print(f"Web UI: {settings.ui_link(handle.id)}")
        return await follow_eval(handle, quiet=as_json), settings

    report, settings = run_command(go)
    if as_json:
        console.print_json(report.model_dump_json())
        return
    for table in tables(report, settings.ui_link):
        console.print(table)
