"""The build commands: start, status, events, model-output, and the commands that steer a
running build (retry, rollback, approve, abort, top-up, cancel). `app` is the whole command
line: cli/main.py adds the projects', the model's, re-runs', scores' and evaluations' commands."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

import typer
from temporalio.client import (
    Client,
)

from cli.console import console, refuse, run_command
from cli.follow import event_line, follow, show_model_output, status_tables
from cli.launch import Followed, ThroughWaits, announced, concluded
from client import builds
from core.build_io import (
    BuildStatus,
    Simulation,
    StartOptions,
    build_id_from,
    parse_requirements,
    workflow_id_for,
)
from core.messages import (
    AbortRequest,
    ApproveRequest,
    CommandAccepted,
    RetryRequest,
    RollbackRequest,
    TopUpAccepted,
    TopUpRequest,
)
from core.mirror import BuildEvent
from core.settings import Settings, get_settings
from core.states import HANDOFFS, WORKING, BuildState
from workflows.build import BuildWorkflow

app = typer.Typer(
    help="Start builds on the Q Assistant pipeline and steer running ones.",
    no_args_is_help=True,
    add_completion=False,
)


class BumpPart(StrEnum):
    PATCH = "patch"
    MINOR = "minor"
    MAJOR = "major"


BuildIdArg = Annotated[str, typer.Argument(help="Build id, or workflow id build-<id>.")]


def _print_accepted(result: CommandAccepted) -> None:
    when = "now" if result.applies == "now" else "when the current phase ends"
    console.print(
        f"[green]{result.command} accepted[/green]: {result.from_state.value} -> "
        f"{result.target_state.value} ({when})"
    )


# The states a build can wait at for `approve`: the handoffs (`--gate` lists these, not all).
Gate = StrEnum("Gate", {state.name: state.value for state in HANDOFFS})  # type: ignore[misc]


@app.command()
def start(
    requirements: Annotated[
        str,
        typer.Option(
            "--requirements",
            "-r",
            help="Free text, or a JSON object such as "
            '\'{"feature": "Dark mode", "priority": "high"}\'.',
        ),
    ],
    project: Annotated[str, typer.Option("--project", "-p", help="Project id.")] = "demo",
    build_id: Annotated[
        str | None, typer.Option(help="Build id (default: random). Workflow id is build-<id>.")
    ] = None,
    user: Annotated[str, typer.Option(help="Who asks for the build.")] = "cli",
    max_retries: Annotated[
        int | None,
        typer.Option(help="Loop-backs allowed before FAILED (default: BUILD_MAX_RETRIES)."),
    ] = None,
    gate: Annotated[
        list[Gate] | None,
        typer.Option(help="Wait for `approve` at this handoff state; repeatable."),
    ] = None,
    simulate: Annotated[
        list[Simulation] | None,
        typer.Option(help="Make the offline model take a branch; repeatable."),
    ] = None,
    max_tokens: Annotated[
        int | None, typer.Option(help="Token budget (default: BUILD_MAX_TOKENS; 0: no limit).")
    ] = None,
    max_cost: Annotated[
        float | None,
        typer.Option(help="Budget in USD (default: BUILD_MAX_COST_USD; 0: no limit)."),
    ] = None,
    bump: Annotated[
        BumpPart, typer.Option(help="Which part of the project's version the release raises.")
    ] = BumpPart.MINOR,
    wait: Annotated[
        bool, typer.Option("--follow/--no-follow", help="Follow the build until it ends.")
    ] = True,
    through_waits: ThroughWaits = False,
    show_model_output: Annotated[
        bool,
        typer.Option(
            "--show-model-output",
            help="While following, print what each role's model writes, as it writes it.",
        ),
    ] = False,
) -> None:
    """Start a build, print its workflow id and Web UI link, then follow it to its end or to a
    wait for a person.

    Exit code 0 when the build reaches COMPLETE, 3 when it waits for a person, else 1.
    """
    settings = get_settings()
    try:
        choices = StartOptions(
            max_retries=max_retries,
            approval_gates=[BuildState(g.value) for g in gate or []],
            simulate=simulate or [],
            max_tokens=max_tokens,
            max_cost_usd=max_cost,
            bump=bump.value,
        )
        request = builds.new_request(
            settings,
            project,
            parse_requirements(requirements),
            choices,
            build_id=build_id,
            user_id=user,
        )
    except ValueError as err:
        refuse(err)

    async def go(client: Client, settings: Settings) -> Followed:
        handle = await builds.start_build(client, settings, request)
        return await announced(
            client, settings, handle, request.build_id,
            wait=wait, show_model_output=show_model_output, through_waits=through_waits,
        )  # fmt: skip

    concluded(request.build_id, run_command(go))


@app.command("follow")
def follow_build(
    build: BuildIdArg,
    through_waits: ThroughWaits = False,
    show_model_output: Annotated[
        bool, typer.Option("--show-model-output", help="Print what the models write.")
    ] = False,
) -> None:
    """Follow a running build to its end or to its next wait for a person.

    Exit code 0 when it reaches COMPLETE, 3 when it waits for a person, else 1."""

    async def go(client: Client, settings: Settings) -> Followed:
        handle = builds.handle_for(client, build)
        await builds.describe(handle)  # an unknown build: one sentence, not a traceback
        output_of = client if show_model_output else None
        return await follow(handle, console, output_of=output_of, through_waits=through_waits)

    concluded(build_id_from(build), run_command(go))


@app.command()
def status(
    build: BuildIdArg,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show a build's state, role, progress, attempts and what it waits for."""

    async def go(client: Client, settings: Settings) -> BuildStatus:
        result: BuildStatus = await builds.query(
            builds.handle_for(client, build), BuildWorkflow.status
        )
        return result

    result = run_command(go)
    if as_json:
        console.print_json(result.model_dump_json())
        return
    for table in status_tables(result):
        console.print(table)
    console.print(f"Web UI: {get_settings().ui_link(workflow_id_for(result.build_id))}")


@app.command()
def events(build: BuildIdArg) -> None:
    """List a build's events in order (seq, type, state, data)."""

    async def go(client: Client, settings: Settings) -> list[BuildEvent]:
        result: list[BuildEvent] = await builds.query(
            builds.handle_for(client, build), BuildWorkflow.event_log, 0
        )
        return result

    for event in run_command(go):
        console.print(
            f"{event.seq:>3} {event.timestamp:%H:%M:%S} {event.state.value:<20} {event_line(event)}"
        )


@app.command("model-output")
def model_output(
    build: BuildIdArg,
    from_offset: Annotated[
        int, typer.Option("--from", min=0, help="Start at this offset of the build's stream.")
    ] = 0,
) -> None:
    """Print what the build's models write, as they write it, until the build ends (a retried
    attempt is marked). Works on an ended build too: its stream is read to the end."""

    async def go(client: Client, settings: Settings) -> None:
        await builds.describe(builds.handle_for(client, build))  # unknown: one sentence
        await show_model_output(client, build, console, from_offset)

    run_command(go)


def _command(build: str, update: Any, arg: Any) -> Any:
    """Run a validated update on a build; its answer, or exit 1 with the refusal."""

    async def go(client: Client, settings: Settings) -> Any:
        handle = builds.handle_for(client, build)
        return await builds.update(handle, update, arg, rpc_timeout=settings.command_timeout)

    return run_command(go)


def _steer(build: str, update: Any, arg: Any) -> None:
    accepted: CommandAccepted = _command(build, update, arg)
    _print_accepted(accepted)


@app.command()
def retry(
    build: BuildIdArg,
    reason: Annotated[
        str, typer.Option("--reason", "-m", help="Why; handed to the Code Writer as guidance.")
    ],
) -> None:
    """Send the build back to IMPLEMENTATION with your reason as guidance."""
    _steer(build, BuildWorkflow.update_retry, RetryRequest(reason=reason, requested_by="cli"))


@app.command()
def rollback(
    build: BuildIdArg,
    to: Annotated[
        BuildState,
        typer.Option("--to", help=f"Earlier working state: {', '.join(w.value for w in WORKING)}."),
    ],
    reason: Annotated[str, typer.Option("--reason", "-m", help="Why.")],
) -> None:
    """Roll the build back to an earlier working state."""
    _steer(
        build,
        BuildWorkflow.update_rollback,
        RollbackRequest(target_state=to, reason=reason, requested_by="cli"),
    )


@app.command()
def abort(
    build: BuildIdArg,
    reason: Annotated[str, typer.Option("--reason", "-m", help="Why; recorded as the failure.")],
) -> None:
    """End the build FAILED with your reason (at once at a gate or pause)."""
    _steer(build, BuildWorkflow.update_abort, AbortRequest(reason=reason, requested_by="cli"))


@app.command("top-up")
def top_up(
    build: BuildIdArg,
    tokens: Annotated[int, typer.Option(help="Tokens to add to the budget.")] = 0,
    cost: Annotated[float, typer.Option(help="USD to add to the budget.")] = 0.0,
    note: Annotated[str, typer.Option("--note", "-m", help="Why.")] = "",
) -> None:
    """Add to a build's budget; a build paused in BUDGET_EXHAUSTED goes on."""
    try:
        request = TopUpRequest(tokens=tokens, cost_usd=cost, note=note, requested_by="cli")
    except ValueError as err:
        refuse(err)

    answer: TopUpAccepted = _command(build, BuildWorkflow.update_top_up, request)
    state = "resumes" if answer.resumes else "has"
    console.print(
        f"[green]budget topped up[/green]: the build {state} {answer.max_tokens or 'unlimited'} "
        f"tokens (used {answer.tokens_used}) and ${answer.max_cost_usd or 0:.4f} "
        f"(spent ${answer.cost_used_usd:.4f})"
    )


@app.command()
def approve(
    build: BuildIdArg,
    note: Annotated[
        str, typer.Option("--note", "-m", help="Note recorded with the approval.")
    ] = "",
) -> None:
    """Approve the gate the build waits at."""
    _steer(build, BuildWorkflow.update_approve, ApproveRequest(note=note, approved_by="cli"))
