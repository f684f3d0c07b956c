"""A project's setup command: run once per workspace, in the sandbox, into a virtual
environment of the workspace's own that its test runs then use (read-only); network only
where a person allows it, and a failing setup reported as the test run's failure."""

from __future__ import annotations

import asyncio
import io
import zipfile
from pathlib import Path

import pytest

from activities.repository.gitcmd import git
from activities.repository.workspace import Remote, Workspace
from activities.sandbox import isolation
from activities.sandbox.runs import Limits
from activities.testing.testrun import baseline, run_tests
from core.projects import ProjectConfig
from core.role_io import RUN, SourceFile, TestReport
from tests.git_projects import make_project

LIMITS = Limits(60, 1024)
WHEEL = "vendor/helper-1.0-py3-none-any.whl"
INSTALL = f"pip install --no-index --no-deps {WHEEL}"
USES_HELPER = """import os
from pathlib import Path

import helper


def test_the_installed_package_is_there():
    assert helper.answer() == 42


def test_its_environment_is_read_only():
    with open(Path(os.environ["VIRTUAL_ENV"]) / "planted", "w") as planted:
        planted.write("x")
"""


def make_wheel(name: str, files: dict[str, str], version: str = "1.0") -> bytes:
    """A real pure-Python wheel of `name` holding `files` (its dist-info made here)."""
    info = f"{name}-{version}.dist-info"
    files = {
        **files,
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{info}/WHEEL": (
            "Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        ),
    }
    record = "".join(f"{path},,\n" for path in files) + f"{info}/RECORD,,\n"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as wheel:
        for path, text in {**files, f"{info}/RECORD": record}.items():
            wheel.writestr(path, text)
    return buffer.getvalue()


def helper_wheel() -> bytes:
    """A real wheel of a one-module package `helper` (what a project vendors)."""
    return make_wheel("helper", {"helper/__init__.py": "def answer():\n    return 42\n"})


def vendoring_project(tmp_path: Path, files: dict[str, str]) -> Path:
    """A project's remote whose branch holds `files` and the helper's wheel at WHEEL."""
    remote = make_project(tmp_path, files)
    seed = tmp_path / "seed"
    (seed / WHEEL).parent.mkdir(parents=True)
    (seed / WHEEL).write_bytes(helper_wheel())
    git(seed, "add", "-A")
    git(seed, "commit", "-q", "-m", "vendor helper")
    git(seed, "push", "-q", "origin", "HEAD:refs/heads/main")
    return remote


def _workspace(tmp_path: Path) -> tuple[Workspace, str]:
    remote = vendoring_project(tmp_path, {"tests/test_helper.py": USES_HELPER})
    ws = Workspace(tmp_path / "ws", Remote(str(remote), "main", "b1"))
    return ws, ws.open()


def _failed(report: TestReport) -> list[str]:
    return [f.test for f in report.failures]


async def test_the_setup_command_installs_once_and_the_tests_use_its_environment(
    tmp_path: Path,
) -> None:
    ws, _ = _workspace(tmp_path)
    without = await run_tests(ws, 1, LIMITS)
    assert not without.passed and "No module named 'helper'" in without.failures[0].message
    first = await run_tests(ws, 2, LIMITS, setup=INSTALL)
    assert first.setup.startswith(f"`{INSTALL}` exited 0 in ")
    assert first.tests_run == 2
    assert "tests.test_helper::test_the_installed_package_is_there" not in _failed(first)
    assert (ws.root / "env" / "lib").is_dir() and not (ws.repo / "env").exists()
    if isolation.current().kind != "none":  # a test run cannot change its environment
        assert _failed(first) == ["tests.test_helper::test_its_environment_is_read_only"]
        assert not (ws.root / "env" / "planted").exists()
    again = await run_tests(ws, 3, LIMITS, setup=INSTALL)
    assert again.setup == f"`{INSTALL}` ran for this workspace already"
    assert _failed(again) == _failed(first)
    # Another setup command makes the environment again, from scratch.
    changed = f"{INSTALL} --quiet"
    (ws.root / "env" / "stale").write_text("from the last command")
    remade = await run_tests(ws, 4, LIMITS, setup=changed)
    assert remade.setup.startswith(f"`{changed}` exited 0")
    assert not (ws.root / "env" / "stale").exists()


async def test_a_failing_setup_fails_the_run_with_its_output_and_runs_again(
    tmp_path: Path,
) -> None:
    ws, _ = _workspace(tmp_path)
    broken = "echo 'no such requirement: widgets' >&2; exit 3"
    report = await run_tests(ws, 1, LIMITS, setup=broken)
    assert not report.passed and report.tests_run == 0
    assert report.failures[0].test == RUN
    assert report.failures[0].message.startswith(f"setup `{broken}` exited 3")
    assert "no such requirement: widgets" in report.failures[0].message
    assert "no tests ran" in report.summary and report.sandbox
    assert report.log is not None and "widgets" in Path(report.log).read_text()
    fixed = await run_tests(ws, 2, LIMITS, setup=INSTALL)  # not marked done: it runs again
    assert fixed.setup.startswith(f"`{INSTALL}` exited 0")


async def test_the_baseline_gets_an_environment_of_its_own(tmp_path: Path) -> None:
    """An editable install points at its tree: the base's tests must import the base's code."""
    ws, base = _workspace(tmp_path)
    ws.write([SourceFile(path="tests/test_more.py", content="def test_more():\n    pass\n")], "1")
    await run_tests(ws, 1, LIMITS, setup=INSTALL)
    cache = tmp_path / "cache"
    measured = await baseline(ws, base, cache, "python -m pytest", LIMITS, setup=INSTALL)
    assert "tests.test_helper::test_the_installed_package_is_there" in measured.passed
    assert measured.report.setup.startswith(f"`{INSTALL}` exited 0")
    assert not [p for p in ws.root.iterdir() if p.name.startswith("baseline-")]  # tree and env


REACH = """import socket, sys
index, database = map(int, sys.argv[1:3])
with socket.create_connection(("127.0.0.1", index), timeout=5) as conn:
    conn.sendall(b"index")
try:
    socket.create_connection(("127.0.0.1", database), timeout=5).close()
except OSError:
    sys.exit(0)
sys.exit(7)  # the database on the loopback answered
"""


@pytest.mark.parametrize("kind", ["bubblewrap", "landlock"])
async def test_network_for_the_setup_only_where_a_person_allows_it_and_to_its_ports(
    tmp_path: Path, kind: isolation.Choice
) -> None:
    """A setup command with network reaches a package index's port, not the other services
    on the host's loopback (the API, Temporal, a database); without network, nothing."""
    try:
        isolation.choose(kind)
    except isolation.SandboxUnavailable as err:
        pytest.skip(f"{kind} does not work here: {err}")
    served: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        served.append(await reader.read(100))
        writer.close()

    index = await asyncio.start_server(serve, "127.0.0.1", 0)
    database = await asyncio.start_server(serve, "127.0.0.1", 0)
    index_port = index.sockets[0].getsockname()[1]
    database_port = database.sockets[0].getsockname()[1]
    setup = f"python reach.py {index_port} {database_port}"
    try:
        ws, _ = _workspace(tmp_path)
        (ws.repo / "reach.py").write_text(REACH)
        with isolation.using(kind, setup_ports=(index_port,)):
            offline = await run_tests(ws, 1, LIMITS, setup=setup)
            assert not offline.passed and "exited 1" in offline.setup and served == []
            assert "no network" in offline.sandbox
            online = await run_tests(ws, 2, LIMITS, setup=setup, network=True)
        assert online.setup.startswith(f"`{setup}` exited 0"), online.failures
        assert "no network" in online.sandbox  # the test run after it had none
        for _ in range(50):
            if served:
                break
            await asyncio.sleep(0.1)
        assert served == [b"index"]
    finally:
        index.close()
        database.close()


def test_a_registration_keeps_its_setup_command() -> None:
    config = ProjectConfig(repository="/r.git", setup_command="pip install -e .")
    stored = ProjectConfig.model_validate_json(config.model_dump_json())
    assert stored.setup_command == "pip install -e ."
