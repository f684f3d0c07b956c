"""Start builds and steer them: start, status, events, retry, rollback, approve."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table
from temporalio.client import (
    Client,
)

from client import builds, projects
from client.errors import BuildError, CommandRefused
from client.follow import delivered, event_line, follow
from core.exit import exit_now
from core.messages import (
    AbortRequest,
    ApproveRequest,
    CommandAccepted,
    RetryRequest,
    RollbackRequest,
    TopUpAccepted,
    TopUpRequest,
)
from core.models import (
    BuildEvent,
    BuildStatus,
    Simulation,
    StartOptions,
    parse_requirements,
    workflow_id_for,
)
from core.projects import ProjectConfig, ProjectView, is_url
from core.settings import Settings, get_settings
from core.states import HANDOFFS, WORKING, BuildState
from core.telemetry import flush_traces, tracing_interceptors
from core.temporal import connect
from workflows.build import BuildWorkflow

app = typer.Typer(
    help="Start builds on the Q Assistant pipeline and steer running ones.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console(highlight=False)
T = TypeVar("T")


class BumpPart(StrEnum):
    PATCH = "patch"
    MINOR = "minor"
    MAJOR = "major"


class DeliveryMode(StrEnum):
    MERGE = "merge"
    BRANCH = "branch"


BuildIdArg = Annotated[str, typer.Argument(help="Build id, or workflow id build-<id>.")]


class CommandError(Exception):
    """A refusal to show the user as one line, with exit code 1."""


def _run(coro_fn: Callable[[Client, Settings], Awaitable[T]]) -> T:
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


def _print_accepted(result: CommandAccepted) -> None:
    when = "now" if result.applies == "now" else "when the current phase ends"
    console.print(
        f"[green]{result.command} accepted[/green]: {result.from_state.value} -> "
        f"{result.target_state.value} ({when})"
    )


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
        list[BuildState] | None,
        typer.Option(
            help="Wait for `approve` at this handoff state; repeatable. One of: "
            + ", ".join(h.value for h in HANDOFFS)
        ),
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
) -> None:
    """Start a build, print its workflow id and Web UI link, then follow it to the end.

    Exit code 0 only when the build reaches COMPLETE.
    """
    settings = get_settings()
    try:
        choices = StartOptions(
            max_retries=max_retries,
            approval_gates=gate or [],
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
        console.print(f"[red]error:[/red] {err}")
        raise typer.Exit(2) from err

    async def go(client: Client, settings: Settings) -> tuple[BuildStatus, dict[str, Any]] | None:
        handle = await builds.start_build(client, settings, request)
        console.print(f"build [bold]{request.build_id}[/bold] started: workflow id {handle.id}")
        console.print(f"Web UI: {settings.ui_link(handle.id)}")
        if not await builds.has_worker(client, settings):
            console.print(
                f"[yellow]warning:[/yellow] no worker polls task queue "
                f"{settings.temporal_task_queue}; the build waits until one does "
                "(`make run` or `.venv/bin/python worker.py`)"
            )
        if not wait:
            return None
        return await follow(handle, console)

    followed = _run(go)
    if followed is None:
        return
    final, release = followed
    if final.state is BuildState.COMPLETE:
        console.print(
            f"[green]build {request.build_id} COMPLETE[/green] (attempts {final.attempts})"
        )
        console.print(delivered(release).capitalize())
        return
    console.print(
        f"[red]build {request.build_id} {final.state.value.upper()}[/red]: {final.last_error}"
    )
    raise typer.Exit(1)


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

    result = _run(go)
    if as_json:
        console.print_json(result.model_dump_json())
        return
    table = Table(show_header=False, box=None)
    for key, value in result.model_dump(mode="json").items():
        table.add_row(key, json.dumps(value) if isinstance(value, (dict, list)) else str(value))
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

    for event in _run(go):
        console.print(
            f"{event.seq:>3} {event.timestamp:%H:%M:%S} {event.state.value:<20} {event_line(event)}"
        )


def _command(build: str, update: Any, arg: Any) -> Any:
    """Run a validated update on a build; its answer, or exit 1 with the refusal."""

    async def go(client: Client, settings: Settings) -> Any:
        handle = builds.handle_for(client, build)
        return await builds.update(handle, update, arg, rpc_timeout=settings.command_timeout)

    return _run(go)


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
        console.print(f"[red]error:[/red] {err}")
        raise typer.Exit(2) from err

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


project_app = typer.Typer(
    help="Register a project's git repository, and show the registered ones.",
    no_args_is_help=True,
)
app.add_typer(project_app, name="project")
ProjectArg = Annotated[str, typer.Argument(help="Project id: letters, digits, . _ -")]


def _print_project(view: ProjectView) -> None:
    config = view.config
    made = " (made by the system)" if view.created_by_system else ""
    console.print(f"[bold]{view.project_id}[/bold]: {config.repository}{made}")
    head = (view.head or "-")[:12]
    console.print(f"  branch {config.branch} at {head} · delivery {config.delivery}")
    console.print(f"  tests: {config.test_command}")
    if config.setup_command:
        console.print(f"  setup: {config.setup_command}")
    if config.smoke_command:
        console.print(f"  smoke: {config.smoke_command}")


@project_app.command("add")
def project_add(
    project_id: ProjectArg,
    repository: Annotated[
        str, typer.Argument(help="A local path or any URL git can clone (file://, ssh, https).")
    ],
    branch: Annotated[str, typer.Option(help="The branch builds start from.")] = "main",
    test_command: Annotated[str, typer.Option(help="The project's tests.")] = "python -m pytest",
    smoke_command: Annotated[str, typer.Option(help="Proves a release works.")] = "",
    setup_command: Annotated[
        str,
        typer.Option(
            help="Run once per workspace before its tests, e.g. 'pip install -e .' "
            "(network only with SANDBOX_SETUP_NETWORK=true)."
        ),
    ] = "",
    delivery: Annotated[
        DeliveryMode,
        typer.Option(help="merge: into the branch, tagged; branch: pushed for a person."),
    ] = DeliveryMode.MERGE,
) -> None:
    """Register a project (or change it). git must be able to read the repository's branch."""
    if not is_url(repository):
        repository = str(Path(repository).expanduser().resolve())
    try:
        config = ProjectConfig(
            repository=repository,
            branch=branch,
            test_command=test_command,
            smoke_command=smoke_command,
            setup_command=setup_command,
            delivery=delivery.value,
        )
    except ValueError as err:
        console.print(f"[red]error:[/red] {err}")
        raise typer.Exit(2) from err

    async def go(client: Client, settings: Settings) -> ProjectView:
        return await projects.put_project(client, settings, project_id, config)

    _print_project(_run(go))


@project_app.command("show")
def project_show(
    project_id: ProjectArg,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show a project's registration."""

    async def go(client: Client, _: Settings) -> ProjectView:
        return await projects.get_project(client, project_id)

    view = _run(go)
    if as_json:
        console.print_json(view.model_dump_json())
    else:
        _print_project(view)


@project_app.command("list")
def project_list() -> None:
    """List the registered projects."""

    async def go(client: Client, _: Settings) -> list[ProjectView]:
        return await projects.list_projects(client)

    views = _run(go)
    if not views:
        console.print("no projects yet (`starter.py project add` registers one)")
    for view in views:
        _print_project(view)


if __name__ == "__main__":
    exit_now(app)
