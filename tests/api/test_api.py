"""The HTTP API through real HTTP: uvicorn serving the app, a real mirror (SQLite and
PostgreSQL), the real dev server and a worker. Starting and reading builds, the error
answers, stats, health, the API key, metrics."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from datetime import datetime, timedelta
from typing import Any

import pytest
from pydantic import SecretStr
from temporalio.client import Client
from temporalio.service import RPCError

from api.schemas import BuildStatusOut
from core.states import BuildState
from db import crud
from devtools.processes import free_port
from tests.api_stack import Stack, at_gate, mirrored_build, new_project, poll, serve_api
from tests.helpers import make_request, start
from workflows.build import BuildWorkflow

S = BuildState


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
    # One read model: the API's answer from the mirror is the workflow's own status query.
    queried = BuildStatusOut.of(
        await handle.query(BuildWorkflow.status),
        workflow_id=wf, source="mirror", ui_url=status["ui_url"],
        created_at=None, updated_at=None, completed_at=None,
    ).model_dump(mode="json")  # fmt: skip
    stamps = ("created_at", "updated_at", "completed_at")
    assert {k: v for k, v in status.items() if k not in stamps} == {
        k: v for k, v in queried.items() if k not in stamps
    }
    assert status["tests"]["run"] > 0
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
    by_model = {(m["role"], m["prompt_version"]): m for m in stats["by_model"]}
    writer = next(m for (role, _), m in by_model.items() if role == "code_writer")
    assert (writer["builds"], writer["completed"], writer["completion_rate"]) == (1, 1, 1.0)
    assert writer["calls"] == 2 and writer["model"] and writer["prompt_version"]
    assert sum(m["calls"] for m in stats["by_model"]) == sum(
        u["calls"] for u in status["usage"].values()
    )

    card = (await http.get(f"/api/workflows/{body['build_id']}/score")).json()
    assert (card["outcome"], card["finished"], card["loop_backs"]) == (
        "complete",
        True,
        {"tests failed": 1},
    )
    assert card["wall_seconds"] == pytest.approx(stats["average_duration_seconds"])
    assert card["tokens"] == status["tokens"] == sum(r["tokens"] for r in card["roles"].values())
    assert card["roles"]["code_writer"]["calls"] == 2
    assert card["roles"]["code_writer"]["attempts"] == status["attempts"]["implementation"]
    assert card["tests"]["failed"] == 0 and card["tests"]["passed"] == card["tests"]["run"] > 0


async def test_the_same_build_id_twice_gets_409(stack: Stack):
    project, build_id = new_project(), f"dup{uuid.uuid4().hex[:6]}"
    body = {"build_id": build_id, "requirements": "Add a health check"}
    first = await stack.http.post(f"/api/workflows/{project}/start", json=body)
    assert first.status_code == 201
    again = await stack.http.post(f"/api/workflows/{project}/start", json=body)
    assert again.status_code == 409
    said = again.json()["detail"]  # Temporal's refusal, or the mirror's if it has the build yet
    assert said.startswith(f"build {build_id} already exists") and "choose another" in said


async def test_a_build_id_temporal_forgot_but_the_mirror_or_answers_know_is_refused(
    stack: Stack, client: Client
):
    """Temporal forgets a closed build after its retention; the mirror and the kept answers do
    not, and a re-run of the old build replays the answers kept under its id."""
    from activities.model.answers import Key, open_store
    from core.feedback import ModelUsage
    from core.role_io import DiscoveryOutput
    from tests.db.test_mirror import _batch

    mirrored, answered = f"old{uuid.uuid4().hex[:6]}", f"old{uuid.uuid4().hex[:6]}"
    crud.record_batch(
        stack.engine, batch=_batch(f"build-{mirrored}", range(1, 3), BuildState.COMPLETE, 2)
    )
    open_store(stack.settings, stack.engine).put(
        Key(build_id=answered, role="q_assistant", attempt=1, request="r"),
        DiscoveryOutput(summary="s", requirements=["r"], acceptance_criteria=["a"]),
        ModelUsage(model="m", prompt_version="p"),
    )
    for build_id, said in ((mirrored, "the mirror has build"), (answered, "answers are kept")):
        body = {"build_id": build_id, "requirements": "Add a health check"}
        refused = await stack.http.post(f"/api/workflows/{new_project()}/start", json=body)
        assert refused.status_code == 409 and said in refused.json()["detail"], refused.text
        with pytest.raises(RPCError):  # nothing was started
            await client.get_workflow_handle(f"build-{build_id}").describe()


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


async def test_unknown_builds_get_404(stack: Stack):
    base = "/api/workflows/build-nosuchbuild"
    for method, path, body in [
        ("GET", "status", None),
        ("GET", "events", None),
        ("GET", "history", None),
        ("GET", "score", None),
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


async def test_health_checks(stack: Stack):
    assert (await stack.http.get("/healthz")).json() == {"status": "ok"}
    ready = await stack.http.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "checks": {"database": "ok", "temporal": "ok"}}


async def test_without_temporal_reads_still_work_and_the_rest_says_503(stack: Stack):
    down = stack.settings.model_copy(update={"temporal_address": f"127.0.0.1:{free_port()}"})
    project = new_project()
    crud.record_batch(stack.engine, batch=mirrored_build(project, 1, S.COMPLETE))
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


def test_no_route_waits_for_a_thread_but_its_one_read():
    """Every endpoint and dependency of the API's routes is `async def`: FastAPI runs a plain
    `def` in a worker thread, and each such hop waits for a core while builds run (the bench's
    p99 under load). The mirror's reads go through api.deps.Mirror, one hop each."""
    import inspect

    from fastapi.dependencies.models import Dependant
    from fastapi.dependencies.utils import get_dependant
    from fastapi.routing import APIRoute

    from api.deps import require_api_key
    from api.routes import evals, health, projects, reruns, steering, workflows

    def plain(dependant: Dependant) -> list[str]:
        call = dependant.call
        call = call if call is None or inspect.isfunction(call) else call.__call__  # type: ignore[operator]
        names = [] if call is None or inspect.iscoroutinefunction(call) else [call.__qualname__]
        return names + [n for sub in dependant.dependencies for n in plain(sub)]

    routers = (evals, health, projects, reruns, steering, workflows)
    routes = [r for m in routers for r in m.router.routes if isinstance(r, APIRoute)]
    assert len(routes) > 10
    assert {r.path: plain(r.dependant) for r in routes if plain(r.dependant)} == {}
    assert plain(get_dependant(path="/", call=require_api_key)) == []  # every router's guard


async def test_the_docs_page_needs_nothing_but_the_api(stack: Stack):
    """/docs loads Swagger UI's files from the API itself (swagger-ui-bundle), so it renders
    with the network off; FastAPI's default page fetches them from a CDN."""
    import re

    page = await stack.http.get("/docs")
    assert page.status_code == 200
    sources = re.findall(r"""(?:src|href)=["']([^"']+)["']""", page.text)
    sources += re.findall(r"""url: ?["']([^"']+)["']""", page.text)
    assert sources and all(s.startswith("/") for s in sources), sources
    for source in sources:
        assert (await stack.http.get(source)).status_code == 200, source
    assert (await stack.http.get("/redoc")).status_code == 404  # it would need a CDN
