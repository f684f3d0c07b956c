"""`starter.py model check`: what the configured model endpoint takes, asked before a build
depends on it (activities/model/probe.py)."""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer
from rich.table import Table

from activities.model.llm import ModelClient
from activities.model.probe import ProbeFailed, ProbeReport, probe
from cli.console import console
from core.settings import get_settings
from core.states import Role

model_app = typer.Typer(help="Check the model endpoint the roles are configured with.")


@model_app.command("check")
def model_check(
    role: Annotated[
        Role, typer.Option("--role", "-r", help="Whose model to check (LLM_ROLES may differ).")
    ] = Role.CODE_WRITER,
) -> None:
    """Ask the configured endpoint one small question per output mode and one streamed answer;
    print what it takes, its context window where it says, and the mode `auto` will use."""
    settings = get_settings()
    if settings.offline_model:
        console.print(
            "the offline model answers (OPENAI_API_KEY is not set): it takes json_schema, answers "
            "only its roles' questions, and needs no check. Set OPENAI_API_KEY (and "
            "OPENAI_BASE_URL, LLM_MODEL) to check an endpoint."
        )
        return

    async def go() -> ProbeReport:
        llm = ModelClient(settings)
        try:
            return await probe(llm, role)
        finally:
            await llm.close()

    try:
        report = asyncio.run(go())
    except ProbeFailed as err:
        console.print(f"[red]error:[/red] {err}")
        raise typer.Exit(1) from err
    console.print(f"[bold]{report.model}[/bold] at {report.endpoint}, for {role.value}")
    table = Table("output mode", "answer")
    for mode, said in report.modes.items():
        table.add_row(mode, f"[green]{said}[/green]" if said == "works" else said)
    table.add_row("streaming", report.streaming)
    window = f"{report.context_window:,} tokens" if report.context_window else "not said"
    table.add_row("context window", window)
    console.print(table)
    choice = settings.model_for(role).output_mode
    if report.auto_mode is None:
        console.print("[red]no output mode works[/red]: builds with this endpoint will fail")
        raise typer.Exit(1)
    console.print(
        f"auto will use [bold]{report.auto_mode}[/bold]"
        + (f"; this role is set to {choice}" if choice != "auto" else "")
        + f" ({report.seconds:.1f} s)"
    )
