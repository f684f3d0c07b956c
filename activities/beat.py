"""Heartbeats during long activity steps, often enough for the activity's heartbeat timeout: a
step that outlasts the timeout in silence would be retried elsewhere while it still runs."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from temporalio import activity

R = TypeVar("R")
HEARTBEAT_SECONDS = 5.0


def interval(default: float = HEARTBEAT_SECONDS) -> float:
    """Seconds between heartbeats: `default`, or a third of the heartbeat timeout if shorter."""
    if activity.in_activity():
        timeout = activity.info().heartbeat_timeout
        if timeout:
            return max(0.05, min(default, timeout.total_seconds() / 3))
    return default


async def beating(call: Awaitable[R], detail: str) -> R:
    """Await `call`; inside an activity, heartbeat while it runs."""
    if not activity.in_activity():
        return await call
    task = asyncio.ensure_future(call)
    started = time.monotonic()
    every = interval()
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=every)
            if done:
                return task.result()
            activity.heartbeat(f"{detail} for {time.monotonic() - started:.0f}s")
    except asyncio.CancelledError:
        task.cancel()
        raise


async def in_thread(detail: str, fn: Callable[..., R], *args: Any) -> R:
    """Blocking work (git, files) off the event loop, heartbeating while it runs."""
    return await beating(asyncio.to_thread(fn, *args), detail)
