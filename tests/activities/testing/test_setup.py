"""A project is tested in its own environment (activities/testing/environment.py): made from
its setup command or what it declares, holding the test runner and the project's dependencies
and nothing of the worker's, its own source first on the path; cached by the files that
declare it and shared read-only; a setup that fails reported as the environment's failure,
with its cause and what changes it."""

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
from activities.testing import declared, environment
from activities.testing.results import Baseline, compare
from activities.testing.testrun import baseline, run_tests
from core.projects import ProjectConfig
from core.reports import RUN, TestReport
from core.role_io import SourceFile
from tests.git_projects import commit_files, make_project

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


def request(tmp_path: Path, setup: str = "", project: str = "p1") -> environment.Request:
    return environment.Request(store=tmp_path / "environments", project=project,
                               setup_command=setup)  # fmt: skip


def _workspace(tmp_path: Path, name: str = "ws") -> tuple[Workspace, str]:
    remote = tmp_path / "remote.git"
    if not remote.exists():
        remote = vendoring_project(tmp_path, {"tests/test_helper.py": USES_HELPER})
    ws = Workspace(tmp_path / name, Remote(str(remote), "main", name))
    return ws, ws.open()


def _failed(report: TestReport) -> list[str]:
    return [f.test for f in report.failures]


# A project named like a package the worker itself depends on (the worker runs on pydantic):
# its tests must import its own source, whatever the worker has installed.
OWN_PYDANTIC = {
    "pydantic/__init__.py": 'VERSION = "0.0.1-ours"\n',
    "tests/test_own.py": """import os
import importlib.util

import pydantic


def test_its_own_source_is_imported():
    assert pydantic.VERSION == "0.0.1-ours"
    assert pydantic.__file__.startswith(os.getcwd())


def test_nothing_of_the_worker_is_importable():
    assert importlib.util.find_spec("temporalio") is None
    assert importlib.util.find_spec("sqlmodel") is None
""",
}


@pytest.mark.parametrize("setup", ["", "pip install --no-index --no-deps vendor/*.whl"])
async def test_a_project_named_like_a_worker_package_is_tested_against_its_own_source(
    tmp_path: Path, setup: str
) -> None:
    """With no setup command (the runner alone, the source on the path) and with one that
    installs another copy of the package into the environment (the source still first)."""
    remote = make_project(tmp_path, OWN_PYDANTIC)
    seed = tmp_path / "seed"
    wheel = make_wheel("pydantic", {"pydantic/__init__.py": 'VERSION = "installed"\n'}, "9.9")
    (seed / "vendor").mkdir()
    (seed / "vendor" / "pydantic-9.9-py3-none-any.whl").write_bytes(wheel)
    commit_files(seed, {}, "vendor")
    git(seed, "push", "-q", "origin", "HEAD:refs/heads/main")
    ws = Workspace(tmp_path / "ws", Remote(str(remote), "main", "b1"))
    ws.open()
    report = await run_tests(ws, 1, LIMITS, request=request(tmp_path, setup))
    assert report.passed, report.failures
    assert report.counts.passed == 2 and report.counts.run == 2
    source = "nothing declared" if not setup else "the setup command"
    assert source in report.setup and "made in" in report.setup


async def test_the_environment_is_made_once_and_shared_read_only(tmp_path: Path) -> None:
    ws, _ = _workspace(tmp_path)
    without = await run_tests(ws, 1, LIMITS, request=request(tmp_path))
    assert not without.passed and "No module named 'helper'" in without.failures[0].message
    first = await run_tests(ws, 2, LIMITS, request=request(tmp_path, INSTALL))
    assert f"from the setup command `{INSTALL}`: made in " in first.setup
    assert first.tests_run == 2
    assert "tests.test_helper::test_the_installed_package_is_there" not in _failed(first)
    assert not list(ws.repo.glob("*.egg-info")) and not (ws.repo / "env").exists()
    if isolation.current().kind != "none":  # a test run cannot change its environment
        assert _failed(first) == ["tests.test_helper::test_its_environment_is_read_only"]
    # Another build of the project, in another workspace: no setup runs again.
    other, _ = _workspace(tmp_path, "ws2")
    again = await run_tests(other, 1, LIMITS, request=request(tmp_path, INSTALL))
    assert again.setup.endswith("reused (no setup ran)"), again.setup
    assert _failed(again) == _failed(first)
    # A build that changes what declares the dependencies gets a fresh environment.
    other.write([SourceFile(path="requirements-dev.txt", content="")], "declare")
    changed = await run_tests(other, 2, LIMITS, request=request(tmp_path, INSTALL))
    assert "made in" in changed.setup and changed.setup != again.setup
    # Another project's setup never shares this one's environment.
    stranger = await run_tests(other, 3, LIMITS, request=request(tmp_path, INSTALL, "p2"))
    assert "made in" in stranger.setup


async def test_a_failing_setup_is_the_environments_failure_with_its_cause(
    tmp_path: Path,
) -> None:
    ws, _ = _workspace(tmp_path)
    noise = "; ".join(f"echo line{i}" for i in range(30))
    broken = f"{noise}; echo 'ERROR: no such requirement: widgets' >&2; exit 3"
    report = await run_tests(ws, 1, LIMITS, request=request(tmp_path, broken))
    assert not report.passed and report.setup_failed and report.tests_run == 0
    message = report.failures[0].message
    assert report.failures[0].test == RUN and f"`{broken}` exited 3" in message
    assert "ERROR: no such requirement: widgets" in message
    assert "line29" in message and "line5" in message  # the tail, whole lines
    assert "SANDBOX_SETUP_NETWORK" in message and "It ran without network." in message
    assert report.log is not None and "widgets" in Path(report.log).read_text()
    fixed = await run_tests(ws, 2, LIMITS, request=request(tmp_path, INSTALL))
    assert "made in" in fixed.setup and not fixed.setup_failed


async def test_a_shared_environment_is_made_from_the_projects_base_never_a_builds_code(
    tmp_path: Path,
) -> None:
    """A build's code cannot shape the environment later builds share: that one is made from
    the project's base, whatever the build changed that its setup reads; a build that changes
    what declares its dependencies gets an environment of its own, made from its code."""
    remote = make_project(tmp_path, {"setup.sh": 'echo base > "$VIRTUAL_ENV/made-from"\n'})
    ws = Workspace(tmp_path / "ws", Remote(str(remote), "main", "b1"))
    base = ws.open()
    planted = 'echo planted > "$VIRTUAL_ENV/made-from"\n'
    ws.write([SourceFile(path="setup.sh", content=planted)], "the build's own setup.sh")
    asked = environment.Request(store=tmp_path / "environments", project="p1",
                                setup_command="sh setup.sh", base=base, build="b1")  # fmt: skip
    shared = await environment.prepare(ws.repo, asked, limits=LIMITS, scratch=ws.runs)
    assert shared.ok and (shared.environment.root / "made-from").read_text() == "base\n"
    ws.write([SourceFile(path="requirements.txt", content="")], "declares dependencies")
    own = await environment.prepare(ws.repo, asked, limits=LIMITS, scratch=ws.runs)
    assert own.ok and (own.environment.root / "made-from").read_text() == "planted\n"
    assert own.environment.root.parent.name.startswith("build-")
    other = environment.Request(**{**asked.__dict__, "build": "b2"})
    again = await environment.prepare(ws.repo, other, limits=LIMITS, scratch=ws.runs)
    assert again.environment.root != own.environment.root  # never another build's


async def test_a_project_that_pins_a_runner_package_replaces_ours_whole(tmp_path: Path) -> None:
    """The runner's packages are installed as pip would (every file in their RECORD): a
    project's own version of one (pip, here) replaces ours and leaves nothing of it behind."""
    remote = make_project(tmp_path, {"tests/test_pin.py": (
        "import pip\n\n\ndef test_pinned():\n    assert pip.PINNED\n"
    )})  # fmt: skip
    seed = tmp_path / "seed"
    (seed / "vendor").mkdir()
    pinned = make_wheel("pip", {"pip/__init__.py": "PINNED = True\n"}, "99.0")
    (seed / "vendor" / "pip-99.0-py3-none-any.whl").write_bytes(pinned)
    commit_files(seed, {}, "pin")
    git(seed, "push", "-q", "origin", "HEAD:refs/heads/main")
    ws = Workspace(tmp_path / "ws", Remote(str(remote), "main", "b1"))
    ws.open()
    setup = "pip install --no-index --no-deps vendor/pip-99.0-py3-none-any.whl"
    report = await run_tests(ws, 1, LIMITS, request=request(tmp_path, setup))
    assert report.passed, report.failures
    infos = list((tmp_path / "environments").glob("project-p1/*/lib/*/site-packages/pip-*"))
    assert [p.name for p in infos] == ["pip-99.0.dist-info"]


TAGGED = {
    "tests/test_version.py": """import subprocess


def test_the_checkout_has_its_tags():
    described = subprocess.run(["git", "describe", "--tags"], capture_output=True, text=True)
    assert described.stdout.strip().startswith("v1.0"), described.stderr


def test_broken_on_the_base():
    assert False, "broken before the build"
""",
    "tests/test_old.py": """import pytest


@pytest.fixture
def broken():
    raise RuntimeError("a fixture broken before the build")


def test_uses_broken(broken):
    pass
""",
}


async def test_the_baseline_sees_a_real_checkout_and_pre_existing_failures_are_counted(
    tmp_path: Path,
) -> None:
    """The base's checkout has its git data and tags (a project versioned from its tags
    builds there); what failed or errored there is pre-existing, counted apart, and the
    counts add up to the report."""
    remote = make_project(tmp_path, TAGGED)
    git(tmp_path / "seed", "tag", "v1.0")
    git(tmp_path / "seed", "push", "-q", "origin", "v1.0")
    ws = Workspace(tmp_path / "ws", Remote(str(remote), "main", "b1"))
    base = ws.open()
    ws.write([SourceFile(path="tests/test_new.py", content="def test_new():\n    assert 0\n")],
             "the build's own failure")  # fmt: skip
    report = await run_tests(ws, 1, LIMITS, request=request(tmp_path))
    assert report.counts.failed == 2 and report.counts.errors == 1, report.counts
    measured = await baseline(ws, base, tmp_path / "cache", "python -m pytest", LIMITS,
                              request=request(tmp_path))  # fmt: skip
    assert "tests.test_version::test_the_checkout_has_its_tags" in measured.passed
    judged = await asyncio.to_thread(compare, report, measured)
    assert _failed(judged) == ["tests.test_new::test_new"]
    assert judged.counts.model_dump() == {
        "passed": 1, "failed": 1, "errors": 0, "pre_existing": 2, "skipped": 0, "run": 4,
    }  # fmt: skip
    assert judged.counts.run == judged.tests_run == 4
    assert not [p for p in ws.root.iterdir() if p.name.startswith("baseline-")]


def test_a_run_that_did_not_collect_on_the_base_either_is_pre_existing() -> None:
    from core.reports import TestFailure

    interrupted = TestFailure(test=RUN, message="the run was interrupted: 1 error in collection")
    now = TestReport(passed=False, summary="", tests_run=1, failures=[interrupted.model_copy()])
    before = Baseline(commit="b" * 40, passed=[], report=now.model_copy(deep=True))
    judged = compare(now, before)
    assert judged.failures == [] and judged.pre_existing == [interrupted]
    other = TestFailure(test=RUN, message="pytest hit an internal error: boom")
    worse = now.model_copy(update={"failures": [other]})
    assert compare(worse, before).failures == [other]


def test_what_a_project_declares_is_its_plan(tmp_path: Path) -> None:
    def plan_of(files: dict[str, str]) -> declared.Plan:
        folder = tmp_path / str(len(list(tmp_path.iterdir())))
        for name, text in files.items():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_text(text)
        folder.mkdir(exist_ok=True)
        return declared.plan(folder)

    build = '[build-system]\nrequires = ["hatchling"]\nbuild-backend = "hatchling.build"\n'
    with_extra = plan_of({"pyproject.toml": build + '[project]\nname = "x"\nversion = "1"\n'
                          'dependencies = ["attrs"]\n[project.optional-dependencies]\n'
                          'docs = ["sphinx"]\ntests = ["hypothesis"]\n'})  # fmt: skip
    assert with_extra.command == "pip install -e '.[tests]'"
    assert "pyproject.toml with its [tests] extra" in with_extra.source
    project = '[project]\nname = "x"\nversion = "1"\ndependencies = ["a"]\n'
    grouped = plan_of({"pyproject.toml": f'{build}{project}[dependency-groups]\ndev = ["p"]\n'})
    assert grouped.command == "pip install -e . && pip install --group dev"
    required = plan_of({"requirements.txt": "attrs\n", "requirements-docs.txt": "sphinx\n",
                        "requirements-test.txt": "hypothesis\n"})  # fmt: skip
    assert required.command == (
        "pip install -r requirements-test.txt && pip install -r requirements.txt"
    )
    assert plan_of({"setup.py": "", "setup.cfg": "[options.extras_require]\ntesting = x\n"}
                   ).command == "pip install -e '.[testing]'"  # fmt: skip
    bare = plan_of({"pyproject.toml": build + '[project]\nname = "x"\nversion = "1"\n'})
    assert bare.command == "pip install -e ."  # its own metadata, as its CI has it
    tools = plan_of({"pyproject.toml": "[tool.pytest.ini_options]\naddopts = '-q'\n"})
    assert tools.command == "" and "nothing declared" in tools.source
    assert plan_of({"app.py": ""}).command == ""
    given = plan_of({"requirements.txt": "attrs\n"})
    assert declared.plan(tmp_path / "1", "make deps").command == "make deps"
    assert given.files == ("requirements.txt",)


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
        ws.write([SourceFile(path="reach.py", content=REACH)], "reach")
        online_request = environment.Request(
            store=tmp_path / "environments", project="p1", setup_command=setup, network=True
        )
        with isolation.using(kind, setup_ports=(index_port,)):
            offline = await run_tests(ws, 1, LIMITS, request=request(tmp_path, setup))
            assert offline.setup_failed and "exited 1" in offline.setup and served == []
            assert "no network" in offline.sandbox
            online = await run_tests(ws, 2, LIMITS, request=online_request)
        assert "made in" in online.setup, online.failures
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
