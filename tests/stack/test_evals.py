"""Evaluation suites (core/eval_suites.py): the shipped offline suite run as one EvalWorkflow with a
child build per case and config, through a real worker, the offline model and real git
repositories; hidden tests that no role sees; suite files refused in words."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

import pytest
from rich.console import Console
from sqlalchemy import Engine
from sqlmodel import Session
from temporalio.client import Client, WorkflowFailureError
from temporalio.service import RPCError

from activities.evals import checkout
from activities.paths import PathRefused
from activities.repository.gitcmd import git
from cli.evals import follow_eval, tables
from client.evals import SuiteError, eval_run, load_config, load_suite, start_eval
from core.eval_build import HiddenTests
from core.eval_suites import CaseResult, EvalReport, report
from core.projects import ProjectConfig
from core.role_io import AcceptanceTask
from core.settings import Settings
from db import crud
from db.scores import score_of
from tests.fake_openai import FakeOpenAI
from tests.helpers import EVAL_HISTORIES, ROOT, running_worker, save_history

SUITE = ROOT / "evals" / "offline.yaml"
CONFIGS = [
    ROOT / "evals" / "configs" / "baseline.yaml",
    ROOT / "evals" / "configs" / "flaky-coder.yaml",
]
HIDDEN = [
    (ROOT / "evals" / "hidden" / name).read_text()
    for name in ("test_dark_mode.py", "test_audit_log.py")
]
# A line of each hidden test that no prompt, answer or workspace may hold.
MARKERS = ["test_toggle_switches_and_says_so", "test_reset_turns_it_off"]


async def run_suite(client: Client, settings: Settings, configs: list[Path]) -> EvalReport:
    run = eval_run(settings, SUITE, configs)
    handle = await start_eval(client, settings, run)
    got = await follow_eval(handle, quiet=True)
    await save_history(handle, "offline_suite_table_from_children", folder=EVAL_HISTORIES)
    child = client.get_workflow_handle(f"build-{got.results[-1].build_id}")
    await save_history(child, "evaluation_case")
    return got


@pytest.mark.timeout(120)
async def test_the_offline_suite_ends_in_a_table_per_config_and_a_winner_per_case(
    client: Client, worker: Settings
) -> None:
    got = await run_suite(client, worker, CONFIGS)

    rows = {row.config: row for row in got.configs}
    assert set(rows) == {"baseline", "flaky-coder"}
    # dark-mode passes its hidden tests under both; audit-log's hidden test of reset() fails.
    assert (rows["baseline"].passed, rows["baseline"].cases) == (1, 2)
    assert (rows["flaky-coder"].passed, rows["flaky-coder"].cases) == (1, 2)
    assert rows["baseline"].loop_backs == 0 and rows["flaky-coder"].loop_backs == 2
    assert rows["flaky-coder"].tokens > rows["baseline"].tokens > 0
    assert got.winners == {"dark-mode": "baseline", "audit-log": None}
    results = {(r.case, r.config): r for r in got.results}
    for config in rows:
        dark, audit = results["dark-mode", config], results["audit-log", config]
        assert dark.outcome == audit.outcome == "complete"
        assert dark.acceptance is not None and dark.acceptance.passed
        assert (dark.acceptance.tests_run, dark.acceptance.failed) == (2, 0)
        assert audit.acceptance is not None and not audit.acceptance.passed
        assert (audit.acceptance.tests_run, audit.acceptance.failed) == (2, 1)
        assert "test_reset_turns_it_off" in audit.acceptance.summary
        assert audit.reason and audit.reason.startswith("hidden tests: ")
        assert dark.reason is None and dark.acceptance.commit and dark.wall_seconds
    # The table a person reads says the same, each build with how it ended and why.
    shown = Console(width=200, record=True)
    for table in tables(got, lambda wf: f"http://ui/{wf}"):
        shown.print(table)
    rendered = shown.export_text()
    assert got.run_id in rendered and "test_reset_turns_it_off" in rendered
    assert all(r.build_id in rendered for r in got.results)
    # The API answers the run, and its page draws it without reaching anywhere else.
    import httpx

    from api.main import create_app

    app = create_app(worker)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as http,
    ):
        view = (await http.get(f"/api/evals/{got.run_id}")).json()
        page = await http.get(f"/api/evals/{got.run_id}/report")
        missing = await http.get("/api/evals/nosuch1")
    assert view["state"] == "completed" and EvalReport.model_validate(view["report"]) == got
    assert page.status_code == 200 and "<svg" in page.text and "<script" not in page.text
    assert all(r.build_id in page.text for r in got.results) and "hidden tests: " in page.text
    assert missing.status_code == 404 and missing.json()["detail"] == "no evaluation run nosuch1"


@pytest.mark.timeout(120)
async def test_hidden_tests_reach_no_prompt_and_no_workspace_a_role_touches(
    client: Client, online: Settings, fake: FakeOpenAI, engine: Engine
) -> None:
    async with running_worker(client, online, engine):
        got = await run_suite(client, online, [CONFIGS[0]])
    assert [r.acceptance is not None for r in got.results] == [True, True]
    assert fake.count() >= 2 * 6  # every role of both builds asked the server
    asked = json.dumps([seen.body for seen in fake.requests])
    assert "reset() turns it off" in asked  # the requirements reach the roles; the tests never
    for marker in MARKERS:
        assert marker not in asked
    # Nothing of them in the builds' workspaces, nor in any commit of the project's repository.
    for result in got.results:
        workspace = online.workspaces / result.build_id
        assert workspace.is_dir()
        for path in workspace.rglob("*"):
            if path.is_file() and not path.is_symlink():
                data = path.read_bytes()
                assert not any(m.encode() in data for m in MARKERS), path
    _, [case, _], _ = load_suite(SUITE, online)
    history = git(Path(case.repository), "log", "--all", "-p")
    assert "audit_log.py" in history  # the builds' commits are there
    assert not any(m in history for m in MARKERS)
    # The project's branch did not move and nothing was tagged: delivered to build branches.
    assert git(Path(case.repository), "rev-parse", case.branch) == case.base
    assert git(Path(case.repository), "tag") == ""


def test_a_plain_folder_is_the_same_commit_wherever_it_is_made(
    settings: Settings, tmp_path: Path
) -> None:
    first = load_suite(SUITE, settings)[1][0]
    other = settings.model_copy(update={"data_dir": tmp_path / "elsewhere"})
    again = load_suite(SUITE, other)[1][0]
    assert first.repository != again.repository and first.base == again.base


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("cases: []", "`cases` lists the suite's cases"),
        ("cases: [{id: a, requirements: x}]", "`repository` is missing"),
        ("cases: [{id: a, repository: nowhere, requirements: x}]", "is not a folder"),
        ("cases: [{id: a, repository: ../examples/inventory, base: nope, requirements: x}]",
         "'nope' is not a commit"),
        ("cases: [{id: A!, repository: ../examples/inventory, requirements: x}]", "id"),
        ("cases: [{id: a, repository: ../examples/inventory, requirements: x, hidden_tests: "
         "{files: {../escape.py: hidden/test_dark_mode.py}}}]", "relative, in the repository"),
        ("cases: [{id: a, repository: ../examples/inventory, requirements: x, hidden_tests: "
         "{files: {t.py: hidden/missing.py}}}]", "cannot read"),
        ("cases: [{id: a, repository: ../examples/inventory, requirements: '  '}]", "empty"),
    ],
)  # fmt: skip
def test_a_suite_file_that_cannot_be_used_is_refused_in_words(
    settings: Settings, text: str, said: str
) -> None:
    suite = ROOT / "evals" / f".test-{abs(hash(text))}.yaml"  # beside the real one: same paths
    suite.write_text(text)
    try:
        with pytest.raises(SuiteError, match=None) as refused:
            load_suite(suite, settings)
        assert said in str(refused.value), refused.value
    finally:
        suite.unlink()


def test_a_hostile_suite_file_runs_nothing_and_reads_nothing_outside_its_folder(
    settings: Settings, tmp_path: Path
) -> None:
    """Invariant: nothing a suite or config file names reaches git as an option, and the files
    it names lie in its own folder (client/evals.py). `git ls-remote` reads a repository
    `--upload-pack=CMD` as an option and runs CMD: this suite ran it before the check."""
    marker = tmp_path / "pwned"
    secret = tmp_path / "secret.txt"
    secret.write_text("a key")
    folder = tmp_path / "suite"
    (folder / "hidden").mkdir(parents=True)
    (folder / "hidden" / "test_ok.py").write_text("def test_ok():\n    pass\n")
    (folder / "hidden" / "big.py").write_text("x" * 200_000)
    (folder / "hidden" / "link.py").symlink_to(secret)
    upload = f"--upload-pack=touch {marker};://x"
    cases = {
        "repository": f"[{{id: a, repository: '{upload}', requirements: x}}]",
        "base": f"[{{id: a, repository: {ROOT / 'examples' / 'inventory'}, base: '--output=x', "
        "requirements: x}]",
        "branch": "[{id: a, repository: 'https://example.invalid/r.git', branch: '-x', "
        "requirements: x}]",
        "secret.txt' is outside": "[{id: a, repository: 'https://example.invalid/r.git', base: "
        f"{'a' * 40}, requirements: x, hidden_tests: {{files: {{t.py: ../secret.txt}}}}}}]",
        "outside /": "[{id: a, repository: 'https://example.invalid/r.git', base: "
        f"{'a' * 40}, requirements: x, hidden_tests: {{files: {{t.py: {secret}}}}}}}]",
        "link.py' is outside": "[{id: a, repository: 'https://example.invalid/r.git', base: "
        f"{'a' * 40}, requirements: x, hidden_tests: {{files: {{t.py: hidden/link.py}}}}}}]",
        "larger": "[{id: a, repository: 'https://example.invalid/r.git', base: "
        f"{'a' * 40}, requirements: x, hidden_tests: {{files: {{t.py: hidden/big.py}}}}}}]",
    }
    for said, listed in cases.items():
        suite = folder / "suite.yaml"
        suite.write_text(f"cases: {listed}\n")
        with pytest.raises(SuiteError) as refused:
            load_suite(suite, settings)
        message = str(refused.value)
        assert not marker.exists(), "the suite ran a command"
        assert said in message and "case a" in message and "a key" not in message, message
    config = folder / "config.yaml"
    config.write_text(f"prompts: {{code_writer: {secret}}}\n")
    with pytest.raises(SuiteError, match="outside"):
        load_config(config)


def test_a_case_repository_is_copied_and_never_written(settings: Settings, tmp_path: Path) -> None:
    """Builds push their branches where the run's case lives: a copy of the data folder's,
    never the repository the suite names (a local path or a URL)."""
    original = tmp_path / "project"
    original.mkdir()
    git(original, "init", "-q", "-b", "main")
    (original / "app.py").write_text("x = 1\n")
    git(original, "add", "-A")
    git(original, "commit", "-q", "-m", "one")
    head = git(original, "rev-parse", "HEAD")
    suite = tmp_path / "suite.yaml"
    suite.write_text(f"cases: [{{id: a, repository: {original}, requirements: x}}]\n")
    (case,) = load_suite(suite, settings)[1]
    copy = Path(case.repository)
    assert copy.is_relative_to(settings.data_dir / "evals") and case.base == head
    git(copy, "update-ref", "refs/heads/build/x", head)  # what a child's delivery does
    assert git(original, "for-each-ref", "--format=%(refname)") == "refs/heads/main"
    git(original, "commit", "-q", "--allow-empty", "-m", "two")
    (again,) = load_suite(suite, settings)[1]  # the copy is brought up to date
    assert again.repository == case.repository
    assert again.base == git(original, "rev-parse", "HEAD") != head


def test_a_config_names_roles_models_and_prompt_files(tmp_path: Path) -> None:
    (tmp_path / "terse.md").write_text("Write the least code that works.")
    path = tmp_path / "terse.yaml"
    path.write_text("models: {code_writer: gpt-x}\nprompts: {code_writer: terse.md}\n")
    config = load_config(path)
    assert config.name == "terse"
    call = config.choices.replay(next(r for r in config.choices.models))
    assert call is not None and call.live and call.model == "gpt-x"
    assert call.prompt is not None and call.prompt.version.startswith("terse.md@")
    for bad, said in (("models: {coder: x}", "coder"), ("prompts: {code_writer: none.md}",
                      "cannot read"), ("simulate: [nothing]", "simulate")):  # fmt: skip
        path.write_text(bad)
        with pytest.raises(SuiteError) as refused:
            load_config(path)
        assert said in str(refused.value)


def test_two_configs_of_one_name_are_refused(settings: Settings) -> None:
    with pytest.raises(SuiteError, match="two configs have one name"):
        eval_run(settings, SUITE, [CONFIGS[0], CONFIGS[0]])


async def test_a_run_id_whose_builds_the_mirror_knows_is_refused(
    client: Client, settings: Settings, engine: Engine
) -> None:
    """A run's children take ids made from its run id: a run id used before would give its
    children the ids of builds the mirror and the kept answers already hold."""
    from client.errors import BuildError
    from core.states import BuildState
    from tests.db.test_mirror import _batch

    run = eval_run(settings, SUITE, [CONFIGS[0]])
    child = f"build-{run.run_id}-dark-mode-baseline"
    crud.record_batch(engine, batch=_batch(child, range(1, 3), BuildState.COMPLETE, 2))
    with pytest.raises(BuildError, match=f"run id {run.run_id} was used before"):
        await start_eval(client, settings, run)
    with pytest.raises(RPCError):  # nothing was started
        await client.get_workflow_handle(run.workflow_id).describe()


def test_the_winner_passed_and_spent_least_and_a_tie_has_none() -> None:
    def result(case: str, config: str, passed: bool, tokens: int) -> CaseResult:
        return CaseResult(case=case, config=config, build_id=f"{case}-{config}",
                          outcome="complete", passed=passed, tokens=tokens)  # fmt: skip

    got = report("r", "s", ["a", "b"], [
        result("one", "a", True, 90), result("one", "b", True, 50),
        result("two", "a", True, 10), result("two", "b", False, 5),
        result("three", "a", True, 7), result("three", "b", True, 7),
    ])  # fmt: skip
    assert got.winners == {"one": "b", "two": "a", "three": None}
    assert [(r.config, r.passed, r.pass_rate, r.tokens) for r in got.configs] == [
        ("a", 3, 1.0, 107),
        ("b", 2, 0.6667, 62),
    ]


def test_hidden_test_paths_stay_in_the_repository() -> None:
    for bad in ("/etc/x.py", "../x.py", "tests/../../x.py", ".git/hooks/pre-commit", "a//b.py"):
        with pytest.raises(ValueError, match="relative, in the repository"):
            HiddenTests(files={bad: "x"})
    assert HiddenTests(files={"tests/test_h.py": "x"}).command == "python -m pytest -q"


def test_starter_eval_help_says_what_it_does() -> None:
    done = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "python"), "starter.py", "eval", "--help"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert "hidden tests" in done.stdout and "--config" in done.stdout


def test_a_link_the_build_planted_where_a_hidden_test_goes_is_not_written_through(
    tmp_path: Path,
) -> None:
    """The invariant: the worker writes hidden tests only beneath the fresh checkout, through
    no link (activities/paths.write_beneath, in activities/evals.checkout)."""
    outside = tmp_path / "outside"
    outside.mkdir()
    remote = tmp_path / "project"
    remote.mkdir()
    git(remote, "init", "-q", "-b", "main")
    (remote / "tests").symlink_to(outside)  # the build's commit: `tests` is a link out
    git(remote, "add", "-A")
    git(remote, "commit", "-q", "-m", "planted")
    commit = git(remote, "rev-parse", "HEAD")
    git(remote, "update-ref", f"refs/builds/b1/{commit}", commit)
    task = AcceptanceTask(
        build_id="b1",
        project=ProjectConfig(repository=str(remote)),
        commit=commit,
        hidden=HiddenTests(files={"tests/test_hidden.py": "def test_x():\n    pass\n"}),
    )
    with pytest.raises(PathRefused, match="symbolic link"):
        checkout(task, commit, tmp_path / "acceptance")
    assert list(outside.iterdir()) == []
    # Without the rule, a plain write follows the link out of the checkout.
    (tmp_path / "acceptance" / "repo" / "tests" / "test_hidden.py").write_text("x")
    assert [p.name for p in outside.iterdir()] == ["test_hidden.py"]


FORGER = """import pytest


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    outcome.get_result().outcome = "passed"
"""
HIDDEN_ANSWER = "from app import answer\n\n\ndef test_answer():\n    assert answer() == 42\n"


def delivered(remote: Path, build: str, files: dict[str, str]) -> tuple[str, str]:
    """A project whose base answers 41, and a build's commit on it with `files`: (base, commit)."""
    remote.mkdir()
    git(remote, "init", "-q", "-b", "main")
    (remote / "app.py").write_text("def answer():\n    return 41\n")
    git(remote, "add", "-A")
    git(remote, "commit", "-q", "-m", "base")
    base = git(remote, "rev-parse", "HEAD")
    for name, text in files.items():
        (remote / name).write_text(text)
    git(remote, "add", "-A")
    git(remote, "commit", "-q", "-m", "the build's")
    commit = git(remote, "rev-parse", "HEAD")
    git(remote, "update-ref", f"refs/builds/{build}/{commit}", commit)
    return base, commit


@pytest.mark.timeout(120)
async def test_a_build_cannot_forge_its_hidden_test_verdict(
    settings: Settings, tmp_path: Path
) -> None:
    """Invariant: the base's test infrastructure and the hidden tests' own cases decide the
    verdict (activities/testing/sealed.py). A conftest.py that turns failures into passes made a
    wrong answer read "1 of 1 passed"; a module that skips whoever imports it made a run of
    nothing read as passed."""
    from temporalio.testing import ActivityEnvironment

    from activities.evals import EvalActivities

    run = EvalActivities(settings, engine=None).run_acceptance  # type: ignore[arg-type]
    hidden = HiddenTests(files={"tests/test_hidden.py": HIDDEN_ANSWER})
    forged = "def answer():\n    return 41\n"
    skipping = "import pytest\n\npytest.skip('not today', allow_module_level=True)\n"
    for build, files, said in (
        ("forger", {"conftest.py": FORGER, "app.py": forged}, "assert 41 == 42"),
        ("skipper", {"app.py": skipping}, "skipped"),
    ):
        base, commit = delivered(tmp_path / build, build, files)
        task = AcceptanceTask(
            build_id=build,
            project=ProjectConfig(repository=str(tmp_path / build)),
            commit=commit,
            hidden=hidden,
            base=base,
        )
        got = await ActivityEnvironment().run(run, task)
        assert not got.passed and said in got.summary, got
        assert got.integrity == (["conftest.py"] if build == "forger" else [])
        if build == "forger":  # with the build's own conftest (base = its commit): forged
            unsealed = task.model_copy(update={"base": commit})
            assert (await ActivityEnvironment().run(run, unsealed)).passed


@pytest.mark.timeout(120)
async def test_a_run_cancelled_while_hidden_tests_run_leaves_its_builds_delivered_and_said(
    client: Client, worker: Settings, engine: Engine, tmp_path: Path
) -> None:
    """A child cancelled after delivery, while its hidden tests run, stays COMPLETE in the
    mirror (it delivered; COMPLETE -> CANCELLED is no transition) and its card says why the
    hidden tests did not run."""
    hidden = tmp_path / "test_slow.py"
    hidden.write_text("def test_slow():\n    import time\n    time.sleep(60)\n")
    suite = tmp_path / "slow.yaml"
    suite.write_text(
        f"cases: [{{id: slow, repository: {ROOT / 'examples' / 'inventory'}, "
        "requirements: {feature: Dark mode}, hidden_tests: {files: {tests/test_hidden_slow.py: "
        "test_slow.py}}}]\n"
    )
    run = eval_run(worker, suite, [CONFIGS[0]])
    handle = await start_eval(client, worker, run)
    child = client.get_workflow_handle(f"build-{run.run_id}-slow-baseline")

    async def testing_hidden() -> bool:
        try:
            described = await child.describe()
        except RPCError:
            return False
        pending = described.raw_description.pending_activities
        return any(a.activity_type.name == "run_acceptance" for a in pending)

    async with asyncio.timeout(90):
        while True:
            if await testing_hidden():
                break
            await asyncio.sleep(0.2)
    await handle.cancel()
    with pytest.raises(WorkflowFailureError):
        await handle.result()
    async with asyncio.timeout(30):
        while True:
            with Session(engine) as session:
                card = score_of(session, workflow_id=child.id)
            if card is not None and card.acceptance is not None:
                break
            await asyncio.sleep(0.2)
    assert card.outcome == "complete"
    assert not card.acceptance.passed and "cancelled" in card.acceptance.summary
