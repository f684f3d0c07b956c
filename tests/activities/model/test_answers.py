"""An answer is never paid for twice (activities/model/answers.py): a model's complete answer
is kept before anything acts on it, and a retry of the activity after it arrived uses it. Nothing
secret is kept, and old builds' answers go. Both stores: files, and the mirror's database
(SQLite and PostgreSQL) that a fleet's workers share."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx2
import pytest
from sqlalchemy import Engine, update
from temporalio.client import Client

from activities.model import offline
from activities.model.answers import Answers, AnswerStore, DatabaseAnswers, Key, request_hash
from activities.repository.workspace import Workspace
from core.events import EventType
from core.feedback import ModelUsage
from core.role_io import PlanOutput
from core.settings import Settings
from core.states import BuildState, Role
from db.engine import make_engine
from db.migrate import upgrade
from db.models import KeptAnswerRow
from tests.helpers import fields, make_request, model_client_with, running_worker, start
from workflows.build import BuildWorkflow

PLAN = PlanOutput(summary="s", steps=["a"], files=["x.py"], test_strategy="t")


@pytest.fixture(params=["files", "database"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Answers]:
    if request.param == "files":
        yield AnswerStore(tmp_path / "answers")
        return
    url = f"sqlite:///{tmp_path / 'mirror.db'}"
    upgrade(url)
    engine = make_engine(url)
    yield DatabaseAnswers(engine)
    engine.dispose()


def test_an_answer_is_kept_per_build_role_attempt_and_request(store: Answers) -> None:
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
    store.put(key, PlanOutput(summary="later", steps=[], files=[], test_strategy="t"), usage)
    kept = store.get(key)
    assert kept is not None and kept.answer["summary"] == "s"  # the first answer kept stays


def test_a_rerun_whose_first_attempt_calls_gets_the_originals_first_answered_attempt(
    store: Answers,
) -> None:
    """The original's release waited for its project's queue and was tested again: its first
    DEPLOYMENT attempt made no call, its second did. A re-run takes no queue turn: its first
    attempt calls, and gets the answer of the original's first attempt that called."""
    from activities.model.replays import recorded
    from core.reruns import Replay
    from core.role_io import RoleTask

    released = PlanOutput(summary="released", steps=[], files=[], test_strategy="t")
    usage = ModelUsage(model="m", prompt_version="v", prompt_tokens=7, requests=1)
    store.put(Key("orig", "release_manager", 2, "h2", "deployment"), released, usage)
    assert store.attempts("orig", "release_manager", "deployment") == [2]
    task = RoleTask.model_validate({
        "build_id": "again", "project_id": "p", "role": Role.RELEASE_MANAGER,
        "state": BuildState.DEPLOYMENT,
        "attempt": 1, "requirements": {"feature": "x"},
        "replay": Replay(live=False, original="orig"),
    })  # fmt: skip
    found = recorded(store, task, "another request", PlanOutput)
    assert found is not None and found[0] == released and found[1].replayed
    assert found[1].prompt_tokens == 0  # paid for by the original


def test_a_kept_file_is_written_whole(tmp_path: Path) -> None:
    store = AnswerStore(tmp_path / "answers")
    store.put(Key("b1", "r", 1, "h"), PLAN, ModelUsage(model="m", prompt_version="v"))
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


def test_a_fleets_workers_share_the_answers_in_the_mirror_database(mirror_db: Engine) -> None:
    """Kept by one worker's store, found by another's (its own engine, as on another machine);
    builds whose answers are all older than the retention go, on SQLite and PostgreSQL."""
    one, other = DatabaseAnswers(mirror_db), DatabaseAnswers(make_engine(str(mirror_db.url)))
    usage = ModelUsage(model="m", prompt_version="v", completion_tokens=3)
    build = f"fleet-{time.time_ns()}"
    key = Key(build, "code_writer", 2, request_hash("m", "blocks", "ImplementationOutput", []))
    one.put(key, PLAN, usage)
    one.put(key, PLAN, usage)  # a second keep of the same request is no error, and no row
    kept = other.get(key)
    assert kept is not None and kept.answer == PLAN.model_dump(mode="json") and kept.usage == usage
    one.put(Key(f"{build}-new", "r", 1, "h"), PLAN, usage)
    table: Any = KeptAnswerRow.__table__  # type: ignore[attr-defined]
    with mirror_db.begin() as conn:
        conn.execute(
            update(table)
            .where(table.c.workflow_id == build)
            .values(kept_at=datetime.now(UTC) - timedelta(days=40))
        )
    assert other.prune(30) >= 1
    assert other.get(key) is None and other.get(Key(f"{build}-new", "r", 1, "h")) is not None
    other.engine.dispose()


@pytest.mark.parametrize("kept_in", ["files", "database"])
async def test_a_retry_after_the_answer_arrived_uses_it_and_keeps_no_secret(
    client: Client, settings: Settings, engine: Engine, monkeypatch: Any, kept_in: str
):
    """The Code Writer's commit fails once after its model answered (as a worker killed
    between the two would leave it): the activity's retry uses the kept answer, and the model
    is asked once."""
    asked: list[str] = []

    async def model(request: httpx2.Request) -> httpx2.Response:
        asked.append(json.loads(request.content)["response_format"]["json_schema"]["name"])
        return await offline.handle(request)

    real, failed = Workspace.write, list[int]()

    def write_fails_once(self: Workspace, *args: Any, **kwargs: Any) -> Any:
        if not failed:
            failed.append(1)
            raise OSError("the disk went away between the answer and the commit")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Workspace, "write", write_fails_once)
    keyed = settings.model_copy(update={"openai_api_key": None, "answer_store": kept_in})
    async with running_worker(client, keyed, engine, model_client_with(keyed, model)):
        handle = await start(client, keyed, make_request())
        result = await handle.result()
        events = await handle.query(BuildWorkflow.event_log, 0)
    assert result.state is BuildState.COMPLETE and failed
    assert asked.count("ImplementationOutput") == 1  # paid once
    calls = [e for e in events if e.event_type is EventType.ROLE_CALL]
    [call] = [fields(e) for e in calls if e.triggered_by == "code_writer"]
    assert call["reused"] is True and call["completion_tokens"] > 0  # counted once, not zero
    if kept_in == "files":
        files = sorted((keyed.answers / result.build_id).iterdir())
        assert {f.name.split("-")[0] for f in files} == {r.value for r in Role}
        kept = b"".join(f.read_bytes() for f in files)
    else:
        assert not (keyed.answers / result.build_id).exists()
        table = KeptAnswerRow.__table__  # type: ignore[attr-defined]
        with engine.connect() as conn:
            rows = conn.execute(table.select().where(table.c.workflow_id == result.build_id))
            kept_rows = [dict(r._mapping) for r in rows]
        assert {r["role"] for r in kept_rows} == {r.value for r in Role}
        kept = json.dumps(kept_rows, default=str).encode()
    assert b"dark_mode" in kept  # the answers themselves
    assert b'"messages"' not in kept and b"Authorization" not in kept and b"api_key" not in kept


def test_the_key_of_a_request_changes_with_what_is_asked() -> None:
    base = [{"role": "user", "content": json.dumps({"attempt": 1})}]
    one = request_hash("m", "json", "PlanOutput", base)
    assert one == request_hash("m", "json", "PlanOutput", [dict(m) for m in base])
    assert one != request_hash("m2", "json", "PlanOutput", base)
    assert one != request_hash("m", "blocks", "PlanOutput", base)
    assert one != request_hash("m", "json", "PlanOutput", [{"role": "user", "content": "{}"}])
