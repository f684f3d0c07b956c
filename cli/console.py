"""What the command line (starter.py) shares: its console, and running one command against
Temporal with a refusal shown as one line and exit code 1."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from typing import NoReturn, TypeVar

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from temporalio.client import Client

from client.errors import BuildError, CommandRefused
from core.build_io import BUILD_ID_PATTERN, BUILD_ID_RULE
from core.projects import PROJECT_ID_PATTERN, PROJECT_ID_RULE
from core.settings import Settings, get_settings
from core.telemetry import flush_traces, tracing_interceptors
from core.temporal import connect

# Piped into a file or another program, lines are not cut at 80 columns (rich's default
# without a terminal) but kept whole up to this width; COLUMNS still decides where it is set.
PIPED_WIDTH = 200
console = Console(
    highlight=False,
    width=None if sys.stdout.isatty() or "COLUMNS" in os.environ else PIPED_WIDTH,
)
T = TypeVar("T")


# Patterns said in words: a person is not asked to read a regular expression.
PATTERN_RULES = {BUILD_ID_PATTERN: BUILD_ID_RULE, PROJECT_ID_PATTERN: PROJECT_ID_RULE}


def in_words(err: ValueError) -> str:
    """A refused value as one sentence naming each field and its rule (pydantic's own text
    names the model, a regular expression and a link)."""
    if not isinstance(err, ValidationError):
        return str(err)
    parts = []
    for error in err.errors():
        field = ".".join(str(part) for part in error["loc"]) or "value"
        pattern = (error.get("ctx") or {}).get("pattern")
        if pattern in PATTERN_RULES:
            rule = f"takes {PATTERN_RULES[pattern]}"
        else:
            rule = error["msg"].removeprefix("Value error, ")
            rule = rule.replace("Input should be", "must be").replace("Input should", "must")
            rule = rule[:1].lower() + rule[1:]
        given = error.get("input")
        shown = f" ({given!r} given)" if isinstance(given, (str, int, float)) else ""
        parts.append(f"{field} {rule}{shown}")
    return "; ".join(parts)


def refuse(err: ValueError) -> NoReturn:
    """Print a refused value in words and exit 2 (a usage error)."""
    console.print(f"[red]error:[/red] {escape(in_words(err))}")
    raise typer.Exit(2) from err


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
