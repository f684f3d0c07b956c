"""`starter.py eval mine REPO`: evaluation cases from a repository's own history
(client/mining.py), validated by running them, written as a suite `starter.py eval` runs."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer

from cli.console import console
from client.evals import SuiteError
from client.mining import mine, write_suite
from core.projects import is_url
from core.settings import get_settings


def mine_command(
    repository: Annotated[str, typer.Argument(help="A git repository: a path or a URL.")],
    out: Annotated[
        Path | None, typer.Option(help="Where the suite goes (default: evals/mined-<name>/).")
    ] = None,
    since: Annotated[
        str | None, typer.Option(help="Only commits since then (git's --since: 2025-01-01).")
    ] = None,
    max_cases: Annotated[
        int, typer.Option("--max", min=1, max=200, help="At most this many cases.")
    ] = 10,
    paths: Annotated[
        list[str] | None,
        typer.Option("--path", help="Only commits touching a path like this (glob); repeatable."),
    ] = None,
) -> None:
    """Find commits of REPO that change code and tests together and make a case of each (base:
    the parent; requirement: the message; hidden tests: the test files the commit changed).
    Each is run at its base and at its commit and kept only if some hidden test goes from
    failing to passing and none fails at the commit. The repository is copied, never written."""
    if repository.startswith("-"):
        raise typer.BadParameter("a repository must not start with '-'", param_hint="REPOSITORY")
    source = repository if is_url(repository) else str(Path(repository).resolve())
    name = source.rstrip("/").rsplit("/", 1)[-1].removesuffix(".git") or "repository"
    folder = out or Path("evals") / f"mined-{name}"
    settings = get_settings()
    try:
        mined = asyncio.run(
            mine(
                settings,
                source,
                since=since,
                limit=max_cases,
                paths_filter=paths or [],
                say=console.print,
            )
        )
        suite = write_suite(mined, source, folder, f"mined-{name}")
    except SuiteError as err:
        console.print(f"[red]error:[/red] {err}")
        raise typer.Exit(1) from err
    console.print(
        f"{len(mined.kept)} cases kept of {mined.candidates} candidates "
        f"({mined.scanned} commits scanned, {len(mined.dropped)} dropped): {suite}"
    )
    console.print(f"run it: python starter.py eval {suite}")
