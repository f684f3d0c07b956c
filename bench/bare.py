"""The benchmark's baseline: a bare Temporal workflow that runs `steps` activities in a row, each
echoing its payload, and nothing else (no mirror, no state, no search attributes)."""

from __future__ import annotations

from datetime import timedelta

from temporalio import activity, workflow


@activity.defn(name="bare_step")
async def bare_step(payload: str) -> str:
    return payload


@workflow.defn(name="BareWorkflow")
class BareWorkflow:
    @workflow.run
    async def run(self, steps: int, payload: str) -> int:
        for _ in range(steps):
            await workflow.execute_activity(
                bare_step, payload, start_to_close_timeout=timedelta(seconds=60)
            )
        return steps
