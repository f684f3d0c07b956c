"""Re-runs (core/reruns.py): a build of an earlier one's project, base commit and requirements,
its roles not live answered from the earlier build's kept answers, through a real worker, the
offline model and a real project repository."""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine
from sqlmodel import Session
from temporalio.client import Client, WorkflowFailureError, WorkflowHandle

from activities.model.answers import AnswerStore, DatabaseAnswers, Key
from activities.repository.gitcmd import git
from client.errors import BuildNotFound
from client.reruns import original_of, start_rerun
from core import views
from core.build_io import Simulation
from core.events import EventType
from core.feedback import ModelUsage
from core.messages import AbortRequest
from core.mirror import BuildEvent
from core.projects import ProjectConfig
from core.reruns import RerunChoices
from core.role_io import DiscoveryOutput, PlanOutput
from core.scores import ScoreCard
from core.settings import Settings
from core.states import BuildState, Role
from db.scores import score_of
from tests.api_stack import Stack, poll
from tests.git_projects import make_project, tags_of
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


def usage(tokens: int = 7) -> ModelUsage:
    return ModelUsage(model="m", prompt_version="v1", prompt_tokens=tokens, completion_tokens=1)


@pytest.fixture(params=["files", "database"])
def store(request: pytest.FixtureRequest, tmp_path: Path, mirror_db: Engine) -> Any:
    return AnswerStore(tmp_path) if request.param == "files" else DatabaseAnswers(mirror_db)


def test_recorded_answers_are_found_by_role_state_and_attempt_then_by_request(store: Any) -> None:
    build = f"b{uuid.uuid4().hex[:8]}"
    found = DiscoveryOutput(summary="found", requirements=["r"], acceptance_criteria=["a"])
    plan = PlanOutput(summary="plan", steps=["one"], files=["x.py"], test_strategy="pytest")
    store.put(Key(build, "q_assistant", 1, "h-discovery", "discovery"), found, usage())
    store.put(Key(build, "q_assistant", 1, "h-plan", "planning"), plan, usage())
    # A second answer to the same call (an activity retry asked another model): the latest
    # is the one the build acted on, and comes first.
    later = plan.model_copy(update={"summary": "plan, second model"})
    store.put(Key(build, "q_assistant", 1, "h-plan-2", "planning"), later, usage())

    planning = store.recorded(build, "q_assistant", "planning", 1)
    assert [k.answer["summary"] for k in planning] == ["plan, second model", "plan"]
    assert [k.answer["summary"] for k in store.recorded(build, "q_assistant", "discovery", 1)] == [
        "found"
    ]
    assert store.recorded(build, "q_assistant", "planning", 2) == []
    assert store.recorded(build, "code_writer", "implementation", 1) == []
    by_hash = store.by_request(build, "h-discovery")
    assert by_hash is not None and by_hash.answer["summary"] == "found"
    assert by_hash.usage.prompt_tokens == 7
    assert store.by_request(build, "h-none") is None
    assert store.by_request(f"other{build}", "h-discovery") is None


def test_a_kept_answer_holds_no_prompt_key_or_header(tmp_path: Path) -> None:
    store = AnswerStore(tmp_path)
    found = DiscoveryOutput(summary="found", requirements=["r"], acceptance_criteria=["a"])
    store.put(Key("b1", "q_assistant", 1, "h", "discovery"), found, usage())
    [kept] = (tmp_path / "b1").iterdir()
    record = json.loads(kept.read_text())
    assert set(record) == {
        "build_id", "role", "attempt", "state", "request_hash", "kept_at", "answer", "usage"
    }  # fmt: skip
    assert record["state"] == "discovery"
    assert "messages" not in kept.read_text() and "sk-" not in kept.read_text()


async def finished(handle: WorkflowHandle) -> Any:
    async with asyncio.timeout(120):
        return await handle.result()


# Not the same in a re-run by design: it opens at a given commit, and delivering to its own
# branch it takes no turn in the project's release queue.
OWN = {EventType.WORKSPACE_OPENED, EventType.RELEASE_QUEUED, EventType.RELEASE_TURN}


def walk(events: list[BuildEvent]) -> list[tuple[str, str | None, str]]:
    """A build's events without ids, times, commits and spend: what happened, where, by whom."""
    return [
        (e.event_type.value, e.state.value if e.state else None, e.triggered_by)
        for e in events
        if e.event_type not in OWN
    ]


def comparable(card: ScoreCard) -> dict[str, Any]:
    """A score card without what a re-run changes by design: its ids, its wall time, that it
    is a re-run, and what its calls spent (recorded answers cost nothing: they count as
    `replayed`, and their tokens and cost are 0)."""
    shown = card.model_dump(exclude={"build_id", "workflow_id", "wall_seconds", "rerun_of",
                                     "tokens", "cost_usd"})  # fmt: skip
    spent = {"replayed", "prompt_tokens", "completion_tokens", "tokens", "cost_usd"}
    shown["roles"] = {role: score.model_dump(exclude=spent) for role, score in card.roles.items()}
    return shown


COMMIT = re.compile(r"\b[0-9a-f]{7,40}\b")
MEASURED = re.compile(r"\d+ MB used at most")  # a test run's peak memory, measured
# What an event says that is not the same in a re-run by design: when (times, durations),
# what its calls spent (recorded answers cost nothing and are marked `replayed`), and its
# release (delivered to its own branch: no tag, no release folder; asserted above).
SPENT = {"latency_ms", "prompt_tokens", "completion_tokens", "cost_usd", "replayed", "seconds",
         "requests", "tokens", "budget", "release"}  # fmt: skip


def facts(event: BuildEvent, build_id: str) -> str:
    """An event's type, state, author and data, without what differs by design: its build's
    id, commit ids (a commit's id covers its time), times, measured memory and spend."""
    data = {k: v for k, v in fields(event).items() if k not in SPENT}
    text = json.dumps([event.event_type.value, event.state.value, event.triggered_by, data],
                      sort_keys=True)  # fmt: skip
    text = MEASURED.sub("<measured>", text.replace(build_id, "<build>"))
    return COMMIT.sub("<commit>", text)


async def original_build(
    client: Client, worker: Settings, tmp_path: Path
) -> tuple[WorkflowHandle, Path, str]:
    """A completed build of a new project (merged into main, tagged v0.1.0); its remote."""
    remote = make_project(tmp_path)
    project = f"p{uuid.uuid4().hex[:10]}"
    request = make_request(project=project)
    request.project = ProjectConfig(repository=str(remote))
    handle = await start(client, worker, request)
    await finished(handle)
    return handle, remote, project


async def test_a_rerun_without_live_roles_repeats_the_build_and_never_touches_the_project(
    client: Client, worker: Settings, tmp_path: Path, engine: Engine
) -> None:
    handle, remote, project = await original_build(client, worker, tmp_path)
    main, tags = git(remote, "rev-parse", "main"), tags_of(remote)
    current = (worker.releases / project / "current").resolve()
    request, base = await original_of(client, handle.id)
    # What the request would deliver without the re-run's one rule: into main, tagged.
    assert request.project and request.project.delivery == "merge"
    assert request.project.version_scheme == "auto"

    rerun, rerun_handle = await start_rerun(client, worker, handle.id, RerunChoices(),
                                            user_id="pytest")  # fmt: skip
    result = await finished(rerun_handle)

    assert result.state is S.COMPLETE
    # The project is as the original left it: its branch, its tags, its current release.
    assert git(remote, "rev-parse", "main") == main and tags_of(remote) == tags == ["v0.1.0"]
    assert (worker.releases / project / "current").resolve() == current
    # Delivered to the re-run's own branch, started from the original's base, with the
    # original's code: the same tree as the release it made.
    assert release_of(result).delivery == "branch"
    delivered = git(remote, "rev-parse", f"build/{rerun.build_id}")
    assert delivered == release_of(result).commit
    assert git(remote, "merge-base", "--is-ancestor", base, delivered) == ""
    tree = git(remote, "rev-parse", "main^{tree}")
    assert git(remote, "rev-parse", f"{delivered}^{{tree}}") == tree

    first = await handle.query(BuildWorkflow.event_log)
    again = await rerun_handle.query(BuildWorkflow.event_log)
    assert walk(again) == walk(first)
    assert [facts(e, request.build_id) for e in first if e.event_type not in OWN] == [
        facts(e, rerun.build_id) for e in again if e.event_type not in OWN
    ]
    calls = [e for e in again if e.event_type is EventType.ROLE_CALL]
    assert calls and all(fields(e)["replayed"] for e in calls)
    assert sum(fields(e)["prompt_tokens"] + fields(e)["completion_tokens"] for e in calls) == 0
    assert [fields(e)["model"] for e in calls] == [
        fields(e)["model"] for e in first if e.event_type is EventType.ROLE_CALL
    ]

    status = await status_of(rerun_handle)
    assert status.rerun_of == request.build_id and status.live_roles == []
    page = f"/namespaces/default/workflows/build-{request.build_id}"
    assert f"**Re-run of:** [build {request.build_id}]({page})" in views.current_details(status)
    with Session(engine) as session:
        card, original_card = (
            score_of(session, workflow_id=rerun_handle.id),
            score_of(session, workflow_id=handle.id),
        )
    assert card and original_card
    assert card.rerun_of == request.build_id and card.tokens == 0
    # The whole card is the original's but what differs by design.
    assert comparable(card) == comparable(original_card)
    assert all(s.replayed == s.calls for s in card.roles.values())
    await save_history(rerun_handle, "rerun_no_live_roles")


async def test_a_live_role_that_leads_where_the_recording_has_no_answer(
    client: Client, worker: Settings, tmp_path: Path, engine: Engine
) -> None:
    handle, remote, _ = await original_build(client, worker, tmp_path)
    # The live Code Writer writes a real bug on its first attempt (the offline model's
    # simulation): the real tests fail, and the build loops back to a second attempt and a
    # second test run the original never had.
    choices, bug = RerunChoices(live=[Role.CODE_WRITER]), [Simulation.TESTS_FAIL_ONCE]
    _, stopped = await start_rerun(
        client, worker, handle.id, choices, user_id="pytest", simulate=bug
    )
    status = await wait_until(stopped, lambda s: s.state is S.NEEDS_ATTENTION, seconds=90)
    assert "has no answer for test_auditor's attempt 2 at testing" in (status.last_error or "")
    assert "--live-after-divergence" in (status.last_error or "")
    await stopped.signal(BuildWorkflow.abort, AbortRequest(reason="diverged"))
    with pytest.raises(WorkflowFailureError) as failed:
        await finished(stopped)
    assert "aborted by person: diverged" in str(failed.value.cause)

    choices = choices.model_copy(update={"live_after_divergence": True})
    rerun, went_on = await start_rerun(
        client, worker, handle.id, choices, user_id="pytest", simulate=bug
    )
    result = await finished(went_on)
    assert result.state is S.COMPLETE and result.loop_backs == 1
    calls = [e for e in await went_on.query(BuildWorkflow.event_log)
             if e.event_type is EventType.ROLE_CALL]  # fmt: skip
    replayed = [(e.triggered_by, fields(e)["attempt"], fields(e)["replayed"]) for e in calls]
    assert ("code_writer", 1, False) in replayed and ("code_writer", 2, False) in replayed
    assert ("test_auditor", 1, True) in replayed  # the original's answer to the same call
    assert ("test_auditor", 2, False) in replayed  # none recorded: asked live
    with Session(engine) as session:
        card = score_of(session, workflow_id=went_on.id)
        original = score_of(session, workflow_id=handle.id)
    assert card and original
    assert card.live_roles == ["code_writer"]
    assert card.loop_backs == {"tests failed": 1} and original.loop_backs == {}
    assert card.roles["code_writer"].replayed == 0 and card.roles["code_writer"].tokens > 0
    assert card.roles["q_assistant"].replayed == card.roles["q_assistant"].calls == 2
    assert git(remote, "rev-parse", f"build/{rerun.build_id}") == release_of(result).commit


async def test_a_rerun_of_no_build_is_refused_in_words(stack: Stack, client: Client) -> None:
    with pytest.raises(BuildNotFound, match="no build"):
        await original_of(client, f"nothing{uuid.uuid4().hex[:6]}")
    nobody = f"build-none{uuid.uuid4().hex[:6]}"
    missing = await stack.http.post(f"/api/workflows/{nobody}/rerun", json={})
    assert missing.status_code == 404 and "no build" in missing.json()["detail"]
    wrong = await stack.http.post("/api/workflows/build-x/rerun", json={"live": ["nobody"]})
    assert wrong.status_code == 422 and "live" in json.dumps(wrong.json())


async def test_a_rerun_started_through_the_api_is_followed_to_its_card(
    stack: Stack, client: Client, tmp_path: Path
) -> None:
    handle, _, _ = await original_build(client, stack.settings, tmp_path)
    body = {"user_id": "api-test", "live": ["code_writer"], "models": {"code_writer": "other"}}
    answer = await stack.http.post(f"/api/workflows/{handle.id}/rerun", json=body)
    assert answer.status_code == 201, answer.text
    started = answer.json()
    assert answer.headers["Location"] == started["status_url"]
    assert started["ui_url"].endswith(f"/workflows/{started['workflow_id']}")
    rerun = client.get_workflow_handle_for(BuildWorkflow.run, started["workflow_id"])
    assert (await finished(rerun)).state is S.COMPLETE
    score = await poll(stack.http, f"/api/workflows/{rerun.id}/score", lambda c: c["finished"])
    assert score["rerun_of"] == handle.id.removeprefix("build-")
    assert score["live_roles"] == ["code_writer"]
    assert score["roles"]["code_writer"]["models"] == ["other"]
    assert score["roles"]["code_writer"]["replayed"] == 0
    assert score["roles"]["q_assistant"]["replayed"] == score["roles"]["q_assistant"]["calls"]
    taken = await stack.http.post(f"/api/workflows/{handle.id}/rerun",
                                  json={"build_id": started["build_id"]})  # fmt: skip
    assert taken.status_code == 409, taken.text
