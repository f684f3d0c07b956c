"""An answer is never paid for twice (activities/answers.py): a model's complete answer is kept
before anything acts on it, and a retry of the activity after it arrived uses it. Nothing
secret is kept, and old builds' answers go."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import httpx2
from sqlalchemy import Engine
from temporalio.client import Client

from activities import offline_model
from activities.answers import AnswerStore, Key, request_hash
from activities.workspace import Workspace
from core.models import EventType
from core.role_io import ModelUsage, PlanOutput
from core.settings import Settings
from core.states import BuildState, Role
from tests.helpers import make_request, model_client_with, running_worker, start
from workflows.build import BuildWorkflow

PLAN = PlanOutput(summary="s", steps=["a"], files=["x.py"], test_strategy="t")


def test_an_answer_is_kept_per_build_role_attempt_and_request(tmp_path: Path) -> None:
    store = AnswerStore(tmp_path / "answers")
    key = Key("b1", "q_assistant", 1, request_hash("m", "json", "PlanOutput", []))
    usage = ModelUsage(model="m", prompt_version="v", prompt_tokens=7, requests=1)
    assert store.get(key) is None
    store.put(key, PLAN, usage)
    kept = store.get(key)
    assert kept is not None and PlanOutput.model_validate(kept.answer) == PLAN
    assert kept.usage == usage
    other = request_hash("m", "json", "PlanOutput", [{"role": "user", "content": "x"}])
    for near in (Key("b1", "q_assistant", 2, key.request), Key("b1", "q_assistant", 1, other),
                 Key("b2", "q_assistant", 1, key.request)):  # fmt: skip
        assert store.get(near) is None
    assert not any(p.name.startswith(".") for p in (tmp_path / "answers" / "b1").iterdir())


def test_a_build_id_is_one_plain_name_in_the_store(tmp_path: Path) -> None:
    store = AnswerStore(tmp_path / "answers")
    store.put(Key("../escaped", "r", 1, "h"), PLAN, ModelUsage(model="m", prompt_version="v"))
    assert not (tmp_path / "escaped").exists() and store.get(Key("../escaped", "r", 1, "h")) is None


def test_builds_whose_answers_are_all_older_than_the_retention_go(tmp_path: Path) -> None:
    store = AnswerStore(tmp_path / "answers")
    usage = ModelUsage(model="m", prompt_version="v")
    for build in ("old", "new"):
        store.put(Key(build, "r", 1, "h"), PLAN, usage)
    long_ago = time.time() - 40 * 86_400
    for entry in (tmp_path / "answers" / "old").iterdir():
        os.utime(entry, (long_ago, long_ago))
    assert store.prune(30) == 1
    assert sorted(p.name for p in (tmp_path / "answers").iterdir()) == ["new"]
    assert store.prune(0) == 0  # 0: kept for ever


async def test_a_retry_after_the_answer_arrived_uses_it_and_keeps_no_secret(
    client: Client, settings: Settings, engine: Engine, monkeypatch: Any
):
    """The Code Writer's commit fails once after its model answered (as a worker killed
    between the two would leave it): the activity's retry uses the kept answer, and the model
    is asked once."""
    asked: list[str] = []

    async def model(request: httpx2.Request) -> httpx2.Response:
        asked.append(json.loads(request.content)["response_format"]["json_schema"]["name"])
        return await offline_model.handle(request)

    real, failed = Workspace.write, list[int]()

    def write_fails_once(self: Workspace, *args: Any, **kwargs: Any) -> Any:
        if not failed:
            failed.append(1)
            raise OSError("the disk went away between the answer and the commit")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Workspace, "write", write_fails_once)
    keyed = settings.model_copy(update={"openai_api_key": None})
    async with running_worker(client, keyed, engine, model_client_with(keyed, model)):
        handle = await start(client, keyed, make_request())
        result = await handle.result()
        events = await handle.query(BuildWorkflow.event_log, 0)
    assert result.state is BuildState.COMPLETE and failed
    assert asked.count("ImplementationOutput") == 1  # paid once
    calls = [e for e in events if e.event_type is EventType.ROLE_CALL]
    [call] = [e.data for e in calls if e.triggered_by == "code_writer"]
    assert call["reused"] is True and call["completion_tokens"] > 0  # counted once, not zero
    files = sorted((keyed.answers / result.build_id).iterdir())
    assert {f.name.split("-")[0] for f in files} == {r.value for r in Role}
    kept = b"".join(f.read_bytes() for f in files)
    assert b"dark_mode" in kept  # the answers themselves
    assert b'"messages"' not in kept and b"Authorization" not in kept and b"api_key" not in kept


def test_the_key_of_a_request_changes_with_what_is_asked() -> None:
    base = [{"role": "user", "content": json.dumps({"attempt": 1})}]
    one = request_hash("m", "json", "PlanOutput", base)
    assert one == request_hash("m", "json", "PlanOutput", [dict(m) for m in base])
    assert one != request_hash("m2", "json", "PlanOutput", base)
    assert one != request_hash("m", "blocks", "PlanOutput", base)
    assert one != request_hash("m", "json", "PlanOutput", [{"role": "user", "content": "{}"}])
