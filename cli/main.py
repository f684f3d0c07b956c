"""The command line, assembled: the build commands (cli/builds.py), the projects
(`project add|show|list`, cli/projects.py), the model endpoint (`model check`, cli/models.py),
re-runs of builds (`rerun`, cli/reruns.py), builds' score cards side by side (`compare`,
cli/scores.py) and evaluation suites (`eval`, cli/evals.py; `eval mine`, cli/mining.py).
starter.py runs it."""

from __future__ import annotations

from typing import Any

import typer
from typer.core import TyperGroup

from cli import builds
from cli.evals import eval_command
from cli.mining import mine_command
from cli.models import model_app
from cli.projects import project_app
from cli.reruns import rerun
from cli.scores import compare

app = builds.app  # the build commands, and beside them:
app.add_typer(project_app, name="project")
app.add_typer(model_app, name="model")
app.command("rerun")(rerun)
app.command("compare")(compare)


class _EvalGroup(TyperGroup):
    """`eval SUITE ...` runs a suite (`eval run`), `eval mine REPO` mines one: a first word that
    names no command of the group is a suite."""

    def resolve_command(self, ctx: Any, args: list[str]) -> Any:  # typer's own click types
        if args and args[0] not in self.commands:
            return "run", self.commands["run"], args
        return super().resolve_command(ctx, args)


eval_app = typer.Typer(
    cls=_EvalGroup,
    help="Evaluation suites: `eval SUITE --config A.yaml` runs one, `eval mine REPO` mines one.",
    context_settings={"ignore_unknown_options": True},
    no_args_is_help=True,
)
eval_app.command("run")(eval_command)
eval_app.command("mine")(mine_command)
app.add_typer(eval_app, name="eval")
