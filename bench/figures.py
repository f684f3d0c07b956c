"""The bench's figures: percentiles, the API's own request histogram, the worker's RSS,
schedule-to-start delays, the API load, and the table they are printed in."""

from __future__ import annotations

import asyncio
import gc
import math
import os
import platform
import random
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowHandle

from bench.engine import RECORDED
from client.builds import BuildHandle

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Row:
    measure: str
    ours: str
    baseline: str
    ratio: str
    target: str
    met: bool | None


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


STATUS_ROUTE = "/api/workflows/{workflow_id}/status"


def server_side(answer: httpx.Response) -> dict[float, float]:
    """Cumulative bucket counts of the status route's request histogram: {upper bound: count}."""
    from prometheus_client.parser import text_string_to_metric_families

    buckets: dict[float, float] = {}
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            if sample.name.endswith("_bucket") and sample.labels.get("route") == STATUS_ROUTE:
                bound = float(sample.labels["le"])
                buckets[bound] = buckets.get(bound, 0) + sample.value
    return buckets


def histogram_p99(buckets: dict[float, float]) -> float:
    total = buckets.get(float("inf"), 0)
    for bound in sorted(buckets):
        if buckets[bound] >= 0.99 * total:
            return bound
    return float("inf")


def rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


async def history_size(handle: WorkflowHandle[Any, Any]) -> tuple[int, int]:
    """A closed workflow's history: its events, and their bytes as the server stores them."""
    events = size = 0
    async for event in handle.fetch_history_events():
        events += 1
        size += event.ByteSize()
    return events, size


async def schedule_to_start(handle: BuildHandle) -> list[float]:
    """Seconds from scheduled to started, for each role activity of the build."""
    scheduled: dict[int, tuple[str, datetime]] = {}
    delays = []
    async for event in handle.fetch_history_events():
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            name = event.activity_task_scheduled_event_attributes.activity_type.name
            scheduled[event.event_id] = (name, event.event_time.ToDatetime())
        elif event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
            attrs = event.activity_task_started_event_attributes
            name, at = scheduled[attrs.scheduled_event_id]
            if name in RECORDED:
                delays.append((event.event_time.ToDatetime() - at).total_seconds())
    return delays


async def load(http: httpx.AsyncClient, ids: list[str], seconds: float) -> dict[str, list[float]]:
    """Open-loop load: a request every 10 ms (100/s), alternating status and list."""
    times: dict[str, list[float]] = {"status": [], "list": [], "error": []}
    rng = random.Random(3)

    async def one(kind: str) -> None:
        path = f"/api/workflows/{rng.choice(ids)}/status" if kind == "status" else "/api/workflows"
        started = time.perf_counter()
        try:
            answer = await http.get(path, params={"limit": 20} if kind == "list" else None)
            answer.raise_for_status()
        except httpx.HTTPError:  # counted and reported, not fatal
            times["error"].append(time.perf_counter() - started)
            return
        times[kind].append(time.perf_counter() - started)

    # The load generator's own pauses would read as the API's: its full collections do not
    # rescan what it holds already (gc.freeze), and the gc runs before the clock starts.
    gc.collect()
    gc.freeze()
    tasks = []
    start = time.perf_counter()
    for n in range(int(seconds * 100)):
        await asyncio.sleep(max(0.0, start + n * 0.01 - time.perf_counter()))
        tasks.append(asyncio.create_task(one("status" if n % 2 == 0 else "list")))
    await asyncio.gather(*tasks)
    return times


def table(rows: list[Row]) -> str:
    head = ("measure", "ours", "baseline", "ratio", "target", "met")
    cells = [
        (
            r.measure,
            r.ours,
            r.baseline,
            r.ratio,
            r.target,
            "-" if r.met is None else "yes" if r.met else "MISSED",
        )
        for r in rows
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(c) + " |" for c in cells]
    return "\n".join(lines)


def machine() -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    mem = int(Path("/proc/meminfo").read_text().split()[1]) / 1024 / 1024
    return f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GiB, Python {platform.python_version()}"
