"""The FastAPI app: migrations and clients in the lifespan, refusals mapped to HTTP statuses."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, Request, status
from fastapi.responses import JSONResponse
from sqlalchemy.exc import OperationalError
from starlette.concurrency import run_in_threadpool

from api.deps import AppState, require_api_key
from api.routes import health, workflows
from core.control import (
    BuildError,
    BuildExists,
    BuildFinished,
    BuildNotFound,
    CommandRefused,
    NoAnswer,
)
from core.settings import Settings, get_settings
from db.engine import make_engine
from db.migrate import upgrade

log = logging.getLogger("api")

# What each refusal means over HTTP; the body is {"detail": <the reason>}.
STATUS_OF: dict[type[BuildError], int] = {
    BuildNotFound: status.HTTP_404_NOT_FOUND,
    BuildExists: status.HTTP_409_CONFLICT,
    BuildFinished: status.HTTP_409_CONFLICT,
    CommandRefused: status.HTTP_409_CONFLICT,
    NoAnswer: status.HTTP_503_SERVICE_UNAVAILABLE,
}


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        url = settings.db_url()
        await run_in_threadpool(upgrade, url)
        engine = make_engine(url)
        app.state.api = AppState(settings=settings, engine=engine)
        log.info(
            "API ready: mirror %s, Temporal %s (namespace %s)",
            engine.url.render_as_string(hide_password=True),
            settings.temporal_address,
            settings.temporal_namespace,
        )
        if settings.api_key is None:
            log.warning("API_KEY is not set: every endpoint is open to anyone who can reach it")
        yield
        engine.dispose()

    app = FastAPI(
        title="Q Assistant Orchestration",
        summary="Start, steer and inspect AI builds that run as Temporal workflows.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.include_router(health.router)
    app.include_router(workflows.router, dependencies=[Depends(require_api_key)])

    @app.exception_handler(BuildError)
    async def refused(_: Request, err: BuildError) -> JSONResponse:
        code = STATUS_OF.get(type(err), status.HTTP_502_BAD_GATEWAY)
        log.info("refused with %s: %s", code, err)
        return JSONResponse({"detail": str(err)}, status_code=code)

    @app.exception_handler(OperationalError)
    async def database_down(_: Request, err: OperationalError) -> JSONResponse:
        log.warning("mirror database unavailable: %s", err.orig)
        return JSONResponse(
            {"detail": "the mirror database is unavailable; try again shortly"},
            status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
        )

    return app
