"""What the command line (starter.py) shares: its console, and running one command against
Temporal with a refusal shown as one line and exit code 1."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import typer
from rich.console import Console
from temporalio.client import Client

from client.errors import BuildError, CommandRefused
from core.settings import Settings, get_settings
from core.telemetry import flush_traces, tracing_interceptors
from core.temporal import connect

console = Console(highlight=False)
T = TypeVar("T")


class CommandError(Exception):
    """A refusal to show the user as one line, with exit code 1."""


def run_command(coro_fn: Callable[[Client, Settings], Awaitable[T]]) -> T:
    """`coro_fn` with a client of Temporal (traced as qao-starter) and the settings."""
    settings = get_settings()

    async def go() -> T:
        try:
            client = await connect(
                settings, interceptors=tracing_interceptors(settings, "qao-starter")
            )
        except RuntimeError as err:
            raise CommandError(
                f"cannot reach Temporal at {settings.temporal_address} ({err}); "
                "is it running? `make run` starts it"
            ) from err
        try:
            return await coro_fn(client, settings)
        except CommandRefused as err:
            raise CommandError(f"refused: {err}") from err
        except BuildError as err:
            raise CommandError(str(err)) from err
        finally:
            flush_traces()

    try:
        return asyncio.run(go())
    except CommandError as err:
        console.print(f"[red]error:[/red] {err}")
        raise typer.Exit(1) from err
