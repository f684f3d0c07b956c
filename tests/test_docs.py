"""The README and docs/ say what the code does: the diagram, the settings, the endpoints and
messages, the files they name, the links between them, the workflow versions."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from fastapi.routing import APIRoute

from api.main import create_app
from core.settings import Settings
from core.states import mermaid
from workflows import build, records
from workflows.build import BuildWorkflow
from workflows.project import ProjectWorkflow

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = [README, *sorted((ROOT / "docs").glob("*.md")), ROOT / "bench" / "README.md"]


def text(path: Path) -> str:
    return path.read_text()


def test_readme_state_diagram_is_the_generated_one():
    block = re.search(r"```mermaid\n(.*?)\n```", text(README), re.S)
    assert block is not None
    assert block.group(1) == mermaid()


def test_configuration_documents_every_setting_and_only_real_ones():
    table = text(ROOT / "docs" / "configuration.md").split("## Models", 1)[0]
    documented = set(re.findall(r"`([A-Z][A-Z0-9_]+)`", table))
    fields = {name.upper() for name in Settings.model_fields}
    assert documented - fields == set(), (
        "docs/configuration.md documents variables no setting reads"
    )
    assert fields - documented == set(), "settings missing from docs/configuration.md"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_links_and_named_files_exist(doc: Path):
    body = text(doc)
    links = [link.split("#")[0] for link in re.findall(r"\]\(([^)\s]+)\)", body)]
    missing = [
        link for link in links if link and "://" not in link and not (doc.parent / link).exists()
    ]
    # Paths of this repository named in backticks: `core/states.py`, `tests/histories/`, ...
    named = re.findall(r"`((?:[a-z_]+/)+[A-Za-z0-9_.-]*)`", body)
    missing += [path for path in named if not path.startswith(".") and not _exists(path)]
    assert missing == []


def _exists(path: str) -> bool:
    # Folders made at run time, and image names.
    generated = ("WORKSPACE_DIR/", "RELEASES_DIR/", "tests/histories/v<N>/", "runs/", "temporalio/")
    return path.startswith(generated) or (ROOT / path.rstrip("/")).exists()


def test_the_api_doc_names_every_endpoint_and_every_message():
    doc = text(ROOT / "docs" / "api.md")
    endpoints = {
        f"{method} {route.path}"
        for route in create_app().routes
        if isinstance(route, APIRoute) and route.include_in_schema
        for method in route.methods or ()
    }
    assert endpoints and {e for e in endpoints if e not in doc} == set()
    assert {m for m in messages() if f"`{m}`" not in doc} == set()


def messages() -> set[str]:
    """The names of BuildWorkflow's and ProjectWorkflow's signals, updates and queries."""
    names = set()
    for workflow_class in (BuildWorkflow, ProjectWorkflow):
        for attr in dir(workflow_class):
            for kind in ("signal", "update", "query"):
                handler = getattr(workflow_class, attr)
                defn = getattr(handler, f"__temporal_{kind}_definition", None)
                if defn is not None and defn.name:
                    names.add(defn.name)
    return names


def test_the_workflow_changes_doc_names_every_patch_and_history_version():
    doc = text(ROOT / "docs" / "workflow-changes.md")
    patches = [
        v for module in (records, build) for k, v in vars(module).items() if k.endswith("_PATCH")
    ]
    assert patches and [p for p in patches if f"`{p}`" not in doc] == []
    versions = {p.name for p in (ROOT / "tests" / "histories").iterdir() if p.is_dir()}
    assert [v for v in sorted(versions) if f"| `{v}` |" not in doc] == []


def test_the_readme_is_a_front_door_of_at_most_9_kb():
    assert len(README.read_bytes()) <= 9 * 1024, "move detail into docs/"
