"""The build's own deadline: when a build was started with an execution timeout, it ends itself
FAILED a margin before the server would end it. The server's timeout closes a workflow with no
last word (no FAILED event, no mirror write, its release turn never given back); the build's
own deadline records why it ended, mirrors it and leaves the queue in that margin.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import workflow

# Builds started after this patch carry their own deadline (a timer the older ones lack).
OWN_DEADLINE_PATCH = "own-deadline"
# Time kept back for the last records, the mirror write and leaving the release queue.
MARGIN = timedelta(seconds=60)


class Deadline:
    """`async with Deadline():` cancels what it wraps at the deadline; `expired` says whether
    it did. Without an execution timeout it is no timer at all."""

    def __init__(self) -> None:
        self.limit = workflow.info().execution_timeout
        self.margin = timedelta(0)
        self._timeout = asyncio.timeout(None)
        if self.limit and workflow.patched(OWN_DEADLINE_PATCH):
            self.margin = min(MARGIN, self.limit / 4)
            end = workflow.info().start_time + self.limit - self.margin
            self._timeout = asyncio.timeout(max(0.0, (end - workflow.now()).total_seconds()))

    async def __aenter__(self) -> Deadline:
        await self._timeout.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._timeout.__aexit__(*exc)  # type: ignore[arg-type]

    def expired(self) -> bool:
        return self._timeout.expired()

    def reason(self, state: str) -> str:
        limit = self.limit.total_seconds() if self.limit else 0
        return (
            f"the build's execution timeout of {limit:g}s (BUILD_EXECUTION_TIMEOUT_SECONDS) "
            f"was {self.margin.total_seconds():g}s away in {state}: the build ended itself, "
            "before the server would have ended it without a record"
        )
