"""What endpoints depend on: settings, a database session, the Temporal client, the API key."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Concatenate, ParamSpec, TypeVar

from fastapi import Depends, HTTPException, Path, Request, Security, status
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import Engine
from sqlmodel import Session
from starlette.concurrency import run_in_threadpool
from temporalio.client import Client
from temporalio.runtime import Runtime

from api.guard import key_accepted
from core.settings import Settings
from core.telemetry import tracing_interceptors
from core.temporal import connect

log = logging.getLogger("api")
P = ParamSpec("P")
T = TypeVar("T")


@dataclass(frozen=True)
class Mirror:
    """The mirror's reads, each in one worker thread where its session opens, reads and closes.

    A request waits for one thread hop. A session handed in as a dependency costs three (open,
    read, close) and every hop waits for a core: on a machine busy with builds, those waits are
    most of a read's time. Every dependency of a route is `async def` for the same reason.

    Reads run without a transaction: on PostgreSQL a read is then its statements' round trips
    (and the pool's ping), with no BEGIN before and no ROLLBACK after, each of which waits for
    the database's process as long again when the machine is busy."""

    engine: Engine

    @classmethod
    def of(cls, engine: Engine) -> Mirror:
        return cls(engine.execution_options(isolation_level="AUTOCOMMIT"))

    async def read(
        self, fn: Callable[Concatenate[Session, P], T], /, *args: P.args, **kwargs: P.kwargs
    ) -> T:
        def call() -> T:
            with Session(self.engine) as session:
                return fn(session, *args, **kwargs)

        return await run_in_threadpool(call)


@dataclass
class AppState:
    """Built in the app's lifespan; one per process."""

    settings: Settings
    engine: Engine
    runtime: Runtime | None = None  # the client's, whose metrics /metrics serves
    client: Client | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    mirror: Mirror = field(init=False)  # the endpoints' reads of the mirror

    def __post_init__(self) -> None:
        self.mirror = Mirror.of(self.engine)

    async def temporal(self) -> Client:
        """The Temporal client, connecting on first use so the API starts without Temporal."""
        if self.client is not None:
            return self.client
        async with self.lock:
            if self.client is None:
                try:
                    self.client = await connect(
                        self.settings,
                        runtime=self.runtime,
                        interceptors=tracing_interceptors(self.settings, "qao-api"),
                    )
                except RuntimeError as err:
                    log.warning("Temporal unreachable: %s", err)
                    raise HTTPException(
                        status.HTTP_503_SERVICE_UNAVAILABLE,
                        f"Temporal is unreachable at {self.settings.temporal_address}; "
                        "try again when it runs",
                    ) from err
            return self.client


async def _state(request: Request) -> AppState:
    state: AppState = request.app.state.api
    return state


async def _settings(state: Annotated[AppState, Depends(_state)]) -> Settings:
    return state.settings


async def _mirror(state: Annotated[AppState, Depends(_state)]) -> Mirror:
    return state.mirror


async def _client(state: Annotated[AppState, Depends(_state)]) -> Client:
    return await state.temporal()


StateDep = Annotated[AppState, Depends(_state)]
SettingsDep = Annotated[Settings, Depends(_settings)]
MirrorDep = Annotated[Mirror, Depends(_mirror)]
ClientDep = Annotated[Client, Depends(_client)]
WorkflowId = Annotated[
    str, Path(min_length=1, max_length=90, description="Workflow id build-<id>, or the build id.")
]

_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="API_KEY, if set.")
_bearer = HTTPBearer(auto_error=False, description="API_KEY as a bearer token, if set.")


async def require_api_key(
    settings: SettingsDep,
    key: Annotated[str | None, Security(_key_header)],
    bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
) -> None:
    """When API_KEY is set, every request must carry it (X-API-Key or Authorization: Bearer).
    api/guard.py checks it before the body is read; this says so in the OpenAPI page, and
    holds for a route mounted without the guard."""
    authorization = f"Bearer {bearer.credentials}" if bearer else None
    if not key_accepted(settings, key, authorization):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "missing or wrong API key: send it as X-API-Key or Authorization: Bearer",
            headers={"WWW-Authenticate": "Bearer"},
        )
