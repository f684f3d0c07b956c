"""Histories of real builds, checked in, replayed against today's workflow code on every run.

Regenerate after an intended, compatible change with:
    RECORD_HISTORIES=1 .venv/bin/pytest tests/test_workflow.py tests/test_workflow_failures.py \
        tests/test_workflow_work.py tests/test_budget.py tests/test_attention.py
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from workflows.build import BuildWorkflow

HISTORIES = sorted((Path(__file__).parent / "histories").glob("*.json"))
HISTORY_TEXT = {p: p.read_text() for p in HISTORIES}


def test_histories_cover_the_main_scenarios():
    names = {p.stem for p in HISTORIES}
    assert {
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
    } <= names


@pytest.mark.parametrize("path", HISTORIES, ids=lambda p: p.stem)
async def test_history_replays_without_nondeterminism(path: Path):
    raw = HISTORY_TEXT[path]
    workflow_id = json.loads(raw)["events"][0]["workflowExecutionStartedEventAttributes"].get(
        "workflowId", f"replay-{path.stem}"
    )
    history = WorkflowHistory.from_json(workflow_id, raw)
    replayer = Replayer(workflows=[BuildWorkflow], data_converter=pydantic_data_converter)
    result = await replayer.replay_workflow(history, raise_on_replay_failure=False)
    assert result.replay_failure is None, f"{path.name}: {result.replay_failure}"
