"""`starter.py rerun BUILD`: a new build of an earlier one's project, base commit and
requirements, whose roles not marked live answer from the earlier build's kept answers
(core/reruns.py, client/reruns.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from temporalio.client import Client

from cli.console import console, refuse, run_command
from cli.launch import Followed, ThroughWaits, announced, concluded
from client.reruns import start_rerun
from core.build_io import Simulation
from core.reruns import PromptText, RerunChoices
from core.settings import Settings
from core.states import Role

ROLES = ", ".join(role.value for role in Role)


def _pairs(given: list[str] | None, what: str) -> dict[Role, str]:
    """ROLE=VALUE options as a dict; a ValueError names the one that is not."""
    pairs: dict[Role, str] = {}
    for item in given or []:
        role, equals, value = item.partition("=")
        if not equals or not value.strip():
            raise ValueError(f"--{what} takes ROLE={what.upper()} ({item!r} given)")
        try:
            pairs[Role(role.strip())] = value.strip()
        except ValueError:
            raise ValueError(f"--{what}: {role!r} is not a role; one of {ROLES}") from None
    return pairs


def _prompts(given: dict[Role, str]) -> dict[Role, PromptText]:
    prompts = {}
    for role, name in given.items():
        path = Path(name)
        try:
            prompts[role] = PromptText.of(path.name, path.read_text(encoding="utf-8"))
        except OSError as err:
            raise ValueError(f"--prompt {role.value}: cannot read {name}: {err.strerror}") from err
    return prompts


def rerun(
    build: Annotated[str, typer.Argument(help="The build to re-run (id, or workflow id).")],
    live: Annotated[
        list[Role] | None,
        typer.Option(
            help="A role that calls its model (the others answer from the "
            "original's kept answers); repeatable."
        ),
    ] = None,
    prompt: Annotated[
        list[str] | None,
        typer.Option(
            help="ROLE=FILE: the role's system prompt from FILE (the role is live); repeatable."
        ),
    ] = None,
    model: Annotated[
        list[str] | None,
        typer.Option(help="ROLE=NAME: the role's model (the role is live); repeatable."),
    ] = None,
    live_after_divergence: Annotated[
        bool,
        typer.Option(
            help="Where the re-run reaches a call the original never made, ask the "
            "role's model (default: stop in needs_attention and say so)."
        ),
    ] = False,
    simulate: Annotated[
        list[Simulation] | None,
        typer.Option(
            help="What the offline model makes live roles do, in place of the "
            "original's simulations; repeatable."
        ),
    ] = None,
    build_id: Annotated[str | None, typer.Option(help="The re-run's build id.")] = None,
    user: Annotated[str, typer.Option(help="Who asks for the re-run.")] = "cli",
    wait: Annotated[
        bool, typer.Option("--follow/--no-follow", help="Follow the re-run until it ends.")
    ] = True,
    through_waits: ThroughWaits = False,
    show_model_output: Annotated[
        bool, typer.Option("--show-model-output", help="Print what live roles' models write.")
    ] = False,
) -> None:
    """Re-run a build: same project, base commit and requirements; roles not live answer from
    the original's kept answers, call by call; edits, tests, checks and delivery run for real,
    delivered to the re-run's own branch (never the project's branch, never a tag).

    Exit code 0 when the re-run reaches COMPLETE, 3 when it waits for a person, else 1.
    `compare` sets the two side by side.
    """
    try:
        choices = RerunChoices(
            live=live or [],
            models=_pairs(model, "model"),
            prompts=_prompts(_pairs(prompt, "prompt")),
            live_after_divergence=live_after_divergence,
        )
    except ValueError as err:
        refuse(err)

    async def go(client: Client, settings: Settings) -> tuple[str, Followed]:
        request, handle = await start_rerun(
            client, settings, build, choices, build_id=build_id, user_id=user, simulate=simulate
        )
        rerun = request.options.rerun
        assert rerun is not None
        live_roles = ", ".join(role.value for role in rerun.live_roles()) or "none"
        console.print(f"re-run of build [bold]{rerun.original}[/bold]; live roles: {live_roles}")
        followed = await announced(
            client, settings, handle, request.build_id,
            wait=wait, show_model_output=show_model_output, through_waits=through_waits,
        )  # fmt: skip
        return request.build_id, followed

    concluded(*run_command(go))
