"""Steering builds over HTTP: gates, retry, rollback, advance, abort and top-up, and the
answers a command gets when the build cannot take it."""

from __future__ import annotations

import uuid

from temporalio.client import Client

from core.states import BuildState
from tests.api_stack import Stack, at_gate, new_project, poll
from tests.helpers import make_request, running_worker, start
from workflows.build import BuildWorkflow

S = BuildState


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
        (e.seq, e.event_type.value, e.data.model_dump(mode="json")) for e in events
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
