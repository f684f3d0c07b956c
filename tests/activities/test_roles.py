"""Role work that is real: a git workspace per build, real pytest runs with limits, static
checks and a diff review, releases with a smoke check. Activities run in ActivityEnvironment
against real git and real subprocesses, with the offline model through the openai SDK."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from temporalio.testing import ActivityEnvironment

from activities.delivery.targets import LocalReleases
from activities.model.llm import ModelClient
from activities.repository.workspace import UnsafePath, Workspace
from activities.roles import RoleActivities
from activities.sandbox.runs import Limits
from activities.testing.testrun import run_tests
from core.build_io import Simulation
from core.mirror import RoleCall
from core.releases import Released, RestoreTask, SmokeFailed
from core.role_io import DiscoveryOutput, PlanOutput, RoleContext, SourceFile
from core.settings import Settings
from core.states import BuildState, Role

S = BuildState


@pytest.fixture
def roles(tmp_path: Path) -> RoleActivities:
    settings = Settings(_env_file=None, openai_api_key=None, data_dir=tmp_path)  # type: ignore[call-arg]
    return RoleActivities(ModelClient(settings))


def task(
    state: BuildState,
    role: Role,
    attempt: int = 1,
    *,
    build: str = "b1",
    head: str | None = None,
    base: str | None = None,
    simulate: tuple[Simulation, ...] = (),
    context: RoleContext | None = None,
) -> RoleCall:
    return RoleCall(
        build_id=build,
        project_id="p",
        role=role,
        state=state,
        attempt=attempt,
        requirements={"feature": "Dark mode", "priority": "high"},
        simulate=list(simulate),
        head=head,
        base=base,
        context=context or RoleContext(),
    )


async def test_each_role_does_real_work(roles: RoleActivities):
    env = ActivityEnvironment()
    discovery = await env.run(roles.q_assistant, task(S.DISCOVERY, Role.Q_ASSISTANT))
    assert isinstance(discovery.output, DiscoveryOutput)
    plan = await env.run(roles.q_assistant, task(S.PLANNING, Role.Q_ASSISTANT))
    assert isinstance(plan.output, PlanOutput)
    assert plan.output.smoke_command == "python -m dark_mode"

    code = await env.run(roles.code_writer, task(S.IMPLEMENTATION, Role.CODE_WRITER))
    ws = roles.workspace("b1")
    assert [f.path for f in code.output.files] == [
        "dark_mode.py",
        "tests/test_dark_mode.py",
        "CHANGELOG.md",  # none in the workspace: written with the feature's line
    ]
    assert code.output.commit == ws.head() and (ws.repo / "dark_mode.py").exists()
    assert ws.git("log", "-1", "--format=%s").startswith("implementation attempt 1")
    assert "content" not in code.output.model_dump()["files"][0]  # history gets references

    head = code.output.commit
    tested = await env.run(roles.test_auditor, task(S.TESTING, Role.TEST_AUDITOR, head=head))
    report = tested.output
    assert report.passed and report.tests_run == 2 and report.commit == head
    assert report.junit and Path(report.junit).exists() and report.audit is not None
    assert report.audit.requirements_covered

    review = await env.run(
        roles.verification_overseer,
        task(S.VERIFICATION, Role.VERIFICATION_OVERSEER, head=head),
    )
    assert review.output.approved
    assert review.output.checks == {"byte-compile": "ok", "ruff": "ok"}
    assert "3 files changed" in review.output.diff_stat

    assert isinstance(plan.output, PlanOutput)
    plan_ctx = RoleContext(planning=plan.output)
    released = await env.run(
        roles.release_manager,
        task(S.DEPLOYMENT, Role.RELEASE_MANAGER, head=head, context=plan_ctx),
    )
    outcome = released.output
    assert isinstance(outcome, Released) and outcome.version == "0.1.0+b1"
    assert outcome.smoke == "`python -m dark_mode` exited 0"
    releases = roles.settings.releases / "p"
    assert os.readlink(releases / "current") == "0.1.0+b1"
    assert (releases / "current" / "dark_mode.py").read_text() == (
        ws.repo / "dark_mode.py"
    ).read_text()
    assert released.usage.prompt_version == "release_manager/2"


async def test_a_real_bug_is_caught_by_the_real_test_run_and_fixed(roles: RoleActivities):
    env = ActivityEnvironment()
    once = (Simulation.TESTS_FAIL_ONCE,)
    first = await env.run(
        roles.code_writer, task(S.IMPLEMENTATION, Role.CODE_WRITER, simulate=once)
    )
    failing = await env.run(
        roles.test_auditor,
        task(S.TESTING, Role.TEST_AUDITOR, head=first.output.commit, simulate=once),
    )
    assert not failing.output.passed and failing.output.tests_run == 2
    [failure] = failing.output.failures
    assert failure.test.endswith("test_toggle_twice_restores")
    assert "assert True is False" in failure.message

    second = await env.run(
        roles.code_writer,
        task(S.IMPLEMENTATION, Role.CODE_WRITER, 2, head=first.output.commit, simulate=once),
    )
    passing = await env.run(
        roles.test_auditor,
        task(S.TESTING, Role.TEST_AUDITOR, 2, head=second.output.commit, simulate=once),
    )
    assert passing.output.passed
    log = roles.workspace("b1").git("log", "--format=%s")
    assert log.splitlines()[:2] == [
        "implementation attempt 2: Attempt 2: dark_mode.py with toggle support and 2 tests.",
        "implementation attempt 1: Attempt 1: dark_mode.py with toggle support and 2 tests.",
    ]


async def test_a_failed_smoke_check_restores_the_previous_release(roles: RoleActivities):
    env = ActivityEnvironment()
    plan = RoleContext(
        planning=PlanOutput(
            summary="", steps=[], files=[], test_strategy="", smoke_command="python -m dark_mode"
        )
    )

    async def release(build: str, *simulate: Simulation):
        code = await env.run(
            roles.code_writer,
            task(S.IMPLEMENTATION, Role.CODE_WRITER, build=build, simulate=simulate),
        )
        head = code.output.commit
        return await env.run(
            roles.release_manager,
            task(S.DEPLOYMENT, Role.RELEASE_MANAGER, build=build, head=head, context=plan),
        )

    good = await release("b1")
    assert isinstance(good.output, Released)
    bad = await release("b2", Simulation.RELEASE_FAILS)
    assert isinstance(bad.output, SmokeFailed) and bad.output.restored
    assert bad.output.previous == "0.1.0+b1"
    assert "self-check failed" in bad.output.summary and "exited 1" in bad.output.smoke
    current = roles.settings.releases / "p" / "current"
    assert os.readlink(current) == "0.1.0+b1"  # put back automatically
    assert (roles.settings.releases / "p" / "0.1.0+b2").is_dir()  # kept for inspection


async def test_restore_puts_back_the_code_and_undoes_this_builds_release(roles: RoleActivities):
    env = ActivityEnvironment()
    plan = RoleContext(planning=PlanOutput(summary="", steps=[], files=[], test_strategy=""))
    first = await env.run(roles.code_writer, task(S.IMPLEMENTATION, Role.CODE_WRITER, build="a"))
    await env.run(
        roles.release_manager,
        task(S.DEPLOYMENT, Role.RELEASE_MANAGER, build="a", head=first.output.commit, context=plan),
    )
    code = await env.run(roles.code_writer, task(S.IMPLEMENTATION, Role.CODE_WRITER, build="b"))
    ws = roles.workspace("b")
    before_code = ws.git("rev-list", "--max-parents=0", "HEAD")
    shipped = await env.run(
        roles.release_manager,
        task(S.DEPLOYMENT, Role.RELEASE_MANAGER, build="b", head=code.output.commit, context=plan),
    )
    assert os.readlink(roles.settings.releases / "p" / "current") == "0.1.0+b"
    restored = await env.run(
        roles.restore,
        RestoreTask(
            build_id="b",
            project_id="p",
            commit=before_code,
            undo_release=shipped.output.version,
            release_to=shipped.output.previous if isinstance(shipped.output, Released) else None,
        ),
    )
    assert restored.release_restored and restored.release_current == "0.1.0+a"
    assert restored.commit == before_code == ws.head()
    assert not (ws.repo / "dark_mode.py").exists()


def test_paths_outside_the_workspace_are_refused_and_nothing_is_written(tmp_path: Path):
    ws = Workspace(tmp_path / "ws")
    ws.ensure()
    outside = tmp_path / "outside"
    outside.mkdir()
    (ws.repo / "link").symlink_to(outside)
    before = ws.head()
    for bad in ("/etc/passwd", "../escape.py", "a/../../escape.py", "link/escape.py", ".git/x", ""):
        with pytest.raises(UnsafePath):
            ws.write(
                [SourceFile(path="fine.py", content="x = 1\n"), SourceFile(path=bad, content="!")],
                "attempt",
            )
    assert ws.head() == before  # no commit
    assert not (ws.repo / "fine.py").exists()  # all or nothing
    assert list(outside.iterdir()) == [] and not (tmp_path / "escape.py").exists()


def _workspace_with_test(tmp_path: Path, test: str) -> Workspace:
    ws = Workspace(tmp_path / "ws")
    ws.ensure()
    ws.write([SourceFile(path="tests/test_generated.py", content=test)], "generated test")
    return ws


@pytest.mark.slow  # waits for the limit
async def test_a_hanging_generated_test_is_killed_at_the_limit(tmp_path: Path):
    ws = _workspace_with_test(
        tmp_path,
        "import time\n\n\ndef test_quick():\n    pass\n\n\n"
        "def test_hangs():\n    time.sleep(600)\n",
    )
    started = time.monotonic()
    report = await run_tests(ws, 1, Limits(wall_seconds=3, memory_mb=1024))
    assert time.monotonic() - started < 15
    assert report.timed_out and not report.passed
    assert report.failures[0].test == "(test run)"
    assert "killed at the 3s time limit" in report.failures[0].message


async def test_generated_tests_see_no_secrets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    for name in ("OPENAI_API_KEY", "API_KEY", "DATABASE_URL", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, "s3cret")
    ws = _workspace_with_test(
        tmp_path,
        "import os\n\n\ndef test_no_secrets():\n"
        "    leaked = {k for k in os.environ if 'KEY' in k or 'URL' in k or 'SECRET' in k}\n"
        "    assert leaked == set()\n"
        "    assert os.environ.get('OPENAI_API_KEY') is None\n",
    )
    report = await run_tests(ws, 1, Limits(wall_seconds=60, memory_mb=1024))
    assert report.passed, report.failures
    assert report.tests_run == 1


async def test_generated_tests_run_without_the_environments_pytest_plugins(tmp_path: Path):
    installed = {"asyncio", "anyio", "timeout", "hypothesispytest", "schemathesis"}
    ws = _workspace_with_test(
        tmp_path,
        "def test_alone(request):\n"
        "    names = {n for n, _ in request.config.pluginmanager.list_name_plugin()}\n"
        f"    assert not names & {installed!r}, names\n",
    )
    report = await run_tests(ws, 1, Limits(wall_seconds=60, memory_mb=1024))
    assert report.passed, report.failures


async def test_a_memory_hog_is_stopped_by_the_limit(tmp_path: Path):
    ws = _workspace_with_test(
        tmp_path, "def test_hog():\n    block = bytearray(2 * 1024**3)\n    assert block\n"
    )
    report = await run_tests(ws, 1, Limits(wall_seconds=60, memory_mb=512))
    assert not report.passed
    assert "out of memory at its limit of 512 MB (TEST_MEMORY_MB" in report.failures[0].message


def test_local_releases_switch_current_atomically_and_restore(tmp_path: Path):
    releases = LocalReleases(tmp_path / "releases")
    files = tmp_path / "files"
    files.mkdir()
    (files / "m.py").write_text("x = 1\n")
    first = releases.release("p", "1", files)
    second = releases.release("p", "2", files)
    assert (first.previous, second.previous) == (None, "1")
    assert releases.current("p") == "2"
    assert releases.restore("p", second.previous) == "1"
    assert releases.restore("p", None) is None
    assert not (tmp_path / "releases" / "p" / "current").exists()
