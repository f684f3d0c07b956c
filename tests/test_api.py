"""The HTTP API through real HTTP: uvicorn serving the app, a real mirror (SQLite and
PostgreSQL), the real dev server and a worker. Every endpoint's success and error cases."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import uvicorn
from pydantic import SecretStr
from sqlalchemy import Engine
from temporalio.client import Client

from api.main import create_app
from core.models import BuildSnapshot, MirrorBatch
from core.settings import Settings
from core.states import BuildState
from db import crud
from devtools.processes import free_port
from tests.helpers import make_request, running_worker, start
from workflows.build import BuildWorkflow

S = BuildState


@asynccontextmanager
async def serve_api(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The real app under uvicorn on a free port, and an HTTP client for it."""
    port = free_port()
    config = uvicorn.Config(
        create_app(settings), host="127.0.0.1", port=port, log_level="warning", lifespan="on"
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    async with asyncio.timeout(20):
        while not server.started:
            assert not task.done(), "uvicorn exited at start"
            await asyncio.sleep(0.02)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            yield http
    finally:
        server.should_exit = True
        await task


@dataclass
class Stack:
    http: httpx.AsyncClient
    settings: Settings
    engine: Engine


@pytest.fixture(scope="module")
async def stack(client: Client, base_settings: Settings, mirror_db: Engine) -> AsyncIterator[Stack]:
    """API + worker on one task queue and one mirror database (each test module param: DB)."""
    settings = base_settings.model_copy(
        update={
            "temporal_task_queue": f"api-{uuid.uuid4().hex[:8]}",
            "database_url": mirror_db.url.render_as_string(hide_password=False),
        }
    )
    async with running_worker(client, settings, mirror_db), serve_api(settings) as http:
        yield Stack(http, settings, mirror_db)


def new_project() -> str:
    return f"p-{uuid.uuid4().hex[:8]}"


async def poll(http: httpx.AsyncClient, path: str, check: Callable[[Any], bool]) -> Any:
    async with asyncio.timeout(30):
        while True:
            answer = await http.get(path)
            if answer.status_code == 200 and check(answer.json()):
                return answer.json()
            await asyncio.sleep(0.05)


def at_gate(gate: str) -> Callable[[Any], bool]:
    return lambda status: status["waiting_for"] == f"approval at {gate}"


async def test_a_build_started_over_http_completes_and_reads_back_exactly(
    stack: Stack, client: Client
):
    http, project = stack.http, new_project()
    started = await http.post(
        f"/api/workflows/{project}/start",
        json={
            "requirements": {"feature": "Dark mode"},
            "user_id": "ana",
            "options": {"simulate": ["tests_fail_once"]},
        },
    )
    assert started.status_code == 201, started.text
    body = started.json()
    wf = body["workflow_id"]
    assert wf == f"build-{body['build_id']}" and body["project_id"] == project
    assert (body["initial_state"], body["next_role"]) == ("discovery", "q_assistant")
    assert body["ui_url"].endswith(f"/namespaces/default/workflows/{wf}")
    assert started.headers["location"] == body["status_url"] == f"/api/workflows/{wf}/status"

    status = await poll(http, body["status_url"], lambda s: s["current_state"] == "complete")
    assert status["source"] == "mirror" and status["user_id"] == "ana"
    assert status["progress"] == {"percentage": 100, "completed_phases": 6, "total_phases": 6}
    assert status["attempts"]["implementation"] == 2 and status["loop_backs"] == 1
    assert status["completed_at"] is not None and status["waiting_for"] is None
    assert status["usage"]["code_writer"]["calls"] == 2 and status["tokens"] > 0
    assert status["cost_usd"] == pytest.approx(sum(u["cost_usd"] for u in status["usage"].values()))
    for stamp in ("created_at", "updated_at", "completed_at"):  # UTC, on SQLite too
        assert datetime.fromisoformat(status[stamp]).utcoffset() == timedelta(0)

    handle = client.get_workflow_handle_for(BuildWorkflow.run, wf)
    events = await handle.query(BuildWorkflow.event_log, 0)
    page = (await http.get(f"/api/workflows/{wf}/events")).json()
    assert [(e["seq"], e["event_type"], e["state"]) for e in page["events"]] == [
        (e.seq, e.event_type.value, e.state.value) for e in events
    ]
    assert page["next_after_seq"] == len(events) == status["as_of_seq"]
    tail = (await http.get(f"/api/workflows/{body['build_id']}/events?after_seq=5&limit=3")).json()
    assert [e["seq"] for e in tail["events"]] == [6, 7, 8] and tail["next_after_seq"] == 8

    history = (await http.get(f"/api/workflows/{wf}/history")).json()["handoffs"]
    handoffs = await handle.query(BuildWorkflow.handoff_log)
    assert [(h["seq"], h["from_role"], h["to_role"]) for h in history] == [
        (h.seq, h.from_role.value, h.to_role.value) for h in handoffs
    ]
    assert history[0]["data_transferred"]["instructions"]

    listed = (await http.get("/api/workflows", params={"project_id": project})).json()
    assert listed["total"] == 1 and listed["items"][0]["workflow_id"] == wf
    stats = (await http.get(f"/api/workflows/project/{project}/stats")).json()
    assert stats["total"] == 1 and stats["by_state"] == {"complete": 1}
    assert stats["completion_rate"] == 1.0 and stats["retries_per_build"] == 1.0
    assert stats["average_duration_seconds"] > 0 and stats["failure_analysis"] == []
    assert (stats["tokens"], stats["cost_usd"]) == (status["tokens"], status["cost_usd"])
    assert stats["cost_per_build_usd"] == status["cost_usd"]
    assert stats["by_role"]["code_writer"]["calls"] == 2
    assert isinstance(stats["by_role"]["code_writer"]["tokens"], int)
    assert stats["by_role"]["code_writer"]["cost_usd"] == status["usage"]["code_writer"]["cost_usd"]


async def test_the_same_build_id_twice_gets_409(stack: Stack):
    project, build_id = new_project(), f"dup{uuid.uuid4().hex[:6]}"
    body = {"build_id": build_id, "requirements": "Add a health check"}
    first = await stack.http.post(f"/api/workflows/{project}/start", json=body)
    assert first.status_code == 201
    again = await stack.http.post(f"/api/workflows/{project}/start", json=body)
    assert again.status_code == 409
    assert again.json()["detail"] == f"build {build_id} already exists; choose another build id"


@pytest.mark.parametrize(
    ("body", "complaint"),
    [
        ({}, "requirements"),
        ({"requirements": ""}, "requirements"),
        ({"requirements": "   "}, "requirements must not be empty"),
        ({"requirements": {}}, "requirements"),
        ({"requirements": "x" * 20_001}, "at most 20000 characters"),
        ({"requirements": {"x": "y" * 20_000}}, "requirements is 20009 characters; at most 20000"),
        ({"requirements": "x", "build_id": "../etc"}, "build_id"),
        ({"requirements": "x", "options": {"approval_gates": ["testing"]}}, "handoff states"),
        ({"requirements": "x", "options": {"max_retries": -1}}, "max_retries"),
        ({"requirements": "x", "options": {"simulate": ["explode"]}}, "simulate"),
        ({"requirements": "x", "colour": "red"}, "colour"),
    ],
)
async def test_a_malformed_start_gets_422_with_the_reason(
    stack: Stack, body: dict[str, Any], complaint: str
):
    answer = await stack.http.post(f"/api/workflows/{new_project()}/start", json=body)
    assert answer.status_code == 422
    assert complaint in answer.text


async def test_steering_a_build_at_its_gates(stack: Stack, client: Client):
    http = stack.http
    gates = ["handoff_to_tester", "handoff_to_releaser"]
    started = await http.post(
        f"/api/workflows/{new_project()}/start",
        json={"requirements": "CSV export", "options": {"approval_gates": gates}},
    )
    wf = started.json()["workflow_id"]
    base = f"/api/workflows/{wf}"
    await poll(
        http, f"{base}/status", lambda s: s["waiting_for"] == "approval at handoff_to_tester"
    )

    forward = await http.post(
        f"{base}/rollback", json={"target_state": "deployment", "reason": "?"}
    )
    assert forward.status_code == 409
    assert "cannot roll back forward from handoff_to_tester" in forward.json()["detail"]
    retry = await http.post(f"{base}/request-retry", json={"reason": "use a streaming writer"})
    assert retry.status_code == 202
    assert retry.json() == {
        "workflow_id": wf,
        "retry_requested": True,
        "from_state": "handoff_to_tester",
        "target_state": "implementation",
        "applies": "now",
    }
    # Read after write: the answer leaves once the mirror shows the command's effect.
    now = (await http.get(f"{base}/status")).json()
    assert now["current_state"] == "implementation" and now["waiting_for"] is None, now
    assert now["attempts"]["implementation"] == 2 and now["source"] == "mirror"
    await poll(
        http, f"{base}/status", lambda s: s["waiting_for"] == "approval at handoff_to_tester"
    )
    status = (await http.get(f"{base}/status")).json()
    assert status["attempts"]["implementation"] == 2

    advanced = await http.post(
        f"{base}/advance",
        json={"role": "test_auditor", "notes": "ready", "phase_result": {"fixtures": "csv"}},
    )
    assert advanced.status_code == 200, advanced.text
    assert (
        advanced.json()["state"] == "testing" and advanced.json()["advanced_by"] == "test_auditor"
    )
    now = (await http.get(f"{base}/status")).json()
    assert now["current_state"] == "testing" and now["waiting_for"] is None, now

    await poll(http, f"{base}/status", lambda s: s["current_state"] == "handoff_to_releaser")
    rollback = await http.post(
        f"{base}/rollback", json={"target_state": "planning", "reason": "rethink the format"}
    )
    assert rollback.status_code == 202 and rollback.json()["target_state"] == "planning"
    await poll(
        http, f"{base}/status", lambda s: s["waiting_for"] == "approval at handoff_to_tester"
    )
    for gate in gates:
        await poll(http, f"{base}/status", at_gate(gate))
        assert (await http.post(f"{base}/advance", json={"role": "person"})).status_code == 422
        ok = await http.post(f"{base}/advance", json={"role": "release_manager"})
        assert ok.status_code == 200, ok.text
    done = await poll(http, f"{base}/status", lambda s: s["current_state"] == "complete")
    assert done["attempts"]["planning"] == 2

    nothing = await http.post(f"{base}/advance", json={"role": "release_manager"})
    assert nothing.status_code == 409 and "has finished" in nothing.json()["detail"]
    late = await http.post(f"{base}/request-retry", json={"reason": "again"})
    assert late.status_code == 409 and "has finished" in late.json()["detail"]
    mirrored = (await http.get(f"{base}/events")).json()["events"]
    kinds = [e["event_type"] for e in mirrored]
    assert kinds.count("approved") == 3 and "retry_requested" in kinds and "rollback" in kinds
    handle = client.get_workflow_handle_for(BuildWorkflow.run, wf)
    events = await handle.query(BuildWorkflow.event_log, 0)
    assert [(e["seq"], e["event_type"], e["event_data"]) for e in mirrored] == [
        (e.seq, e.event_type.value, e.model_dump(mode="json")["data"]) for e in events
    ]
    approved = next(e for e in mirrored if e["event_type"] == "approved")
    assert approved["triggered_by"] == "test_auditor"
    assert approved["event_data"]["phase_result"] == {"fixtures": "csv"}


async def test_commands_a_running_phase_cannot_take_get_409_with_the_reason(
    stack: Stack, client: Client
):
    slow = stack.settings.model_copy(
        update={
            "temporal_task_queue": f"slow-{uuid.uuid4().hex[:8]}",
            "offline_model_latency_seconds": 5.0,  # a wide window; the build is terminated
        }
    )
    async with running_worker(client, slow, stack.engine):
        handle = await start(client, slow, make_request())
        base = f"/api/workflows/{handle.id}"
        # The mirror is written just before each role call: DISCOVERY's call has begun.
        await poll(stack.http, f"{base}/status", lambda s: s["source"] == "mirror")
        advance = await stack.http.post(f"{base}/advance", json={"role": "q_assistant"})
        assert advance.status_code == 409
        assert advance.json()["detail"] == "nothing waits for approval (build is at discovery)"
        retry = await stack.http.post(f"{base}/request-retry", json={"reason": "again"})
        assert retry.status_code == 409
        assert retry.json()["detail"].startswith("nothing to retry at discovery")
        await handle.terminate("test over")


async def test_a_build_paused_for_its_budget_is_topped_up_over_http(stack: Stack):
    http = stack.http
    started = await http.post(
        f"/api/workflows/{new_project()}/start",
        json={"requirements": "CSV export", "options": {"max_tokens": 800}},
    )
    base = f"/api/workflows/{started.json()['workflow_id']}"
    paused = await poll(http, f"{base}/status", lambda s: s["current_state"] == "budget_exhausted")
    assert paused["waiting_for"].startswith("a budget top-up (") and paused["tokens"] >= 800
    assert (await http.post(f"{base}/top-up", json={})).status_code == 422
    topped = await http.post(f"{base}/top-up", json={"tokens": 1_000_000, "note": "ok"})
    assert topped.status_code == 200, topped.text
    assert topped.json()["resumes"] and topped.json()["max_tokens"] == 1_000_800
    await poll(http, f"{base}/status", lambda s: s["current_state"] == "complete")
    late = await http.post(f"{base}/top-up", json={"tokens": 1})
    assert late.status_code == 409 and "has finished" in late.json()["detail"]


async def test_a_build_that_needs_attention_is_aborted_over_http(stack: Stack):
    http = stack.http
    started = await http.post(
        f"/api/workflows/{new_project()}/start",
        json={"requirements": "CSV export", "options": {"simulate": ["tests_always_fail"]}},
    )
    base = f"/api/workflows/{started.json()['workflow_id']}"
    asking = await poll(http, f"{base}/status", lambda s: s["current_state"] == "needs_attention")
    assert asking["waiting_for"].startswith("a person: tests failed twice the same way")
    assert (await http.post(f"{base}/abort", json={})).status_code == 422
    aborted = await http.post(f"{base}/abort", json={"reason": "rethink", "requested_by": "ana"})
    assert aborted.status_code == 202 and aborted.json()["applies"] == "now"
    done = await poll(http, f"{base}/status", lambda s: s["current_state"] == "failed")
    assert done["last_error"] == "aborted by ana: rethink" and done["failure_reason"] == "aborted"
    assert done["failed_state"] == "needs_attention"


async def test_unknown_builds_get_404(stack: Stack):
    base = "/api/workflows/build-nosuchbuild"
    for method, path, body in [
        ("GET", "status", None),
        ("GET", "events", None),
        ("GET", "history", None),
        ("POST", "advance", {"role": "q_assistant"}),
        ("POST", "request-retry", {"reason": "x"}),
        ("POST", "rollback", {"target_state": "planning", "reason": "x"}),
        ("POST", "top-up", {"tokens": 10}),
        ("POST", "abort", {"reason": "x"}),
    ]:
        answer = await stack.http.request(method, f"{base}/{path}", json=body)
        assert answer.status_code == 404, (path, answer.text)
        assert answer.json()["detail"] == "no build nosuchbuild (workflow build-nosuchbuild)"


async def test_malformed_commands_get_422(stack: Stack):
    base = "/api/workflows/build-whatever"
    cases = [
        ("request-retry", {}),
        ("request-retry", {"reason": ""}),
        ("rollback", {"target_state": "yesterday", "reason": "x"}),
        ("rollback", {"reason": "x"}),
        ("advance", {"role": "intern"}),
        ("advance", {"role": "q_assistant", "notes": "x" * 2001}),
        ("advance", {"role": "q_assistant", "phase_result": {"log": "x" * 20_000}}),
    ]
    for path, body in cases:
        answer = await stack.http.post(f"{base}/{path}", json=body)
        assert answer.status_code == 422, (path, body, answer.text)
    assert (await stack.http.post(f"{base}/advance", content=b"{not json")).status_code == 422
    huge = await stack.http.get(f"{base}/events", params={"after_seq": 2**63 + 1})
    assert huge.status_code == 422


async def test_a_build_no_worker_has_picked_up_is_answered_from_temporal(
    stack: Stack, client: Client
):
    idle = stack.settings.model_copy(update={"temporal_task_queue": f"idle-{uuid.uuid4().hex}"})
    handle = await start(client, idle, make_request(project="waiting"))
    try:
        status = (await stack.http.get(f"/api/workflows/{handle.id}/status")).json()
        assert status["source"] == "temporal"
        assert (status["current_state"], status["project_id"]) == ("discovery", "waiting")
        events = await stack.http.get(f"/api/workflows/{handle.id}/events")
        assert events.status_code == 200 and events.json()["events"] == []
    finally:
        await handle.terminate("test over")


async def test_a_command_no_worker_answers_gets_503_not_a_hang(stack: Stack, client: Client):
    idle = stack.settings.model_copy(update={"temporal_task_queue": f"idle-{uuid.uuid4().hex}"})
    handle = await start(client, idle, make_request())
    impatient = stack.settings.model_copy(update={"command_timeout_seconds": 1.0})
    try:
        async with serve_api(impatient) as http:
            retry = await http.post(
                f"/api/workflows/{handle.id}/request-retry", json={"reason": "x"}
            )
            assert retry.status_code == 503
            assert "no worker answered" in retry.json()["detail"]
    finally:
        await handle.terminate("test over")


def _snapshot(project: str, n: int, state: BuildState, **fields: Any) -> MirrorBatch:
    start_time = datetime(2026, 1, 1, tzinfo=UTC)
    finished = state in (S.COMPLETE, S.FAILED, S.CANCELLED)
    duration = fields.pop("duration", 60.0)
    return MirrorBatch(
        snapshot=BuildSnapshot(
            build_id=f"{project}-{n}",
            workflow_id=f"build-{project}-{n}",
            project_id=project,
            user_id="u",
            requirements="r",
            state=state,
            current_role=None,
            attempts={},
            loop_backs=fields.pop("loop_backs", 0),
            last_error=fields.pop("last_error", None),
            created_at=start_time + timedelta(minutes=n),
            updated_at=start_time + timedelta(minutes=n),
            completed_at=start_time if finished else None,
            duration_seconds=duration if finished else None,
            last_seq=1,
            **fields,
        ),
        events=[],
        handoffs=[],
    )


async def test_stats_list_and_pagination_over_mirrored_builds(stack: Stack):
    project = new_project()
    batches = [
        _snapshot(project, 1, S.COMPLETE, duration=30.0, loop_backs=1),
        _snapshot(project, 2, S.COMPLETE, duration=90.0),
        _snapshot(
            project,
            3,
            S.FAILED,
            loop_backs=3,
            failed_state=S.TESTING,
            failure_reason="retries exhausted: tests failed",
            last_error="retries exhausted: tests failed after 3 loop-backs",
        ),
        _snapshot(
            project,
            4,
            S.FAILED,
            failed_state=S.DISCOVERY,
            failure_reason="q_assistant error: ModelRequestRejected",
            last_error="q_assistant failed in discovery: OPENAI_API_KEY rejected",
        ),
        _snapshot(project, 5, S.CANCELLED),
        _snapshot(project, 6, S.TESTING),
    ]
    for batch in batches:
        crud.record_batch(stack.engine, batch=batch)
    stats = (await stack.http.get(f"/api/workflows/project/{project}/stats")).json()
    assert stats["total"] == 6 and stats["finished"] == 5
    assert stats["by_state"] == {"cancelled": 1, "complete": 2, "failed": 2, "testing": 1}
    assert stats["completion_rate"] == pytest.approx(2 / 5)
    assert stats["average_duration_seconds"] == pytest.approx(60.0)
    assert stats["retries_per_build"] == pytest.approx(4 / 6)
    assert sorted(
        (f["failed_state"], f["failure_reason"], f["builds"]) for f in stats["failure_analysis"]
    ) == [
        ("discovery", "q_assistant error: ModelRequestRejected", 1),
        ("testing", "retries exhausted: tests failed", 1),
    ]
    empty = (await stack.http.get(f"/api/workflows/project/{new_project()}/stats")).json()
    assert empty["total"] == 0 and empty["completion_rate"] is None

    page = (
        await stack.http.get("/api/workflows", params={"project_id": project, "limit": 4})
    ).json()
    assert page["total"] == 6 and [b["build_id"] for b in page["items"]] == [
        f"{project}-{n}" for n in (6, 5, 4, 3)
    ]
    rest = await stack.http.get(
        "/api/workflows", params={"project_id": project, "limit": 4, "offset": 4}
    )
    assert [b["build_id"] for b in rest.json()["items"]] == [f"{project}-2", f"{project}-1"]
    failed = await stack.http.get(
        "/api/workflows", params={"project_id": project, "state": "failed"}
    )
    assert failed.json()["total"] == 2
    assert {b["failed_state"] for b in failed.json()["items"]} == {"testing", "discovery"}
    for params in (
        {"state": "sleeping"},
        {"limit": 0},
        {"limit": 501},
        {"offset": -1},
        {"offset": 2**70},
    ):
        assert (await stack.http.get("/api/workflows", params=params)).status_code == 422


async def test_health_checks(stack: Stack):
    assert (await stack.http.get("/healthz")).json() == {"status": "ok"}
    ready = await stack.http.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "checks": {"database": "ok", "temporal": "ok"}}


async def test_without_temporal_reads_still_work_and_the_rest_says_503(stack: Stack):
    down = stack.settings.model_copy(update={"temporal_address": f"127.0.0.1:{free_port()}"})
    project = new_project()
    crud.record_batch(stack.engine, batch=_snapshot(project, 1, S.COMPLETE))
    async with serve_api(down) as http:
        assert (await http.get("/healthz")).status_code == 200
        ready = await http.get("/readyz")
        assert ready.status_code == 503 and ready.json()["checks"]["database"] == "ok"
        assert ready.json()["checks"]["temporal"].startswith("unavailable")
        status = await http.get(f"/api/workflows/build-{project}-1/status")
        assert status.status_code == 200 and status.json()["current_state"] == "complete"
        started = await http.post(f"/api/workflows/{project}/start", json={"requirements": "x"})
        assert started.status_code == 503
        assert "Temporal is unreachable" in started.json()["detail"]


async def test_an_api_key_guards_everything_but_the_health_checks(stack: Stack):
    keyed = stack.settings.model_copy(update={"api_key": SecretStr("s3cret")})
    async with serve_api(keyed) as http:
        assert (await http.get("/healthz")).status_code == 200
        assert (await http.get("/readyz")).status_code == 200
        denied = await http.get("/api/workflows")
        assert denied.status_code == 401 and "API key" in denied.json()["detail"]
        wrong = await http.get("/api/workflows", headers={"X-API-Key": "guess"})
        assert wrong.status_code == 401
        assert (
            await http.post(f"/api/workflows/{new_project()}/start", json={})
        ).status_code == 401
        assert (
            await http.get("/api/workflows", headers={"X-API-Key": "s3cret"})
        ).status_code == 200
        bearer = {"Authorization": "Bearer s3cret"}
        assert (await http.get("/api/workflows", headers=bearer)).status_code == 200


def scrape(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    from prometheus_client.parser import text_string_to_metric_families

    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_metrics_count_builds_requests_and_temporal_calls(stack: Stack):
    http = stack.http

    async def builds_by_state() -> dict[str, float]:
        answer = await http.get("/metrics")
        assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/plain")
        samples = scrape(answer.text)
        return {dict(k)["state"]: v for (n, k), v in samples.items() if n == "qao_builds"}

    def in_sql() -> dict[str, int]:
        with stack.engine.connect() as conn:
            rows = conn.exec_driver_sql("SELECT current_state FROM build_workflows").all()
        return dict(Counter(r[0] for r in rows))

    async def agreeing() -> dict[str, float]:
        """The gauge and a SQL count read a moment apart: retried while some build moves."""
        for _ in range(50):
            gauge = await builds_by_state()
            if {k: v for k, v in gauge.items() if v} == in_sql():
                return gauge
            await asyncio.sleep(0.1)
        raise AssertionError(f"gauge {gauge} never matched the mirror {in_sql()}")

    before = await agreeing()
    started = await http.post(f"/api/workflows/{new_project()}/start", json={"requirements": "x"})
    assert started.status_code == 201
    wf = started.json()["workflow_id"]
    await poll(http, f"/api/workflows/{wf}/status", lambda s: s["current_state"] == "complete")
    after = await agreeing()
    assert after["complete"] >= before.get("complete", 0) + 1
    assert set(after) == {s.value for s in S}  # every state is reported, 0 included

    samples = scrape((await http.get("/metrics")).text)
    status_calls = sum(
        v
        for (n, labels), v in samples.items()
        if n == "qao_api_request_duration_seconds_count"
        and ("route", "/api/workflows/{workflow_id}/status") in labels
        and ("status", "200") in labels
    )
    assert status_calls >= 1
    # The API's own Temporal client: its StartWorkflowExecution call is counted.
    starts = [
        v
        for (n, labels), v in samples.items()
        if n.startswith("temporal_request") and ("operation", "StartWorkflowExecution") in labels
    ]
    assert starts and sum(starts) >= 1, [k for k in samples if "temporal" in k[0]][:5]
    usage = {dict(k)["role"]: v for (n, k), v in samples.items() if n == "qao_role_calls_total"}
    assert usage.get("code_writer", 0) >= 1


async def test_unpaired_surrogates_get_422_and_nothing_happens(stack: Stack):
    """Valid JSON, invalid Unicode (found by schemathesis): refused before anything is sent."""
    http, project = stack.http, new_project()
    bad = b'{"requirements": {"feature": "dark \\udbff mode"}, "build_id": "surrogate-1"}'
    started = await http.post(
        f"/api/workflows/{project}/start",
        content=bad,
        headers={"Content-Type": "application/json"},
    )
    assert started.status_code == 422 and "surrogates" in started.json()["detail"]
    assert (await http.get("/api/workflows/build-surrogate-1/status")).status_code == 404
    gated = await http.post(
        f"/api/workflows/{project}/start",
        json={"requirements": "x", "options": {"approval_gates": ["handoff_to_coder"]}},
    )
    wf = gated.json()["workflow_id"]
    await poll(http, f"/api/workflows/{wf}/status", at_gate("handoff_to_coder"))
    aborted = await http.post(
        f"/api/workflows/{wf}/abort",
        content=b'{"reason": "\\ud800"}',
        headers={"Content-Type": "application/json"},
    )
    assert aborted.status_code == 422
    status = (await http.get(f"/api/workflows/{wf}/status")).json()
    assert status["current_state"] == "handoff_to_coder" and status["pending_command"] is None
    assert (
        await http.post(f"/api/workflows/{wf}/abort", json={"reason": "done"})
    ).status_code == 202
