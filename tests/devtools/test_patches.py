"""`python -m devtools.patches`: the patch ids of the code, the open runs that may be on a
patch's old path (counted on the real server by the marker's search attribute), and the
recorded histories that carry each marker."""

from __future__ import annotations

import asyncio
import base64
import json
import re
from pathlib import Path

from temporalio.client import Client

from devtools import patches
from devtools.patches import Count, Patch
from tests.helpers import make_request, start, wait_until
from workflows import build, deadline, evals, project, records


def constants() -> set[str]:
    return {
        value
        for module in (build, deadline, evals, project, records)
        for name, value in vars(module).items()
        if name.endswith("_PATCH")
    }


def test_every_patch_constant_of_the_workflows_is_found_with_its_call():
    found = patches.patches()
    assert {p.id for p in found} == constants()
    assert all(p.call in ("patched", "deprecate_patch") for p in found)
    queue = next(p for p in found if p.id == "grant-on-enqueue")
    assert (queue.module, queue.workflow) == ("workflows/project.py", "ProjectWorkflow")


def test_a_history_names_the_markers_it_recorded(tmp_path: Path):
    def marker(patch_id: str) -> dict[str, object]:
        data = base64.b64encode(json.dumps({"id": patch_id, "deprecated": False}).encode())
        payload = {"metadata": {}, "data": data.decode()}
        return {
            "markerRecordedEventAttributes": {
                "markerName": "core_patch",
                "details": {"patch-data": {"payloads": [payload]}},
            }
        }

    (tmp_path / "v1").mkdir()
    events = [marker("a"), {"activityTaskScheduledEventAttributes": {}}, marker("b")]
    (tmp_path / "v1" / "x.json").write_text(json.dumps({"events": events}))
    (tmp_path / "v1" / "y.json").write_text(json.dumps({"events": []}))
    assert patches.recorded(tmp_path) == {"v1/x": {"a", "b"}, "v1/y": set()}
    every = set().union(*patches.recorded().values())
    assert every <= constants() and "release-queue" in every  # the real histories


def test_the_rule_keeps_a_patch_while_a_run_may_be_on_its_old_path():
    live = Patch("p", "workflows/build.py", "patched")
    assert patches.verdict(live, Count(open=3, marked=1), 2).startswith("keep: 2 open runs")
    assert patches.verdict(live, Count(open=3, marked=3), 2).startswith("may be deprecated")
    gone = Patch("p", "workflows/build.py", "deprecate_patch")
    assert "stays while 2 kept history folders" in patches.verdict(gone, Count(0, 0), 2)
    assert "the call may go" in patches.verdict(gone, Count(0, 0), 0)


async def test_open_runs_are_counted_with_and_without_each_marker(client: Client, worker):
    """A build waiting at the gate before DEPLOYMENT has passed `project-repositories` (its
    marker is searchable) and not yet reached `release-queue`."""
    handle = await start(client, worker, make_request(approval_gates=["handoff_to_releaser"]))
    await wait_until(handle, lambda s: s.waiting_for is not None, seconds=60)
    narrow = f"TaskQueue = '{worker.temporal_task_queue}'"
    opened = Patch("project-repositories", "workflows/build.py", "patched")
    queued = Patch("release-queue", "workflows/build.py", "patched")
    async with asyncio.timeout(30):  # visibility follows the history a moment later
        while (await patches.count(client, opened, narrow)).marked != 1:  # noqa: ASYNC110
            await asyncio.sleep(0.2)
    assert await patches.count(client, opened, narrow) == Count(open=1, marked=1)
    assert await patches.count(client, queued, narrow) == Count(open=1, marked=0)
    table = patches.report([opened, queued], [Count(1, 1), Count(1, 0)], patches.recorded())
    lines = table.splitlines()
    assert re.match(r"project-repositories\s+workflows/build.py\s+patched\s+1\s+0\s", lines[1])
    assert lines[1].endswith("may be deprecated: no open run can be on the old path")
    assert lines[2].endswith("keep: 1 open runs may be on the old path")
    await handle.terminate("test over")
