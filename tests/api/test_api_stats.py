"""Listing, paging and stats over the mirror, through the API: builds of one project in every
state, written straight into the mirror."""

from __future__ import annotations

import pytest

from core.states import BuildState
from db import crud
from tests.api_stack import Stack, mirrored_build, new_project

S = BuildState


async def test_stats_list_and_pagination_over_mirrored_builds(stack: Stack):
    project = new_project()
    batches = [
        mirrored_build(project, 1, S.COMPLETE, duration=30.0, loop_backs=1),
        mirrored_build(project, 2, S.COMPLETE, duration=90.0),
        mirrored_build(
            project,
            3,
            S.FAILED,
            loop_backs=3,
            failed_state=S.TESTING,
            failure_reason="retries exhausted: tests failed",
            last_error="retries exhausted: tests failed after 3 loop-backs",
        ),
        mirrored_build(
            project,
            4,
            S.FAILED,
            failed_state=S.DISCOVERY,
            failure_reason="q_assistant error: ModelRequestRejected",
            last_error="q_assistant failed in discovery: OPENAI_API_KEY rejected",
        ),
        mirrored_build(project, 5, S.CANCELLED),
        mirrored_build(project, 6, S.TESTING),
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
