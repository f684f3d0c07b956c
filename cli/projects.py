"""`starter.py project`: register a project's git repository, show and list projects."""

from __future__ import annotations

import re
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from temporalio.client import Client

from cli.console import console, refuse, run_command
from client import projects
from core.projects import (
    PROJECT_ID_PATTERN,
    PROJECT_ID_RULE,
    ProjectConfig,
    ProjectView,
    VersionScheme,
    is_url,
)
from core.settings import Settings


class DeliveryMode(StrEnum):
    MERGE = "merge"
    BRANCH = "branch"


project_app = typer.Typer(
    help="Register a project's git repository, and show the registered ones.",
    no_args_is_help=True,
)


def _project_id(value: str) -> str:
    """The same rule as every other door (core/projects.PROJECT_ID_PATTERN), before anything
    is started."""
    if not re.match(PROJECT_ID_PATTERN, value):
        raise typer.BadParameter(f"{value!r}: a project id is {PROJECT_ID_RULE}")
    return value


ProjectArg = Annotated[
    str, typer.Argument(help="Project id: letters, digits, . _ -", callback=_project_id)
]


def _print_project(view: ProjectView) -> None:
    config = view.shown().config
    made = " (made by the system)" if view.created_by_system else ""
    console.print(f"[bold]{view.project_id}[/bold]: {config.repository}{made}")
    head = (view.head or "-")[:12]
    console.print(
        f"  branch {config.branch} at {head} · delivery {config.delivery} · "
        f"versions {config.version_scheme}"
    )
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
            help="Makes the project's environment, e.g. 'pip install -e .[test]' ('true': "
            "nothing). Default: what the project declares (pyproject.toml, requirements "
            "files). Network only with SANDBOX_SETUP_NETWORK=true."
        ),
    ] = "",
    delivery: Annotated[
        DeliveryMode,
        typer.Option(help="merge: into the branch, tagged; branch: pushed for a person."),
    ] = DeliveryMode.MERGE,
    version_scheme: Annotated[
        VersionScheme,
        typer.Option(
            help="How releases are tagged: auto follows the project's own tags (8.5.0 -> "
            "8.6.0, v1.4.0 -> v1.5.0; v0.1.0 first), semver, v-semver, or none (no tag)."
        ),
    ] = "auto",
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
            version_scheme=version_scheme,
        )
    except ValueError as err:
        refuse(err)

    async def go(client: Client, settings: Settings) -> ProjectView:
        return await projects.put_project(client, settings, project_id, config)

    _print_project(run_command(go))


@project_app.command("show")
def project_show(
    project_id: ProjectArg,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show a project's registration."""

    async def go(client: Client, _: Settings) -> ProjectView:
        return await projects.get_project(client, project_id)

    view = run_command(go)
    if as_json:
        console.print_json(view.shown().model_dump_json())
    else:
        _print_project(view)


@project_app.command("list")
def project_list() -> None:
    """List the registered projects."""

    async def go(client: Client, _: Settings) -> list[ProjectView]:
        return await projects.list_projects(client)

    views = run_command(go)
    if not views:
        console.print("no projects yet (`starter.py project add` registers one)")
    for view in views:
        _print_project(view)
