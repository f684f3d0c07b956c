"""Projects are real repositories: registration, builds that start from the project's code and
deliver into it (merge queue semantics: only a tested tree lands), through a real worker."""

from __future__ import annotations

import asyncio
import shutil
import uuid
from pathlib import Path

import pytest
from sqlalchemy import Engine
from sqlmodel import Session
from temporalio.client import Client, WorkflowFailureError, WorkflowHandle

from activities.repository.gitcmd import git
from activities.sandbox import isolation
from client.projects import (
    ProjectNotFound,
    ProjectRefused,
    get_project,
    list_projects,
    put_project,
)
from core import views
from core.build_io import BuildResult
from core.events import EventType
from core.messages import AbortRequest, ApproveRequest
from core.projects import ProjectConfig
from core.settings import Settings
from core.states import BuildState
from db import crud
from tests.git_projects import APP, APP_TEST, make_project, push_change, tags_of, tree_of
from tests.helpers import (
    fields,
    make_request,
    release_of,
    save_history,
    start,
    status_of,
    wait_until,
)
from workflows.build import BuildWorkflow

S = BuildState


def new_id() -> str:
    return f"p{uuid.uuid4().hex[:10]}"


async def registered(client: Client, settings: Settings, tmp_path: Path, **config: str) -> str:
    project = new_id()
    remote = make_project(tmp_path)
    await put_project(client, settings, project, ProjectConfig(repository=str(remote), **config))
    return project


async def waiting_to_release(
    client: Client, worker: Settings, tmp_path: Path
) -> tuple[WorkflowHandle, Path]:
    """A build of a newly registered project, waiting at its release gate; and the remote."""
    project = await registered(client, worker, tmp_path)
    request = make_request(project=project, approval_gates=[S.HANDOFF_TO_RELEASER])
    handle = await start(client, worker, request)
    await wait_until(handle, lambda s: s.waiting_for is not None, seconds=60)
    return handle, tmp_path / "remote.git"


async def finish(handle: object) -> BuildResult:
    async with asyncio.timeout(90):
        result: BuildResult = await handle.result()  # type: ignore[attr-defined]
    return result


async def test_registration_checks_the_repository_and_stores_nothing_it_refuses(
    client: Client, worker: Settings, tmp_path: Path
) -> None:
    remote = make_project(tmp_path)
    project = new_id()
    view = await put_project(client, worker, project, ProjectConfig(repository=str(remote)))
    assert view.head == git(remote, "rev-parse", "main")
    assert (await get_project(client, project)).config.repository == str(remote)
    assert project in {v.project_id for v in await list_projects(client)}

    missing = new_id()
    with pytest.raises(ProjectRefused, match="does not appear to be a git repository"):
        await put_project(
            client, worker, missing, ProjectConfig(repository=str(tmp_path / "nothing.git"))
        )
    with pytest.raises(ProjectNotFound):
        await get_project(client, missing)
    with pytest.raises(ProjectRefused, match="has no branch 'release'"):
        await put_project(
            client, worker, project, ProjectConfig(repository=str(remote), branch="release")
        )
    assert (await get_project(client, project)).config.branch == "main"  # unchanged
    assert missing not in {v.project_id for v in await list_projects(client)}


async def test_a_build_of_an_existing_project_keeps_its_code_and_lands_tagged(
    client: Client, worker: Settings, tmp_path: Path
) -> None:
    project = await registered(client, worker, tmp_path)
    remote = tmp_path / "remote.git"
    base = git(remote, "rev-parse", "main")
    handle = await start(client, worker, make_request(project=project))
    result = await finish(handle)
    assert release_of(result).version == "v0.1.0" and release_of(result).delivery == "merge"
    landed = git(remote, "rev-parse", "main")
    assert release_of(result).commit == landed
    assert git(remote, "merge-base", "--is-ancestor", base, landed) == ""
    assert {"app.py", "tests/test_app.py", "dark_mode.py", "tests/test_dark_mode.py"} <= tree_of(
        remote
    )
    assert tags_of(remote) == ["v0.1.0"]
    assert git(remote, "rev-parse", "v0.1.0^{commit}") == landed
    current = worker.releases / project / "current"
    assert current.resolve().name == "v0.1.0" and (current / "app.py").exists()
    events = await handle.query(BuildWorkflow.event_log)
    opened = [e for e in events if e.event_type is EventType.WORKSPACE_OPENED]
    assert opened and fields(opened[0])["base"] == base
    # The test run's sandbox, in its call's event, the status and the Web UI's details.
    [tested] = [e for e in events if e.event_type is EventType.ROLE_CALL and e.state is S.TESTING]
    assert fields(tested)["sandbox"].startswith(
        isolation.current().kind
    )  # SANDBOX=auto: bubblewrap
    status = await status_of(handle)
    assert status.sandbox == fields(tested)["sandbox"]
    assert f"**Sandbox of the last test run:** {status.sandbox}" in views.current_details(status)
    await save_history(handle, "project_existing_repository")


async def test_greenfield_builds_build_on_each_other(
    client: Client, worker: Settings, tmp_path: Path
) -> None:
    project = new_id()
    first = await finish(await start(client, worker, make_request(project=project)))
    second = await finish(
        await start(client, worker, make_request({"feature": "Audit log"}, project=project))
    )
    view = await get_project(client, project)
    assert view.created_by_system
    remote = Path(view.config.repository)
    assert remote.is_relative_to(worker.projects)
    assert [release_of(first).version, release_of(second).version] == ["v0.1.0", "v0.2.0"]
    assert {"dark_mode.py", "audit_log.py"} <= tree_of(remote)
    assert tags_of(remote) == ["v0.1.0", "v0.2.0"]


async def test_two_builds_released_at_once_both_land_each_tested_on_its_tree(
    client: Client, worker: Settings, tmp_path: Path
) -> None:
    project = await registered(client, worker, tmp_path)
    remote = tmp_path / "remote.git"
    gate = {"approval_gates": [S.HANDOFF_TO_RELEASER]}
    a = await start(client, worker, make_request({"feature": "Dark mode"}, project, **gate))
    b = await start(client, worker, make_request({"feature": "Audit log"}, project, **gate))
    for handle in (a, b):
        await wait_until(handle, lambda s: s.waiting_for is not None, seconds=60)
    await asyncio.gather(
        a.execute_update(BuildWorkflow.update_approve, ApproveRequest()),
        b.execute_update(BuildWorkflow.update_approve, ApproveRequest()),
    )
    # The second in the release queue waits for its turn, merges the first one's release and
    # is tested again before it waits at its gate once more.
    done: list[BuildResult] = []
    async with asyncio.timeout(90):
        while len(done) < 2:
            for handle in (a, b):
                status = await status_of(handle)
                if (status.waiting_for or "").startswith("approval"):
                    await handle.execute_update(BuildWorkflow.update_approve, ApproveRequest())
            done = [await h.result() for h in (a, b) if (await status_of(h)).state is S.COMPLETE]
            await asyncio.sleep(0.1)
    assert sorted(release_of(r).version for r in done) == ["v0.1.0", "v0.2.0"]
    assert {"dark_mode.py", "audit_log.py", "app.py"} <= tree_of(remote)
    assert tags_of(remote) == ["v0.1.0", "v0.2.0"]
    tests = sorted([(await status_of(h)).attempts.get(BuildState.TESTING, 0) for h in (a, b)])
    assert tests == [1, 2]  # the second re-tested the merged tree
    for tag in ("v0.1.0", "v0.2.0"):  # each tag is a commit a build tested
        tested = {release_of(r).commit for r in done}
        assert git(remote, "rev-parse", f"{tag}^{{commit}}") in tested
    queued = {}
    for handle in (a, b):
        events = await handle.query(BuildWorkflow.event_log)
        [joined] = [fields(e) for e in events if e.event_type is EventType.RELEASE_QUEUED]
        queued[handle.id] = joined["ahead"]
    assert sorted(len(ahead) for ahead in queued.values()) == [0, 1]  # one waited behind one
    assert (await get_project(client, project)).release_queue == []  # both left it


async def test_a_clean_but_moved_base_is_tested_again_before_it_lands(
    client: Client, worker: Settings, tmp_path: Path
) -> None:
    handle, remote = await waiting_to_release(client, worker, tmp_path)
    theirs = push_change(remote, {"docs.md": "# Docs\n"}, "docs, pushed meanwhile")
    await handle.execute_update(BuildWorkflow.update_approve, ApproveRequest())
    status = await wait_until(
        handle,
        lambda s: s.waiting_for is not None and s.attempts[BuildState.TESTING] == 2,
        seconds=60,
    )
    assert status.attempts[BuildState.DEPLOYMENT] == 1 and status.loop_backs == 0
    await handle.execute_update(BuildWorkflow.update_approve, ApproveRequest())
    result = await finish(handle)
    landed = git(remote, "rev-parse", "main")
    assert release_of(result).commit == landed
    assert git(remote, "merge-base", "--is-ancestor", theirs, landed) == ""
    assert {"docs.md", "dark_mode.py"} <= tree_of(remote)
    events = await handle.query(BuildWorkflow.event_log)
    moved = [e for e in events if e.event_type is EventType.BRANCH_MOVED]
    assert [fields(e)["branch_head"] for e in moved] == [theirs]
    await save_history(handle, "project_moved_base_retested")


async def test_a_conflict_goes_back_to_the_code_writer_and_then_lands(
    client: Client, worker: Settings, tmp_path: Path
) -> None:
    handle, remote = await waiting_to_release(client, worker, tmp_path)
    push_change(remote, {"dark_mode.py": "ENABLED = True\n"}, "the same module, meanwhile")
    await handle.execute_update(BuildWorkflow.update_approve, ApproveRequest())
    status = await wait_until(handle, lambda s: s.waiting_for is not None and s.loop_backs == 1)
    assert status.attempts[BuildState.IMPLEMENTATION] == 2
    await handle.execute_update(BuildWorkflow.update_approve, ApproveRequest())
    result = await finish(handle)
    landed = git(remote, "rev-parse", "main")
    assert release_of(result).commit == landed and len(tags_of(remote)) == 1
    assert "def toggle" in git(remote, "show", "main:dark_mode.py")  # the build's resolution
    events = await handle.query(BuildWorkflow.event_log)
    loops = [e for e in events if e.event_type is EventType.LOOP_BACK]
    assert loops and fields(loops[0])["reason"] == "merge conflict"
    await save_history(handle, "project_merge_conflict")


async def test_simulate_conflict_lands_a_teammates_change_first_and_the_build_resolves_it(
    client: Client, worker: Settings, tmp_path: Path
) -> None:
    project = await registered(client, worker, tmp_path)
    remote = tmp_path / "remote.git"
    push_change(remote, {"CHANGELOG.md": "# Changelog\n\n## Unreleased\n\n- Greeting\n"}, "log")
    handle = await start(client, worker, make_request(project=project, simulate=["conflict"]))
    result = await finish(handle)
    assert result.loop_backs == 1 and result.attempts[BuildState.IMPLEMENTATION] == 2
    authors = git(remote, "log", "--format=%an|%s", "main").splitlines()
    assert "Simulated teammate|A teammate changes dark_mode.py" in authors  # once, not per try
    assert sum(a.startswith("Simulated teammate") for a in authors) == 1
    assert "def toggle" in git(remote, "show", "main:dark_mode.py")  # the build's resolution
    # The feature's line was an exact-text edit of the changelog the project had.
    changelog = git(remote, "show", "main:CHANGELOG.md")
    assert changelog == "# Changelog\n\n## Unreleased\n\n- Dark mode: `dark_mode.py`\n- Greeting"
    events = await handle.query(BuildWorkflow.event_log)
    loops = [e for e in events if e.event_type is EventType.LOOP_BACK]
    assert [fields(e)["reason"] for e in loops] == ["merge conflict"]


async def test_a_build_goes_on_when_its_workspace_is_deleted_between_roles(
    client: Client, worker: Settings, tmp_path: Path
) -> None:
    project = await registered(client, worker, tmp_path)
    request = make_request(project=project, approval_gates=[S.HANDOFF_TO_TESTER])
    handle = await start(client, worker, request)
    await wait_until(handle, lambda s: s.waiting_for is not None, seconds=60)
    shutil.rmtree(worker.workspaces / request.build_id)
    await handle.execute_update(BuildWorkflow.update_approve, ApproveRequest())
    result = await finish(handle)
    assert result.attempts[BuildState.TESTING] == 1 and release_of(result).version == "v0.1.0"


async def test_branch_delivery_pushes_the_build_branch_and_changes_nothing_else(
    client: Client, worker: Settings, tmp_path: Path
) -> None:
    project = await registered(client, worker, tmp_path, delivery="branch")
    remote = tmp_path / "remote.git"
    base = git(remote, "rev-parse", "main")
    request = make_request(project=project)
    handle = await start(client, worker, request)
    result = await finish(handle)
    await save_history(handle, "project_branch_delivery")
    assert release_of(result).delivery == "branch"
    assert git(remote, "rev-parse", "main") == base and tags_of(remote) == []
    pushed = git(remote, "rev-parse", f"refs/heads/build/{request.build_id}")
    assert pushed == release_of(result).commit
    assert "dark_mode.py" in tree_of(remote, pushed)
    assert not (worker.releases / project).exists()


async def test_an_unreachable_repository_fails_the_build_with_gits_reason(
    client: Client, worker: Settings, tmp_path: Path
) -> None:
    project = await registered(client, worker, tmp_path)
    shutil.rmtree(tmp_path / "remote.git")  # gone after registration
    handle = await start(client, worker, make_request(project=project))
    with pytest.raises(WorkflowFailureError):
        await finish(handle)
    status = await status_of(handle)
    assert status.state is S.FAILED
    assert "the project's repository: cannot open" in (status.last_error or "")
    assert "does not exist" in (status.last_error or "")  # git's reason
    history = await handle.fetch_history()
    started = [
        e.activity_task_started_event_attributes.attempt
        for e in history.events
        if e.HasField("activity_task_started_event_attributes")
    ]
    assert started == [3]  # retried as an outage (max_attempts 3), then given up


async def test_status_mirror_and_current_details_show_the_repository(
    client: Client, worker: Settings, engine: Engine, tmp_path: Path
) -> None:
    project = await registered(client, worker, tmp_path)
    remote = tmp_path / "remote.git"
    base = git(remote, "rev-parse", "main")
    request = make_request(project=project, approval_gates=[S.HANDOFF_TO_RELEASER])
    handle = await start(client, worker, request)
    waiting = await wait_until(handle, lambda s: s.waiting_for is not None, seconds=60)
    repo = waiting.repository
    assert repo is not None and (repo.base, repo.version) == (base, None)
    assert repo.build_branch == f"build/{request.build_id}" and repo.head not in (None, base)
    details = views.current_details(waiting)
    assert f"`{remote}` `main` from `{base[:10]}`" in details
    await handle.execute_update(BuildWorkflow.update_approve, ApproveRequest())
    await finish(handle)
    done = (await status_of(handle)).repository
    assert done is not None and done.version == "v0.1.0"
    assert done.delivered == git(remote, "rev-parse", "main")
    assert "**Delivered (merge):** `v0.1.0`" in views.current_details(await status_of(handle))
    with Session(engine) as session:
        row = crud.get_build(session, workflow_id=handle.id)
    assert row is not None
    assert (row.version, row.delivered_commit, row.base_commit) == ("v0.1.0", done.delivered, base)
    assert (row.repository, row.branch, row.delivery) == (str(remote), "main", "merge")


async def test_pre_existing_failures_do_not_block_and_a_regression_is_named(
    client: Client, worker: Settings, tmp_path: Path
) -> None:
    broken = "def test_already_broken():\n    assert 1 == 2\n"
    guard = (
        "import os\n\n\ndef test_no_dark_mode():\n    assert not os.path.exists('dark_mode.py')\n"
    )
    files = {"app.py": APP, "tests/test_app.py": APP_TEST, "tests/test_old.py": broken}
    remote = make_project(tmp_path / "a", files)
    project = new_id()
    await put_project(client, worker, project, ProjectConfig(repository=str(remote)))
    result = await finish(await start(client, worker, make_request(project=project)))
    # The old failure failed neither the tests nor the static checks (ruff flags it too).
    assert (
        result.attempts[BuildState.TESTING] == 1 and result.attempts[BuildState.VERIFICATION] == 1
    )

    guarded = make_project(tmp_path / "b", {**files, "tests/test_guard.py": guard})
    other = new_id()
    await put_project(client, worker, other, ProjectConfig(repository=str(guarded)))
    handle = await start(client, worker, make_request(project=other, max_retries=0))
    with pytest.raises(WorkflowFailureError):
        await finish(handle)
    status = await status_of(handle)
    assert "1 regressed: tests.test_guard::test_no_dark_mode" in (status.last_error or "")
    assert "1 failed on the base already" in (status.last_error or "")


async def test_a_project_with_a_setup_command_builds_with_what_it_installs(
    client: Client, worker: Settings, tmp_path: Path
) -> None:
    """The project's tests import a package only its setup command installs."""
    from tests.activities.testing.test_setup import INSTALL, vendoring_project

    project = new_id()
    files = {"app.py": APP, "tests/test_helper.py": "import helper\n\n\ndef test_it():\n"
             "    assert helper.answer() == 42\n"}  # fmt: skip
    remote = vendoring_project(tmp_path, files)
    # The smoke check needs the installed package too: it runs with the same environment.
    smoke = "python -c 'import helper; assert helper.answer() == 42'"
    config = ProjectConfig(repository=str(remote), setup_command=INSTALL, smoke_command=smoke)
    view = await put_project(client, worker, project, config)
    assert view.config.setup_command == INSTALL
    handle = await start(client, worker, make_request(project=project))
    result = await finish(handle)
    assert result.state is S.COMPLETE and release_of(result).version == "v0.1.0"
    assert result.loop_backs == 0  # its tests passed at the first run
    status = await status_of(handle)
    assert status.setup is not None and f"the setup command `{INSTALL}`: made in" in status.setup
    assert f"**Environment:** {status.setup}" in views.current_details(status)
    assert status.tests is not None
    run = status.tests.split(" run:")[0]
    assert status.tests == f"{run} run: {run} passed, 0 failed, 0 pre-existing, 0 errors, 0 skipped"
    # The next build of the unchanged project runs no setup: its environment is reused.
    second = await start(client, worker, make_request({"feature": "Audit log"}, project=project))
    assert (await finish(second)).state is S.COMPLETE
    events = await second.query(BuildWorkflow.event_log, 0)
    tested = [fields(e) for e in events if e.event_type is EventType.ROLE_CALL
              and fields(e).get("environment")]  # fmt: skip
    assert tested and tested[0]["environment"].endswith("reused (no setup ran)"), tested
    counts = tested[0]["tests"]
    assert counts["run"] == counts["passed"] > 0 and counts["failed"] == counts["errors"] == 0


async def test_a_setup_that_fails_waits_for_a_person_and_no_code_writer_follows(
    client: Client, worker: Settings, tmp_path: Path
) -> None:
    """The environment's failure is not the code's: the build asks a person at once, with the
    setup's own words and what changes it, and the Code Writer is not called again."""
    project = new_id()
    remote = make_project(tmp_path)
    broken = "echo 'ERROR: No matching distribution found for flit_core>=3.11' >&2; exit 1"
    config = ProjectConfig(repository=str(remote), setup_command=broken)
    await put_project(client, worker, project, config)
    handle = await start(client, worker, make_request(project=project))
    status = await wait_until(handle, lambda s: s.state is S.NEEDS_ATTENTION, seconds=60)
    assert status.waiting_for is not None and "environment failed at testing" in status.waiting_for
    for said in ("No matching distribution found for flit_core", "SANDBOX_SETUP_NETWORK",
                 f"starter.py rollback {status.build_id} --to testing"):  # fmt: skip
        assert said in status.waiting_for, said
    assert status.tests is None and status.attempts.get(BuildState.IMPLEMENTATION) == 1
    await handle.execute_update(
        BuildWorkflow.update_abort, AbortRequest(reason="fix the index", requested_by="ana")
    )
    with pytest.raises(WorkflowFailureError):
        await finish(handle)
    events = await handle.query(BuildWorkflow.event_log, 0)
    writers = [
        e for e in events if e.event_type is EventType.ROLE_CALL and e.triggered_by == "code_writer"
    ]
    assert len(writers) == 1
    attention = [e for e in events if e.event_type is EventType.NEEDS_ATTENTION]
    assert attention and fields(attention[0])["reason"] == "environment failed"
