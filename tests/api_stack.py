"""The API's test stack: uvicorn serving the real app on a free port, a worker on the same task
queue and mirror (SQLite or PostgreSQL, the `mirror_db` param; the fixture is in conftest.py),
polling helpers, and builds written straight into the mirror."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import uvicorn
from sqlalchemy import Engine

from api.main import create_app
from core.mirror import BuildSnapshot, MirrorBatch
from core.settings import Settings
from core.states import BuildState
from devtools.processes import free_port

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


def mirrored_build(project: str, n: int, state: BuildState, **fields: Any) -> MirrorBatch:
    """Build n of a project as a mirror batch, written straight into the mirror by the tests."""
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
