"""Health checks, open without the API key: /healthz (process up), /readyz (dependencies)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Response, status
from sqlalchemy import text
from starlette.concurrency import run_in_threadpool

from api.deps import StateDep
from api.schemas import Health, Readiness

router = APIRouter(tags=["health"])
CHECK_TIMEOUT_SECONDS = 3


@router.get("/healthz")
async def healthz() -> Health:
    """The process is up."""
    return Health(status="ok")


@router.get("/readyz", responses={503: {"model": Readiness}})
async def readyz(state: StateDep, response: Response) -> Readiness:
    """The mirror database and Temporal both answer; 503 with what fails otherwise."""
    checks: dict[str, str] = {}

    def ping_database() -> None:
        with state.engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    try:
        await asyncio.wait_for(run_in_threadpool(ping_database), CHECK_TIMEOUT_SECONDS)
        checks["database"] = "ok"
    except Exception as err:  # any failure means not ready; the reason goes to the caller
        checks["database"] = f"unavailable: {type(err).__name__}: {err}"[:300]
    try:
        client = await state.temporal()
        await asyncio.wait_for(client.service_client.check_health(), CHECK_TIMEOUT_SECONDS)
        checks["temporal"] = "ok"
    except Exception as err:
        checks["temporal"] = f"unavailable: {getattr(err, 'detail', None) or err}"[:300]
    ready = all(v == "ok" for v in checks.values())
    if not ready:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return Readiness(status="ready" if ready else "not ready", checks=checks)
