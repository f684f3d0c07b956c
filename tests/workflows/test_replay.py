"""Safe upgrades: histories of real builds, checked in per workflow version and never re-recorded,
replay against today's workflow code on every run. A change that would break a running build
fails here; guard it with `workflow.patched` (README, "Changing the workflow safely").

Record the current version's histories (missing files only; existing ones are never rewritten):
    RECORD_HISTORIES=1 .venv/bin/pytest tests/stack/test_workflow.py \
        tests/stack/test_workflow_failures.py tests/stack/test_workflow_work.py \
        tests/stack/test_budget.py tests/stack/test_attention.py tests/stack/test_projects.py \
        tests/stack/test_release_queue.py
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from temporalio.client import Client, WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from core.settings import Settings
from core.states import BuildState
from tests.helpers import (
    EVAL_HISTORIES,
    HISTORY_DIR,
    HISTORY_VERSION,
    REGISTRY_HISTORIES,
    make_request,
    running_worker,
    start,
)
from tests.workflow_variants import GuardedChange, UnguardedChange
from workflows.build import BuildWorkflow
from workflows.evals import EvalWorkflow
from workflows.project import ProjectWorkflow

HISTORIES = sorted(HISTORY_DIR.glob("v*/*.json"))
PROJECT_HISTORIES = sorted((HISTORY_DIR / REGISTRY_HISTORIES).glob("*.json"))
EVAL_RUN_HISTORIES = sorted((HISTORY_DIR / EVAL_HISTORIES).glob("*.json"))
HISTORY_TEXT = {p: p.read_text() for p in [*HISTORIES, *PROJECT_HISTORIES, *EVAL_RUN_HISTORIES]}
SCENARIOS = {
    "happy_path",
    "tests_fail_once",
    "verification_rejects_once",
    "tests_always_fail",
    "gate_retry_rollback_approve",
    "cancel_during_role_call",
    "release_fails_once",
    "rollback_after_release",
    "unsafe_paths_refused",
    "budget_paused_and_topped_up",
    "needs_attention_retry_abort",
}


def history(path: Path) -> WorkflowHistory:
    raw = HISTORY_TEXT[path]
    first = json.loads(raw)["events"][0]["workflowExecutionStartedEventAttributes"]
    return WorkflowHistory.from_json(first.get("workflowId", f"replay-{path.stem}"), raw)


async def replay(workflow_class: type, path: Path) -> BaseException | None:
    return await replay_history(workflow_class, history(path))


VERSIONS = sorted({p.parent.name for p in HISTORIES}, key=lambda v: int(v[1:]))


def test_every_kept_version_keeps_its_histories_and_each_covers_every_scenario():
    """Versions are retired oldest first, with the patches whose old path they took
    (docs/workflow-changes.md): the kept ones run unbroken to the newest."""
    numbers = [int(v[1:]) for v in VERSIONS]
    assert numbers == list(range(numbers[0], numbers[-1] + 1))
    assert VERSIONS[-1] == HISTORY_VERSION
    for version in VERSIONS:
        assert {p.stem for p in HISTORIES if p.parent.name == version} >= SCENARIOS, version


@pytest.mark.parametrize("path", HISTORIES, ids=lambda p: f"{p.parent.name}/{p.stem}")
async def test_history_replays_without_nondeterminism(path: Path):
    failure = await replay(BuildWorkflow, path)
    assert failure is None, f"{path.parent.name}/{path.name}: {failure}"


@pytest.mark.parametrize("path", PROJECT_HISTORIES, ids=lambda p: p.stem)
async def test_project_registry_history_replays_without_nondeterminism(path: Path):
    failure = await replay(ProjectWorkflow, path)
    assert failure is None, f"{path.name}: {failure}"


def test_the_registry_has_a_recorded_history():
    assert PROJECT_HISTORIES


@pytest.mark.parametrize("path", EVAL_RUN_HISTORIES, ids=lambda p: p.stem)
async def test_evaluation_run_history_replays_without_nondeterminism(path: Path):
    failure = await replay(EvalWorkflow, path)
    assert failure is None, f"{path.name}: {failure}"


def test_evaluation_runs_have_a_recorded_history():
    assert EVAL_RUN_HISTORIES


@pytest.mark.parametrize("version", sorted({VERSIONS[0], HISTORY_VERSION}))
async def test_an_unguarded_change_fails_the_replay_test(version: str):
    path = HISTORY_DIR / version / "happy_path.json"
    failure = await replay(UnguardedChange, path)
    assert failure is not None and "Nondeterminism" in str(failure)


@pytest.mark.slow  # replays every history twice
async def test_the_same_change_guarded_by_a_patch_replays_every_history_and_runs(
    client: Client, settings: Settings, engine
):
    for path in HISTORIES:
        assert await replay(GuardedChange, path) is None, path
    # A build started after the change takes the new path, records the patch, and replays.
    async with running_worker(client, settings, engine, workflows=[GuardedChange, ProjectWorkflow]):
        handle = await start(client, settings, make_request())
        result = await handle.result()
    assert result.state is BuildState.COMPLETE
    fetched = await handle.fetch_history()
    markers = [e for e in fetched.events if e.HasField("marker_recorded_event_attributes")]
    assert markers, "the patch marker should be in the new build's history"
    replayer = Replayer(workflows=[GuardedChange], data_converter=pydantic_data_converter)
    replayed = await replayer.replay_workflow(fetched, raise_on_replay_failure=False)
    assert replayed.replay_failure is None
    # ...and it is not a build the old code could replay: the guard is what keeps both working.
    assert await replay_history(BuildWorkflow, fetched) is not None


async def replay_history(workflow_class: type, fetched: WorkflowHistory) -> BaseException | None:
    replayer = Replayer(workflows=[workflow_class], data_converter=pydantic_data_converter)
    result = await replayer.replay_workflow(fetched, raise_on_replay_failure=False)
    return result.replay_failure
