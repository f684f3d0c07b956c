"""A build started from the command line (`start`, `rerun`): its id and Web UI link, a warning
when no worker polls, following it to its end, and the exit code that end means."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape
from temporalio.client import Client

from cli.console import console
from cli.follow import delivered, follow, next_command
from client import builds
from core.build_io import BuildStatus
from core.releases import Released
from core.settings import Settings
from core.states import TERMINAL, BuildState

Followed = tuple[BuildStatus, Released | None] | None


async def announced(
    client: Client,
    settings: Settings,
    handle: builds.BuildHandle,
    build_id: str,
    *,
    wait: bool,
    show_model_output: bool,
    through_waits: bool = False,
) -> Followed:
    """Say the build started and where to watch it; follow it (`wait`) to its end, or to a wait
    for a person (unless `through_waits`)."""
    console.print(f"build [bold]{build_id}[/bold] started: workflow id {handle.id}")
    console.print(f"Web UI: {settings.ui_link(handle.id)}")
    if not await builds.has_worker(client, settings):
        console.print(
            f"[yellow]warning:[/yellow] no worker polls task queue "
            f"{settings.temporal_task_queue}; the build waits until one does "
            "(`make run` or `.venv/bin/python worker.py`)"
        )
    if not wait:
        return None
    output_of = client if show_model_output else None
    return await follow(handle, console, output_of=output_of, through_waits=through_waits)


WAITS_EXIT = 3  # the build waits for a person: not ended, not failed
# `--wait` of the commands that follow a build (start, rerun, follow).
ThroughWaits = Annotated[
    bool,
    typer.Option(
        "--wait",
        help="Keep following while it waits for a person (by default: return, saying how "
        f"to go on, exit code {WAITS_EXIT}).",
    ),
]


def concluded(build_id: str, followed: Followed) -> None:
    """How the followed build ended: exit code 0 when it reached COMPLETE, WAITS_EXIT when it
    waits for a person (with the command that goes on), else 1."""
    if followed is None:
        return
    final, release = followed
    if final.state not in TERMINAL and (command := next_command(final)) is not None:
        console.print(f"[cyan]build {build_id} waits for you[/cyan]: {escape(command)}")
        console.print(f"then follow it again: starter.py follow {build_id}")
        raise typer.Exit(WAITS_EXIT)
    if final.state is BuildState.COMPLETE:
        attempts = ", ".join(f"{state.value} {n}" for state, n in final.attempts.items())
        console.print(f"[green]build {build_id} COMPLETE[/green] (attempts: {attempts})")
        console.print(delivered(release).capitalize())
        return
    console.print(f"[red]build {build_id} {final.state.value.upper()}[/red]: {final.last_error}")
    raise typer.Exit(1)
