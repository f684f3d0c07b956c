"""The Code Writer's blocks format (activities/model/edit_blocks.py): answers as models write them
read into the same edits as the JSON answer, malformed ones refused with the block that could
not be read, hostile paths left to the one place that refuses them (activities/paths.py)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import httpx2
import pytest
from sqlalchemy import Engine
from temporalio.client import Client

from activities import paths
from activities.model import offline
from activities.model.edit_blocks import BlocksInvalid, parse, render, whole_lines
from activities.repository.workspace import Workspace
from core.events import EventType
from core.role_io import FileEdit, ImplementationOutput, RoleTask, SourceFile
from core.settings import Settings
from core.states import BuildState, Role
from tests.helpers import fields, make_request, model_client_with, running_worker, start
from workflows.build import BuildWorkflow

ANSWER = """I added a greeting with a type hint, and a test.

**app.py**:
```python
<<<<<<< SEARCH
def greet(name):
    return "Hello, " + name
=======
def greet(name: str) -> str:
    return f"Hello, {name}!"
>>>>>>> REPLACE
<<<<<<< SEARCH
VERSION = 1
=======
>>>>>>> REPLACE
```

`tests/test_app.py`
```python
from app import greet


def test_greet():
    assert greet("Ada") == "Hello, Ada!"
```

DELETE old_greeting.py
RENAME util.py -> helpers/util.py
"""


def test_an_answer_as_models_write_it_is_read_into_edits() -> None:
    out = parse(ANSWER)
    assert out.summary == "I added a greeting with a type hint, and a test."
    assert out.files == [
        SourceFile(
            path="tests/test_app.py",
            content='from app import greet\n\n\ndef test_greet():\n    assert greet("Ada") == '
            '"Hello, Ada!"\n',
        )
    ]
    assert [(e.kind, e.path) for e in out.edits] == [
        ("replace", "app.py"), ("replace", "app.py"), ("delete", "old_greeting.py"),
        ("rename", "util.py"),
    ]  # fmt: skip
    assert out.edits[0].search == 'def greet(name):\n    return "Hello, " + name\n'
    assert out.edits[0].replace.startswith("def greet(name: str) -> str:\n")
    assert out.edits[1].search == "VERSION = 1\n" and out.edits[1].replace == ""
    assert out.edits[3].to == "helpers/util.py"


def test_what_render_writes_parse_reads_back_fences_inside_files_too() -> None:
    readme = "# Tool\n\n```sh\npip install tool\n```\n"
    out = ImplementationOutput(
        summary="Docs and code.",
        files=[SourceFile(path="README.md", content=readme), SourceFile(path="e.py", content="")],
        edits=[
            FileEdit(kind="replace", path="a.py", search="x = 1\ny = 2\n", replace="x = 3\n"),
            FileEdit(kind="write", path="b.py", content="B = 1\n"),
            FileEdit(kind="delete", path="c.py"),
            FileEdit(kind="rename", path="d.py", to="pkg/d.py"),
        ],
    )
    text = render(out)
    assert "````\n# Tool" in text  # a longer fence around a file that holds one
    back = parse(text)
    assert back.files == [*out.files, SourceFile(path="b.py", content="B = 1\n")]
    assert back.edits == [e for e in out.edits if e.kind != "write"]


def test_an_exact_text_edit_is_widened_to_whole_lines() -> None:
    text = "# Changelog\n\n## Unreleased\n\n## 1.0\n- first\n"
    edit = FileEdit(kind="replace", path="CHANGELOG.md", search="Unreleased\n\n## ",
                    replace="Unreleased\n\n- new\n\n## ")  # fmt: skip
    wide = whole_lines(text, edit)
    assert wide.search == "## Unreleased\n\n## 1.0\n"
    assert wide.replace == "## Unreleased\n\n- new\n\n## 1.0\n"
    assert text.replace(wide.search, wide.replace) == text.replace(edit.search, edit.replace)
    assert parse(render(ImplementationOutput(summary="s", edits=[wide]))).edits == [wide]


@pytest.mark.parametrize(
    ("answer", "why"),
    [
        ("app.py\n```python\nx = 1\n", "never closed"),
        ("Nothing to change.", "holds no file block"),
        ("```python\nx = 1\n```\n", "no file path"),
        ("app.py\n```\n<<<<<<< SEARCH\nx = 1\n>>>>>>> REPLACE\n```\n", "before the section"),
        ("app.py\n```\n<<<<<<< SEARCH\nx = 1\n=======\nx = 2\n```\n", "not finished"),
        (
            "app.py\n```\n<<<<<<< SEARCH\nx\n<<<<<<< SEARCH\ny\n=======\n>>>>>>> REPLACE\n```\n",
            "a SEARCH inside a SEARCH",
        ),
        ("app.py\n```\nstray\n<<<<<<< SEARCH\nx\n=======\ny\n>>>>>>> REPLACE\n```\n", "outside"),
        ("app.py\n```\n<<<<<<< SEARCH\n=======\ny\n>>>>>>> REPLACE\n```\n", "empty SEARCH"),
    ],
)
def test_a_malformed_answer_is_refused_with_the_block_that_could_not_be_read(
    answer: str, why: str
) -> None:
    with pytest.raises(BlocksInvalid) as refused:
        parse(answer)
    assert why in str(refused.value)
    if "```" in answer and why != "holds no file block":
        assert "```" in str(refused.value)  # the block itself, for the re-ask


@pytest.mark.parametrize("path", [".git/config", ".GIT/hooks/post-checkout", "../outside.py"])
def test_a_hostile_path_is_read_as_written_and_refused_where_every_path_is(path: str) -> None:
    out = parse(f"{path}\n```\n[core]\n\tfsmonitor = touch /tmp/x\n```\n")
    assert out.files[0].path == path
    with pytest.raises(paths.PathRefused):
        paths.check_name(out.files[0].path)


# --- the Code Writer's call in blocks --------------------------------------------------


def code_task(files: dict[str, str] | None = None) -> RoleTask:
    return RoleTask(
        build_id=f"b{uuid.uuid4().hex[:8]}", project_id="p", role=Role.CODE_WRITER,
        state=BuildState.IMPLEMENTATION,
        attempt=1, requirements={"feature": "Dark mode"}, context={"files": files or {}},
    )  # fmt: skip


async def test_the_offline_code_writer_answers_in_blocks_that_apply_as_its_json_does(
    settings: Settings, tmp_path: Path
):
    changelog = "# Changelog\n\n## Unreleased\n\n## v0.1.0\n- First\n"
    blocks = settings.model_copy(update={"llm_edit_format": "blocks"})
    bodies: list[dict[str, Any]] = []

    async def seen(request: httpx2.Request) -> Any:
        bodies.append(json.loads(request.content))
        return await offline.handle(request)

    llm = model_client_with(blocks, seen)
    out, usage = await llm.implementation(code_task({"CHANGELOG.md": changelog}))
    assert usage.output_mode == "blocks" and usage.prompt_version.endswith("+blocks")
    assert (
        "response_format" not in bodies[0]
        and "<<<<<<< SEARCH" in bodies[0]["messages"][0]["content"]
    )
    as_json, _ = await model_client_with(settings, seen).implementation(
        code_task({"CHANGELOG.md": changelog})
    )
    assert out.files == as_json.files
    ws = Workspace(tmp_path / "ws")
    ws.ensure()
    ws.write([SourceFile(path="CHANGELOG.md", content=changelog)], "changelog", [])
    ws.write(out.files, "blocks", out.edits)
    written = (ws.repo / "CHANGELOG.md").read_text()
    assert (
        written
        == "# Changelog\n\n## Unreleased\n\n- Dark mode: `dark_mode.py`\n\n## v0.1.0\n- First\n"
    )
    await llm.close()


async def test_a_block_that_cannot_be_read_is_re_asked_with_the_block(settings: Settings):
    blocks = settings.model_copy(update={"llm_edit_format": "blocks"})
    bodies: list[dict[str, Any]] = []

    async def handler(request: httpx2.Request) -> Any:
        body = json.loads(request.content)
        bodies.append(body)
        if len(bodies) == 1:
            broken = "app.py\n```python\n<<<<<<< SEARCH\nx = 1\n```\n"
            return offline.respond(body, broken)
        return await offline.handle(request)

    llm = model_client_with(blocks, handler)
    out, usage = await llm.implementation(code_task())
    assert out.files and usage.requests == 2
    reask = bodies[1]["messages"][-1]["content"]
    assert "could not be read" in reask and "not finished" in reask and "x = 1" in reask
    await llm.close()


async def test_a_build_whose_code_travels_in_blocks_completes(
    client: Client, settings: Settings, engine: Engine
):
    blocks = settings.model_copy(update={"llm_edit_format": "blocks"})
    async with running_worker(client, blocks, engine):
        handle = await start(client, blocks, make_request(simulate=["tests_fail_once"]))
        result = await handle.result()
        events = await handle.query(BuildWorkflow.event_log, 0)
    calls = [e for e in events if e.event_type is EventType.ROLE_CALL]
    modes = {fields(e)["output_mode"] for e in calls if e.triggered_by == "code_writer"}
    assert result.state is BuildState.COMPLETE and modes == {"blocks"}
