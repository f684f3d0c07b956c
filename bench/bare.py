"""The benchmark's baseline: a bare Temporal workflow that runs `steps` activities in a row, each
echoing its payload, and nothing else (no mirror, no state, no search attributes).

With `upsert`, it also sets one search attribute before each step, as a build keeps its state
current for the Web UI: a reference row that shows what the live search attributes cost."""

from __future__ import annotations

from datetime import timedelta

from temporalio import activity, workflow
from temporalio.common import SearchAttributeKey

STEP = SearchAttributeKey.for_keyword("BuildState")  # registered by the bench's dev server


@activity.defn(name="bare_step")
async def bare_step(payload: str) -> str:
    return payload


@workflow.defn(name="BareWorkflow")
class BareWorkflow:
    @workflow.run
    async def run(self, steps: int, payload: str, upsert: bool = False) -> int:
        for step in range(steps):
            if upsert:
                workflow.upsert_search_attributes([STEP.value_set(f"step-{step}")])
            await workflow.execute_activity(
                bare_step, payload, start_to_close_timeout=timedelta(seconds=60)
            )
        return steps
