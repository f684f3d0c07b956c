"""The worker never follows a path that generated code or a repository could have planted
(activities/paths.py): hostile repositories, tests and Code Writer answers, end to end through
the real role activities (edits written, tests run in the sandbox, static checks, release with
its smoke check), under bubblewrap and under landlock. Each class is also shown to get out
with the path helper swapped for a naive one that follows links (`naive_paths`), which is what
the worker did without the fix."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx2
import pytest
from pydantic import BaseModel
from sqlalchemy import Engine
from temporalio.client import Client
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities import paths
from activities.delivery import targets as release_module
from activities.model import offline
from activities.model.llm import ModelClient
from activities.repository.gitcmd import git
from activities.repository.workspace import Workspace
from activities.roles import RoleActivities
from activities.sandbox import isolation, landlock
from activities.sandbox import runs as sandbox_module
from activities.sandbox.policy import Policy
from client.projects import put_project
from core.events import EventType
from core.feedback import ModelUsage
from core.mirror import RoleCall
from core.projects import ProjectConfig
from core.releases import Released, SmokeFailed
from core.role_io import FileEdit, ImplementationOutput, OpenTask, RoleTask, SourceFile
from core.settings import Settings
from core.states import BuildState, Role
from tests.git_projects import APP, APP_TEST, make_project, tags_of, tree_of
from tests.helpers import fields, make_request, model_client_with, running_worker, start
from workflows.build import BuildWorkflow

T = TypeVar("T", bound=BaseModel)
SANDBOXES = ["bubblewrap", "landlock"]


class ScriptedCodeWriter(ModelClient):
    """The offline model for every role but the Code Writer, whose answers are scripted: what
    a model steered by a hostile request could answer."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.scripted: list[ImplementationOutput] = []
        self.asked = 0

    async def structured(self, task: RoleTask, schema: type[T]) -> tuple[T, ModelUsage]:
        if schema is ImplementationOutput:
            self.asked += 1
            usage = ModelUsage(model="scripted", prompt_version="code_writer/test", requests=1)
            return self.scripted.pop(0), usage  # type: ignore[return-value]
        return await super().structured(task, schema)


class Build:
    """One build of a hostile project, its roles run as the workflow would run them."""

    def __init__(self, root: Path, files: dict[str, str], links: dict[str, str]) -> None:
        self.root = root
        remote = make_project(
            root, {"app.py": APP, "tests/test_app.py": APP_TEST, **files}, links=links
        )
        settings = Settings(_env_file=None, openai_api_key=None, data_dir=root / "data")  # type: ignore[call-arg]
        self.model = ScriptedCodeWriter(settings)
        self.roles = RoleActivities(self.model)
        self.project = ProjectConfig(repository=str(remote), smoke_command="python -c pass")
        self.env = ActivityEnvironment()
        self.base = ""
        self.attempt = 0

    @property
    def ws(self) -> Any:
        return self.roles.workspace("b1", self.project)

    async def open(self) -> None:
        opened = await self.env.run(
            self.roles.open_workspace, OpenTask(build_id="b1", project_id="p", project=self.project)
        )
        self.base = opened.base

    def task(self, state: BuildState, role: Role, head: str | None) -> RoleCall:
        return RoleCall(
            build_id="b1", project_id="p", role=role, state=state, attempt=self.attempt,
            requirements={"feature": "hostile"}, head=head, base=self.base, project=self.project,
        )  # fmt: skip

    async def write(self, answer: ImplementationOutput, head: str | None = None) -> str:
        self.attempt += 1
        self.model.scripted.append(answer)
        task = self.task(BuildState.IMPLEMENTATION, Role.CODE_WRITER, head or self.base)
        done = await self.env.run(self.roles.code_writer, task)
        return done.output.commit

    async def test(self, head: str) -> Any:
        return (
            await self.env.run(
                self.roles.test_auditor, self.task(BuildState.TESTING, Role.TEST_AUDITOR, head)
            )
        ).output

    async def review(self, head: str) -> Any:
        task = self.task(BuildState.VERIFICATION, Role.VERIFICATION_OVERSEER, head)
        return (await self.env.run(self.roles.verification_overseer, task)).output

    async def release(self, head: str) -> Any:
        task = self.task(BuildState.DEPLOYMENT, Role.RELEASE_MANAGER, head)
        return (await self.env.run(self.roles.release_manager, task)).output


def answer(files: dict[str, str], edits: list[FileEdit] | None = None) -> ImplementationOutput:
    return ImplementationOutput(
        summary="hostile",
        files=[SourceFile(path=p, content=c) for p, c in files.items()],
        edits=edits or [],
    )


@pytest.fixture(params=SANDBOXES)
def sandbox(request: pytest.FixtureRequest) -> Iterator[str]:
    with isolation.using(request.param):
        yield request.param


def _naive_read(root: Path, name: str, limit: int | None = None) -> bytes | None:
    target = root / name
    return target.read_bytes()[:limit] if target.is_file() else None


def _naive_write(root: Path, name: str, data: bytes) -> None:
    target = root / name
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)


@pytest.fixture
def naive_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    """The path helper taken out: names checked as before (no `..`, no leading `.git`), then
    opened as plain paths that follow every link."""

    def check(name: str) -> tuple[str, ...]:
        parts = tuple(p for p in name.split("/") if p)
        if ".." in parts or not parts or parts[0] == ".git" or name.startswith("/"):
            raise paths.PathRefused(name)
        return parts

    monkeypatch.setattr(paths, "check_name", check)
    monkeypatch.setattr(paths, "read_beneath", _naive_read)
    monkeypatch.setattr(paths, "write_beneath", _naive_write)
    monkeypatch.setattr(paths, "exists_beneath", lambda root, name: (root / name).exists())
    monkeypatch.setattr(
        paths, "unlink_beneath", lambda root, name: (root / name).unlink(missing_ok=True)
    )


FSMONITOR = "[core]\n\tfsmonitor = touch {marker}\n"
NESTED = """import os
from pathlib import Path


def test_leaves_a_nested_repository_with_a_link_into_git():
    nested = Path(__file__).parent / "nested"
    for folder in ("objects", "refs/heads"):  # a repository to git, as git init makes it
        (nested / ".git" / folder).mkdir(parents=True, exist_ok=True)
    (nested / ".git" / "HEAD").write_text("ref: refs/heads/main")
    if not (nested / "settings.cfg").exists():  # a later attempt may have written it
        os.symlink("../../.git/config", nested / "settings.cfg")
"""


async def test_a_committed_link_to_git_is_not_written_through(tmp_path: Path, sandbox: str):
    build = Build(tmp_path, {}, {"docs": ".git"})
    await build.open()
    marker = tmp_path / "fsmonitor-ran"
    config = (build.ws.repo / ".git" / "config").read_text()
    hostile = answer({"docs/config": FSMONITOR.format(marker=marker)})
    with pytest.raises(ApplicationError) as refused:
        await build.write(hostile)
    assert refused.value.type == "UnsafePath" and refused.value.non_retryable
    assert "symbolic link" in str(refused.value)
    assert (build.ws.repo / ".git" / "config").read_text() == config
    assert not marker.exists()


async def test_the_same_link_gets_through_with_the_fix_taken_out(tmp_path: Path, naive_paths: None):
    with isolation.using("bubblewrap"):
        build = Build(tmp_path, {}, {"docs": ".git"})
        await build.open()
        with contextlib.suppress(Exception):  # the push fails: its remote was written over
            await build.write(answer({"docs/config": FSMONITOR.format(marker=tmp_path / "m")}))
    assert "fsmonitor" in (build.ws.repo / ".git" / "config").read_text()


async def test_a_nested_repository_left_by_a_test_is_cleaned_before_the_next_edit(
    tmp_path: Path, sandbox: str
):
    build = Build(tmp_path, {}, {})
    await build.open()
    head = await build.write(answer({"tests/test_nested.py": NESTED}))
    report = await build.test(head)
    assert "test_leaves_a_nested_repository_with_a_link_into_git" not in str(report.failures)
    config = (build.ws.repo / ".git" / "config").read_text()
    # The next attempt writes the file the test left as a link to the workspace's .git/config.
    await build.write(answer({"tests/nested/settings.cfg": FSMONITOR.format(marker="x")}), head)
    assert (build.ws.repo / ".git" / "config").read_text() == config
    assert not (build.ws.repo / "tests" / "nested" / ".git").exists()


@pytest.fixture
def keeps_nested_repositories(monkeypatch: pytest.MonkeyPatch) -> None:
    """`git clean -fdx` for `-ffdx`: nested repositories are kept, as before."""
    real = Workspace.git

    def clean_once(self: Workspace, *args: str, repo: Path | None = None) -> str:
        return real(self, *("-fdx" if a == "-ffdx" else a for a in args), repo=repo)

    monkeypatch.setattr(Workspace, "git", clean_once)


async def test_the_nested_repository_gets_through_with_both_fixes_taken_out(
    tmp_path: Path, naive_paths: None, keeps_nested_repositories: None
):
    marker = tmp_path / "fsmonitor-ran"
    with isolation.using("bubblewrap"):
        build = Build(tmp_path, {}, {})
        await build.open()
        head = await build.write(answer({"tests/test_nested.py": NESTED}))
        await build.test(head)
        hostile = answer({"tests/nested/settings.cfg": FSMONITOR.format(marker=marker)})
        with contextlib.suppress(Exception):  # git fails on what was written over its config
            await build.write(hostile, head)
    assert "fsmonitor" in (build.ws.repo / ".git" / "config").read_text()


async def test_a_committed_link_to_the_root_opens_no_writes_outside(tmp_path: Path, sandbox: str):
    outside = Path("/var/tmp") / f"qao-shared-{uuid.uuid4().hex[:8]}"
    escape = (
        "from pathlib import Path\n\n\n"
        "def test_writes_through_shared():\n"
        f"    Path('shared{outside}').write_text('escaped')\n"
    )
    build = Build(tmp_path, {}, {"shared": "/"})
    # (pytest's own collection would walk the whole file system through the link)
    build.project = build.project.model_copy(update={"test_command": "python -m pytest tests"})
    await build.open()
    head = await build.write(answer({"tests/test_shared.py": escape}))
    try:
        report = await build.test(head)
        assert not outside.exists()
        assert any("test_writes_through_shared" in f.test for f in report.failures), report
    finally:
        outside.unlink(missing_ok=True)


PLANT = """import os
from pathlib import Path

HERE = Path(__file__).resolve().parent
VICTIM = {victim!r}
VICTIM_DIR = {victim_dir!r}


def test_plants_links_for_what_the_worker_writes_after_it():
    repo = HERE.parent
    names = []
    for n in range(1, 6):  # this attempt's files and their numbered siblings
        names += [f"runs/pytest-testing-{{n}}.log", f"runs/junit-testing-{{n}}.xml",
                  f"runs/release-{{n}}"]
    names += ["runs/pytest.ini", "runs/pycache", "runs/home", "env/.qao-setup", ".env.setup-done",
              "staging"]
    for name in names:
        target = VICTIM_DIR if "release" in name or name == "staging" else VICTIM
        try:
            os.symlink(target, repo.parent / name)
        except OSError:
            pass


def test_the_feature_works():
    assert True
"""
LINK_REPORT = """

def test_links_its_report_to_a_file_of_the_workers():
    import sys

    # Where the run may write: its own report, which the worker reads after it.
    for arg in sys.argv:
        if arg.startswith("--junitxml="):
            os.symlink({secret!r}, arg.split("=", 1)[1])
"""


SECRET_REPORT = (
    '<testsuite><testcase classname="leak" name="it">'
    '<failure message="sk-planted-secret"/></testcase></testsuite>'
)


def victims(root: Path) -> Path:
    """A file of the worker's that a planted link points at (a `.pth` file in a site-packages
    folder: written, it runs code in every Python start), in a folder links also point at."""
    victim = root / "site-packages" / "victim.pth"
    victim.parent.mkdir()
    victim.write_text("kept\n")
    return victim


async def planted(tmp_path: Path) -> tuple[Path, Any]:
    """A build whose test plants links for every file the worker writes after a run, and
    links its own report to a file of the worker's; its victim and the last test report."""
    victim = victims(tmp_path)
    secret = tmp_path / "secret.xml"
    secret.write_text(SECRET_REPORT)
    build = Build(tmp_path, {}, {})
    await build.open()
    plant = PLANT.format(victim=str(victim), victim_dir=str(victim.parent))
    plant += LINK_REPORT.format(secret=str(secret))
    head = await build.write(answer({"tests/test_plant.py": plant}))
    for _ in range(2):  # the run, then the worker's writes after a second run and the checks
        report = await build.test(head)
        await build.review(head)
    assert not any(p.is_symlink() for p in build.ws.runs.rglob("*"))
    return victim, report


async def test_links_planted_for_the_files_the_worker_writes_after_a_run_are_not_followed(
    tmp_path: Path, sandbox: str
):
    victim, report = await planted(tmp_path)
    assert victim.read_text() == "kept\n" and os.listdir(victim.parent) == ["victim.pth"]
    assert "sk-planted-secret" not in report.model_dump_json()


async def test_the_planted_report_leaks_with_the_fix_taken_out(tmp_path: Path, naive_paths: None):
    with isolation.using("bubblewrap"):
        _, report = await planted(tmp_path)
    assert "sk-planted-secret" in report.model_dump_json()


SMOKE_REWRITES = "from pathlib import Path\n\nPath('app.py').write_text('print(1/0)\\n')\n"


async def test_the_smoke_check_cannot_rewrite_the_release(tmp_path: Path, sandbox: str):
    build = Build(tmp_path, {}, {})
    build.project = build.project.model_copy(update={"smoke_command": "python smoke.py"})
    await build.open()
    head = await build.write(answer({"smoke.py": SMOKE_REWRITES}))
    assert (await build.test(head)).passed
    assert (await build.review(head)).approved
    outcome = await build.release(head)
    assert isinstance(outcome, SmokeFailed) and "smoke check failed" in outcome.summary
    current = build.roles.settings.releases / "p" / "current"
    assert not current.exists()
    assert git(tmp_path / "remote.git", "tag", "--list") == ""


@pytest.fixture
def release_smoke_writable(monkeypatch: pytest.MonkeyPatch) -> None:
    """The smoke check run with its folder writable, as before."""
    real = sandbox_module.run_limited

    async def writable(*args: Any, **kwargs: Any) -> Any:
        return await real(*args, **{**kwargs, "write_cwd": True})

    monkeypatch.setattr(release_module, "run_limited", writable)


async def test_the_smoke_check_releases_what_it_rewrote_with_the_fix_taken_out(
    tmp_path: Path, release_smoke_writable: None
):
    with isolation.using("bubblewrap"):
        build = Build(tmp_path, {}, {})
        build.project = build.project.model_copy(update={"smoke_command": "python smoke.py"})
        await build.open()
        head = await build.write(answer({"smoke.py": SMOKE_REWRITES}))
        outcome = await build.release(head)
    assert isinstance(outcome, Released)
    current = build.roles.settings.releases / "p" / "current"
    assert (current / "app.py").read_text() == "print(1/0)\n"


@pytest.mark.parametrize("predictable", [False, True])
async def test_a_release_is_staged_where_no_link_can_wait(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, predictable: bool
):
    """A link waits where the release is staged, at every name a staging folder could have.
    The staging is a new folder (`paths.fresh`, a name nobody could choose beforehand), so the
    link is never entered; `predictable` takes that out (a fixed name, made if missing), and
    the release's files are extracted into the folder the link points at."""
    victim = victims(tmp_path)
    if predictable:

        def fixed(parent: Path, prefix: str) -> Path:
            folder = parent / f"{prefix}1"
            if not folder.is_symlink():
                folder.mkdir(parents=True, exist_ok=True)
            return folder

        monkeypatch.setattr(paths, "fresh", fixed)
    with isolation.using("bubblewrap"):
        build = Build(tmp_path, {}, {})
        await build.open()
        head = await build.write(answer({"feature.py": "ON = True\n"}))
        (build.ws.root / "staging").mkdir(exist_ok=True)
        (build.ws.root / "staging" / "export-1").symlink_to(victim.parent)
        with contextlib.suppress(Exception):  # the link's removal, after, may fail
            await build.release(head)
    assert ("feature.py" in os.listdir(victim.parent)) == predictable
    assert victim.read_text() == "kept\n"


@pytest.mark.parametrize(
    "name",
    [".GIT/config", ".git./config", "\u200d.git/config", "sub/.git/config", ".git /hooks/x",
     "a\x00b.py", "x" * 300 + ".py", "tests", "app.py/inner.py", "../outside.py"],
)  # fmt: skip
async def test_an_edit_path_the_worker_refuses_is_told_to_the_code_writer_not_retried(
    tmp_path: Path, name: str
):
    with isolation.using("bubblewrap"):
        build = Build(tmp_path, {}, {})
        await build.open()
        with pytest.raises(ApplicationError) as refused:
            await build.write(answer({name: "x = 1\n"}))
    assert refused.value.type == "UnsafePath" and refused.value.non_retryable
    assert build.model.asked == 1  # one paid call, no re-ask
    assert build.ws.git("status", "--porcelain") == ""  # nothing written


def test_a_plan_naming_git_reads_nothing_of_it_into_a_prompt(tmp_path: Path) -> None:
    from activities.repository import repomap

    repo = tmp_path / "repo"
    git(None, "init", "-q", str(repo))
    (repo / "docs").symlink_to(".git")
    (repo / "app.py").write_text("X = 1\n")
    shown, _ = repomap.file_texts(repo, {".git/config", "docs/config", "app.py"}, 10_000)
    assert shown == {"app.py": "X = 1\n"}


@pytest.mark.parametrize("followed", [False, True])
def test_a_write_rule_is_never_opened_through_a_link(tmp_path: Path, followed: bool) -> None:
    """confine.py (landlock) given a write rule on a repository's `shared -> /`: refused as a
    link; `followed` takes the fix out (the rule opened on the link's target, as before)."""
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "shared").symlink_to("/")
    outside = Path("/var/tmp") / f"qao-rule-{uuid.uuid4().hex[:8]}"
    policy = Policy(cwd=repo, readonly=isolation.interpreter_paths())
    rules = landlock.rules(policy, isolation.writable_entries(repo))
    assert rules.write == ()  # the link is no entry to write
    shared = os.path.realpath(repo / "shared") if followed else str(repo / "shared")
    rules = dataclasses.replace(rules, write=(shared,))
    write = f"open({str(outside)!r}, 'w').write('escaped')"
    argv = landlock.argv(isolation.host_of(repo), rules, [sys.executable, "-c", write])
    try:
        done = subprocess.run(argv, cwd=repo, capture_output=True, text=True, timeout=30)
        assert outside.exists() == followed, done.stderr
    finally:
        outside.unlink(missing_ok=True)


SHARED = """from pathlib import Path


def test_writes_through_the_committed_link_to_the_root():
    try:
        Path({target!r}).write_text("escaped")
    except OSError:
        pass
"""


def hostile_code_writer(extras: list[dict[str, str]]) -> tuple[Any, list[int]]:
    """The offline model, whose Code Writer adds `extras[n]` to its n-th answer: the feature
    works and its tests pass, so the build goes on to review and delivery with them."""
    calls: list[int] = []

    async def model(request: httpx2.Request) -> httpx2.Response:
        body = json.loads(request.content)
        answer = await offline.handle(request)
        if body["response_format"]["json_schema"]["name"] != "ImplementationOutput":
            return answer
        calls.append(1)
        out = json.loads(await offline.content_of(request))
        extra = extras[len(calls) - 1] if len(calls) <= len(extras) else {}
        out["files"] += [{"path": path, "content": text} for path, text in extra.items()]
        return offline.respond(body, json.dumps(out))

    return model, calls


async def test_a_hostile_build_is_delivered_and_nothing_it_planted_is_followed(
    tmp_path: Path, sandbox: str, client: Client, settings: Settings, engine: Engine
):
    """A whole build through delivery: a repository that commits `docs -> .git` and
    `shared -> /`, and a Code Writer whose answers (1) write `docs/config` with an fsmonitor,
    (2) add tests that pass while they plant links for every file the worker writes after a
    run, leave a nested repository with a link to `.git/config` and write through `shared`,
    then, after the review asks for changes, (3) write the nested repository's link. The
    build is released and tagged; no link was followed and nothing was written outside."""
    marker = tmp_path / "fsmonitor-ran"
    victim = victims(tmp_path)
    outside = Path("/var/tmp") / f"qao-shared-{uuid.uuid4().hex[:8]}"
    fsmonitor = FSMONITOR.format(marker=marker)
    model, calls = hostile_code_writer(
        [
            {"docs/config": fsmonitor},
            {
                "tests/test_plant.py": PLANT.format(
                    victim=str(victim), victim_dir=str(victim.parent)
                ),
                "tests/test_nested.py": NESTED,
                "tests/test_shared.py": SHARED.format(target=f"shared{outside}"),
            },
            {"tests/nested/settings.cfg": fsmonitor},
        ]
    )
    remote = make_project(
        tmp_path / "project", {"app.py": APP, "tests/test_app.py": APP_TEST},
        links={"docs": ".git", "shared": "/"},
    )  # fmt: skip
    project = f"p-{uuid.uuid4().hex[:8]}"
    config = ProjectConfig(repository=str(remote), test_command="python -m pytest tests")
    try:
        async with running_worker(client, settings, engine, model_client_with(settings, model)):
            await put_project(client, settings, project, config)
            request = make_request(project=project, simulate=["verification_rejects_once"])
            handle = await start(client, settings, request)
            result = await handle.result()
            events = await handle.query(BuildWorkflow.event_log, 0)
    finally:
        escaped = outside.exists()
        outside.unlink(missing_ok=True)
    assert result.state is BuildState.COMPLETE, result
    reasons = [fields(e)["reason"] for e in events if e.event_type is EventType.LOOP_BACK]
    assert reasons == ["unsafe file paths", "verification requested changes"]
    assert len(calls) == 3 and tags_of(remote) == ["v0.1.0"]
    ws = settings.workspaces / result.build_id
    assert "fsmonitor" not in (ws / "repo" / ".git" / "config").read_text()
    assert not marker.exists() and not escaped
    assert victim.read_text() == "kept\n" and os.listdir(victim.parent) == ["victim.pth"]
    links = {str(p.relative_to(ws)) for p in ws.rglob("*") if p.is_symlink()}
    assert links == {"repo/docs", "repo/shared"}, links  # the repository's own, no other
    delivered = tree_of(remote)
    assert {"tests/test_plant.py", "tests/nested/settings.cfg"} <= delivered
    assert "docs/config" not in delivered and "tests/nested/.git/HEAD" not in delivered
