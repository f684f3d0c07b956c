"""A build in a terminal: its status as tables, and following it (a progress bar, each event
as one line as it happens, and the command to send when it waits for a person)."""

from __future__ import annotations

import asyncio
import contextlib

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from temporalio.client import Client, WorkflowFailureError, WorkflowQueryFailedError
from temporalio.service import RPCError

from client.builds import BuildHandle
from client.errors import NoAnswer
from client.model_output import Lines, model_output
from core.build_io import BuildStatus
from core.events import (
    ApprovalRequested,
    BranchMoved,
    Completed,
    HandedOff,
    LoopedBack,
    Restored,
    RoleCalled,
    SignalRejected,
    StateChanged,
    WorkspaceOpened,
    stored,
)
from core.feedback import Feedback
from core.mirror import BuildEvent
from core.outcomes import Setback
from core.releases import Released
from core.states import BuildState
from workflows.build import BuildWorkflow


def event_line(event: BuildEvent) -> str:
    """One event as one line of a terminal."""
    by = event.triggered_by
    match event.data:
        case StateChanged(from_=source, to=target):
            return f"state  {source.value if source else '-'} -> {target.value}"
        case RoleCalled(replayed=True, attempt=attempt):
            return f"call   {by} attempt {attempt} (recorded answer)"
        case RoleCalled() as call:
            line = (
                f"call   {by} attempt {call.attempt} "
                f"({call.prompt_tokens}+{call.completion_tokens} tokens, {call.latency_ms} ms)"
            )
            if call.tests is not None:  # a test run's: its counts, and its environment's making
                line += f"; tests {call.tests.line()}"
            if call.environment:
                line += f"; environment {call.environment.rsplit(': ', 1)[-1]}"
            return line
        case HandedOff(from_role=source, to_role=target):
            return f"handoff {source.value} -> {target.value}"
        case LoopedBack(reason=reason, loop_back=count, feedback=feedback):
            return f"[yellow]loop   {reason.value}{why(feedback)} (loop-back {count})[/yellow]"
        case SignalRejected(command=command, reason=reason):
            return f"[red]reject {command}: {reason}[/red]"
        case WorkspaceOpened() as opened:
            return (
                f"open   {opened.repository} {opened.branch} at {opened.base[:10]}, "
                f"working on {opened.build_branch}"
            )
        case BranchMoved(branch_head=head, merged=merged):
            return (
                f"[yellow]moved  the project's branch moved on to {(head or '')[:10]}; "
                f"its merge {(merged or '')[:10]} is tested again[/yellow]"
            )
        case Completed(release=release):
            return f"[green]done   {delivered(release)}[/green]"
        case Restored() as restored:
            undone = (
                f", release {restored.release_undone} undone" if restored.release_undone else ""
            )
            if restored.reverted_by:
                undone += f" (reverted by {restored.reverted_by[:10]} on the branch)"
            return (
                f"[yellow]restore code to {(restored.commit or '')[:10]}{undone}; "
                f"current release: {restored.release_current or 'none'}[/yellow]"
            )
        case ApprovalRequested(gate=gate):
            return f"[cyan]wait   approval at {gate.value} (starter.py approve <build>)[/cyan]"
    fields = stored(event.data).items()
    details = ", ".join(f"{k}={v}" for k, v in fields if not isinstance(v, (dict, list)))
    return f"{event.event_type.value:<6} {details}"


def delivered(release: Released | None) -> str:
    """What a finished build delivered, in one line."""
    if release is None:
        return "released nothing"
    commit = (release.commit or "")[:10]
    if release.delivery == "branch":
        return f"pushed {release.version} at {commit} for a person to merge"
    if release.delivery == "merge":
        return f"released {release.version} ({commit} on the branch) to {release.path}"
    return f"released {release.version} to {release.path}"


def why(feedback: Feedback) -> str:
    """The first concrete reason of a loop-back: a failing test, a review reason, a smoke check."""
    if feedback.failures:
        first = feedback.failures[0]
        return f": {first.test}: {(first.message.splitlines() or [''])[0][:80]}"
    if feedback.reasons:
        return f": {feedback.reasons[0][:100]}"
    if feedback.release is not None:
        return f": {feedback.release.smoke}"
    if feedback.error:
        return f": {feedback.error[:100]}"
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
    # The usage is a table of its own; the test counts are said in words (`tests`).
    shown = status.model_dump(mode="json", exclude={"usage", "test_counts"})
    for key, value in shown.items():
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
    if status.state is BuildState.NEEDS_ATTENTION and Setback.ENVIRONMENT_FAILED in (
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
    handle: BuildHandle,
    console: Console,
    interval: float = 0.5,
    output_of: Client | None = None,
    through_waits: bool = False,
) -> tuple[BuildStatus, Released | None]:
    """Show progress and events until the build ends, or until it waits for a person (unless
    `through_waits`); the status then, and the release. With `output_of` (the client), what
    the models write is shown as they write it."""
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
            except (RPCError, WorkflowQueryFailedError) as err:
                # Queries need a worker; without one, or one that failed to answer this time,
                # say so and keep following.
                said = err.message if isinstance(err, RPCError) else str(err)
                bar.update(task, description=f"[yellow]no worker answers ({said})[/yellow]")
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
            if result.done() or (command is not None and not through_waits):
                break
            await asyncio.wait({result}, timeout=interval)
        if output_of is not None and result.done():  # what the stream still holds
            with contextlib.suppress(Exception):
                await asyncio.wait_for(shown, 10)
        elif output_of is not None:
            shown.cancel()
    release: Released | None = None
    if not result.done():  # it waits for a person: followed this far
        result.cancel()
        return status, None
    with contextlib.suppress(WorkflowFailureError):  # a FAILED build's reason is in its status
        release = (await result).release
    return await _final_status(handle), release


FINAL_QUERY_TRIES = 5
FINAL_QUERY_WAIT = 0.5  # seconds before the second try; one more each time after


async def _final_status(handle: BuildHandle) -> BuildStatus:
    """The ended build's status. A query a worker failed to answer this time (one that replays
    the build on a starved machine can pass the SDK's 2 s deadlock limit) is asked again; a
    worker that never answers is said in one sentence."""
    for attempt in range(FINAL_QUERY_TRIES):
        try:
            status: BuildStatus = await handle.query(BuildWorkflow.status)
            return status
        except WorkflowQueryFailedError as err:
            failed: str = str(err)
        except RPCError as err:
            failed = err.message
        await asyncio.sleep(FINAL_QUERY_WAIT * (attempt + 1))
    raise NoAnswer(
        f"the build ended but no worker answers its status query ({failed}); see the Web UI"
    )
