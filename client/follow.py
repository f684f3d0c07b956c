"""A build in a terminal: its status as tables, and following it (a progress bar, each event
as one line as it happens, and the command to send when it waits for a person)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from temporalio.client import Client, WorkflowFailureError, WorkflowHandle
from temporalio.service import RPCError

from client.errors import NoAnswer
from client.model_output import Lines, model_output
from core.models import BuildEvent, BuildStatus
from core.reports import ENVIRONMENT_FAILED, TestCounts
from core.states import BuildState
from workflows.build import BuildWorkflow


def event_line(event: BuildEvent) -> str:
    data = event.data
    kind = event.event_type.value
    if kind == "state_changed":
        return f"state  {data.get('from', '-')} -> {data['to']}"
    if kind == "role_call":
        if data.get("replayed"):
            return f"call   {event.triggered_by} attempt {data['attempt']} (recorded answer)"
        line = (
            f"call   {event.triggered_by} attempt {data['attempt']} "
            f"({data['prompt_tokens']}+{data['completion_tokens']} tokens, {data['latency_ms']} ms)"
        )
        if tests := data.get("tests"):  # a test run's: its counts, and its environment's making
            line += f"; tests {TestCounts.model_validate(tests).line()}"
        if environment := data.get("environment"):
            line += f"; environment {str(environment).rsplit(': ', 1)[-1]}"
        return line
    if kind == "handoff":
        return f"handoff {data['from_role']} -> {data['to_role']}"
    if kind == "loop_back":
        return (
            f"[yellow]loop   {data['reason']}{why(data)} (loop-back {data['loop_back']})[/yellow]"
        )
    if kind == "signal_rejected":
        return f"[red]reject {data['command']}: {data['reason']}[/red]"
    if kind == "workspace_opened":
        return (
            f"open   {data['repository']} {data['branch']} at {str(data['base'])[:10]}, "
            f"working on {data['build_branch']}"
        )
    if kind == "branch_moved":
        return (
            f"[yellow]moved  the project's branch moved on to {str(data['branch_head'])[:10]}; "
            f"its merge {str(data['merged'])[:10]} is tested again[/yellow]"
        )
    if kind == "completed":
        return f"[green]done   {delivered(data['release'])}[/green]"
    if kind == "restored":
        undone = f", release {data['release_undone']} undone" if data["release_undone"] else ""
        if data.get("reverted_by"):
            undone += f" (reverted by {str(data['reverted_by'])[:10]} on the branch)"
        return (
            f"[yellow]restore code to {str(data['commit'])[:10]}{undone}; "
            f"current release: {data['release_current'] or 'none'}[/yellow]"
        )
    if kind == "approval_requested":
        return f"[cyan]wait   approval at {data['gate']} (starter.py approve <build>)[/cyan]"
    details = ", ".join(f"{k}={v}" for k, v in data.items() if not isinstance(v, (dict, list)))
    return f"{kind:<6} {details}"


def delivered(release: dict[str, Any]) -> str:
    """What a finished build delivered, in one line."""
    commit = str(release.get("commit") or "")[:10]
    if release.get("delivery") == "branch":
        return f"pushed {release.get('version')} at {commit} for a person to merge"
    if release.get("delivery") == "merge":
        return (
            f"released {release.get('version')} ({commit} on the branch) to {release.get('path')}"
        )
    return f"released {release.get('version', '')} to {release.get('path')}"


def why(loop: dict[str, Any]) -> str:
    """The first concrete reason of a loop-back: a failing test, a review reason, a smoke check."""
    if loop.get("failures"):
        first = loop["failures"][0]
        return f": {first['test']}: {first['message'].splitlines()[0][:80]}"
    if loop.get("reasons"):
        return f": {loop['reasons'][0][:100]}"
    if loop.get("release"):
        return f": {loop['release'].get('smoke', '')}"
    if loop.get("error"):
        return f": {str(loop['error'])[:100]}"
    return ""


async def show_model_output(
    client: Client, build: str, console: Console, from_offset: int = 0
) -> None:
    """Print what the build's models write, line by line, until the build ends."""
    lines = Lines()
    async for _, item in model_output(client, build, from_offset):
        for line in lines.take(item):
            console.print(f"[dim]{escape(line)}[/dim]", highlight=False)


USAGE_COLUMNS = (
    ("calls", "calls"),
    ("requests", "requests"),
    ("prompt_tokens", "prompt tokens"),
    ("completion_tokens", "completion tokens"),
)


def status_tables(status: BuildStatus) -> list[Table]:
    """The status as a person reads it: one row per field, lists and counts in words, and
    the model usage per role as a table of whole numbers and the cost in dollars."""
    fields = Table(show_header=False, box=None)
    for key, value in status.model_dump(mode="json", exclude={"usage"}).items():
        if isinstance(value, dict):
            value = ", ".join(f"{k} {v}" for k, v in value.items()) or "-"
        elif isinstance(value, list):
            value = ", ".join(str(v) for v in value) or "-"
        fields.add_row(key, "-" if value is None else str(value))
    if command := next_command(status):
        fields.add_row("to go on", command)
    tables = [fields]
    if status.usage:
        usage = Table(title="model usage per role", title_justify="left")
        usage.add_column("role")
        for _, header in USAGE_COLUMNS:
            usage.add_column(header, justify="right")
        usage.add_column("cost", justify="right")
        for role, totals in status.usage.items():
            counts = [f"{int(totals.get(key, 0)):,}" for key, _ in USAGE_COLUMNS]
            usage.add_row(role, *counts, f"${totals.get('cost_usd', 0):.4f}")
        tables.append(usage)
    return tables


def next_command(status: BuildStatus) -> str | None:
    """What to type for a build that waits for a person (None: it needs no one)."""
    build = status.build_id
    if status.state is BuildState.NEEDS_ATTENTION and ENVIRONMENT_FAILED in (
        status.waiting_for or ""
    ):
        return (
            f"fix the project's environment (see waiting_for), then starter.py rollback "
            f"{build} --to testing -m 'why', or starter.py abort {build} -m 'why'"
        )
    if status.state is BuildState.NEEDS_ATTENTION:
        return (
            f"starter.py retry {build} -m 'guidance for the Code Writer', or "
            f"starter.py rollback {build} --to <state> -m 'why', or "
            f"starter.py abort {build} -m 'why'"
        )
    if status.state is BuildState.BUDGET_EXHAUSTED:
        return (
            f"starter.py top-up {build} --tokens <n> (or --cost <usd>), or "
            f"starter.py abort {build} -m 'why'"
        )
    if (status.waiting_for or "").startswith("approval at"):
        return f"starter.py approve {build} -m 'note'"
    return None


async def follow(
    handle: WorkflowHandle[Any, Any],
    console: Console,
    interval: float = 0.5,
    output_of: Client | None = None,
) -> tuple[BuildStatus, dict[str, Any]]:
    """Show progress and events until the build ends; the final status and the release.
    With `output_of` (the client), what the models write is shown as they write it."""
    result = asyncio.create_task(handle.result())
    seen = 0
    told: str | None = None  # the command last suggested: said once per wait
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task("starting", total=100)
        if output_of is not None:
            shown = asyncio.create_task(show_model_output(output_of, handle.id, bar.console))
        while True:
            try:
                status: BuildStatus = await handle.query(BuildWorkflow.status)
                events: list[BuildEvent] = await handle.query(BuildWorkflow.event_log, seen)
            except RPCError as err:
                # Queries need a worker; without one, say so and keep following.
                bar.update(task, description=f"[yellow]no worker answers ({err.message})[/yellow]")
                if result.done():
                    break
                await asyncio.wait({result}, timeout=interval)
                continue
            for event in events:
                bar.console.print(f"  {event.seq:>3} {event_line(event)}")
                seen = event.seq
            if (command := next_command(status)) != told and command is not None:
                bar.console.print(f"  [bold cyan]waiting for you:[/bold cyan] {escape(command)}")
            told = command
            role = status.current_role.value if status.current_role else "-"
            waiting = f" [cyan]waiting: {status.waiting_for}[/cyan]" if status.waiting_for else ""
            if status.model_now:
                waiting += f" [magenta]{escape(status.model_now)}[/magenta]"
            bar.update(
                task,
                completed=status.progress,
                description=f"{status.state.value} ({role}){waiting}",
            )
            if result.done():
                break
            await asyncio.wait({result}, timeout=interval)
        if output_of is not None:  # what the stream still holds, then the last line
            with contextlib.suppress(Exception):
                await asyncio.wait_for(shown, 10)
    release: dict[str, Any] = {}
    with contextlib.suppress(WorkflowFailureError):  # a FAILED build's reason is in its status
        release = (await result).release
    try:
        final: BuildStatus = await handle.query(BuildWorkflow.status)
    except RPCError as err:
        raise NoAnswer(
            f"the build ended but no worker answers its status query ({err.message}); "
            "see the Web UI"
        ) from err
    return final, release
