"""`python -m devtools.patches`: every `workflow.patched` id of the workflows, how many open
runs may still be on its old path, and which recorded histories carry its marker: what
docs/workflow-changes.md's rule for retiring a patch asks before a branch goes.

A run records a patch's marker (and the server adds the id to the run's
`TemporalChangeVersion` search attribute) the first time it reaches the `patched` call. An
open run without the marker has either passed that point on the old path or not reached it
yet; the count includes both, so 0 means no open run can be on the old path.
"""

from __future__ import annotations

import ast
import asyncio
import base64
import json
from dataclasses import dataclass
from pathlib import Path

import typer
from temporalio.client import Client

ROOT = Path(__file__).resolve().parents[1]
HISTORIES = ROOT / "tests" / "histories"
# The workflow whose runs reach each module's patches; other modules are parts of a build.
WORKFLOW_OF = {"workflows/project.py": "ProjectWorkflow"}
BUILD_WORKFLOW = "BuildWorkflow"
PATCH_CALLS = ("patched", "deprecate_patch")

app = typer.Typer(add_completion=False, help=__doc__)


@dataclass(frozen=True)
class Patch:
    id: str
    module: str  # relative to the repository root
    call: str  # "patched" (both paths live) or "deprecate_patch" (the old path is gone)

    @property
    def workflow(self) -> str:
        return WORKFLOW_OF.get(self.module, BUILD_WORKFLOW)


def patches(root: Path = ROOT) -> list[Patch]:
    """The patch ids the workflows' code asks, by the module-level constant each call names."""
    found: list[Patch] = []
    for path in sorted((root / "workflows").glob("*.py")):
        tree = ast.parse(path.read_text())
        constants = {
            target.id: node.value.value
            for node in tree.body
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)
            for target in node.targets
            if isinstance(target, ast.Name) and isinstance(node.value.value, str)
        }
        calls = {
            (node.args[0].id, node.func.attr)
            for node in ast.walk(tree)
            if isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in PATCH_CALLS
            and node.args
            and isinstance(node.args[0], ast.Name)
        }
        module = str(path.relative_to(root))
        found += [Patch(constants[name], module, call) for name, call in sorted(calls)]
    return found


def markers(history: Path) -> set[str]:
    """The patch ids whose markers a recorded history holds."""
    ids: set[str] = set()
    for event in json.loads(history.read_text()).get("events", []):
        marker = event.get("markerRecordedEventAttributes")
        if not marker or marker.get("markerName") != "core_patch":
            continue
        for payload in marker.get("details", {}).get("patch-data", {}).get("payloads", []):
            ids.add(str(json.loads(base64.b64decode(payload["data"])).get("id")))
    return ids


def recorded(root: Path = HISTORIES) -> dict[str, set[str]]:
    """For each history (`folder/name`), the patch ids it carries."""
    return {
        str(path.relative_to(root).with_suffix("")): markers(path)
        for path in sorted(root.glob("*/*.json"))
    }


@dataclass(frozen=True)
class Count:
    open: int  # open runs of the patch's workflow
    marked: int  # of them, those that took the new path

    @property
    def unmarked(self) -> int:
        return self.open - self.marked


async def count(client: Client, patch: Patch, narrow: str = "") -> Count:
    """Open runs of the patch's workflow, and those with its marker (`narrow`: more of a
    visibility query, e.g. "TaskQueue = 'builds'")."""
    query = f"WorkflowType = '{patch.workflow}' AND ExecutionStatus = 'Running'"
    if narrow:
        query += f" AND ({narrow})"
    total = await client.count_workflows(query)
    marked = await client.count_workflows(f"{query} AND TemporalChangeVersion = '{patch.id}'")
    return Count(total.count, marked.count)


def verdict(patch: Patch, counted: Count, carriers: int) -> str:
    """What docs/workflow-changes.md's rule allows for the patch now."""
    if patch.call == "deprecate_patch":
        if carriers:
            return (
                f"deprecated; the call stays while {carriers} kept history folders have the marker"
            )
        return "deprecated; no kept history has the marker: the call may go"
    if counted.unmarked:
        return f"keep: {counted.unmarked} open runs may be on the old path"
    return "may be deprecated: no open run can be on the old path"


def report(found: list[Patch], counts: list[Count], histories: dict[str, set[str]]) -> str:
    rows = [("patch", "module", "call", "open", "old path?", "histories with it", "rule says")]
    for patch, counted in zip(found, counts, strict=True):
        carriers = sorted({h.split("/")[0] for h, ids in histories.items() if patch.id in ids})
        rows.append(
            (
                patch.id,
                patch.module,
                patch.call,
                str(counted.open),
                str(counted.unmarked),
                ", ".join(carriers) or "none",
                verdict(patch, counted, len(carriers)),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join(
        "  ".join([*(cell.ljust(width) for cell, width in zip(row, widths, strict=False)), row[-1]])
        for row in rows
    )


async def _main(narrow: str) -> str:
    from core.settings import get_settings
    from core.temporal import connect

    settings = get_settings()
    try:
        client = await connect(settings)
    except RuntimeError as err:
        raise SystemExit(
            f"cannot reach Temporal at {settings.temporal_address} (TEMPORAL_ADDRESS): {err}"
        ) from err
    found = patches()
    counts = [await count(client, patch, narrow) for patch in found]
    return report(found, counts, recorded())


@app.command()
def main(
    narrow: str = typer.Option(
        "", "--query", help="More of a visibility query, e.g. \"TaskQueue = 'builds'\"."
    ),
) -> None:
    """List each patch with the open runs that may be on its old path (on the Temporal server
    the settings name) and the recorded histories that carry its marker."""
    typer.echo(asyncio.run(_main(narrow)))


if __name__ == "__main__":
    from core.exit import exit_now

    exit_now(app)
