"""The command line, assembled: the build commands (cli/builds.py), the projects
(`project add|show|list`, cli/projects.py), the model endpoint (`model check`, cli/models.py),
re-runs of builds (`rerun`, cli/reruns.py), builds' score cards side by side (`compare`,
cli/scores.py) and evaluation suites (`eval`, cli/evals.py). starter.py runs it."""

from __future__ import annotations

from cli import builds
from cli.evals import eval_command
from cli.models import model_app
from cli.projects import project_app
from cli.reruns import rerun
from cli.scores import compare

app = builds.app  # the build commands, and beside them:
app.add_typer(project_app, name="project")
app.add_typer(model_app, name="model")
app.command("rerun")(rerun)
app.command("compare")(compare)
app.command("eval")(eval_command)
