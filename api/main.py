"""The FastAPI app: migrations and clients in the lifespan, refusals mapped to HTTP statuses."""

from __future__ import annotations

import gc
import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, Request, Response, status
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic_core import PydanticSerializationError
from sqlalchemy.exc import OperationalError
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from swagger_ui_bundle import swagger_ui_path

from api.deps import AppState, require_api_key
from api.guard import Guard
from api.metrics import SdkCollector, api_registry
from api.routes import evals, health, projects, reruns, steering, workflows
from client.errors import (
    BuildError,
    BuildExists,
    BuildFinished,
    BuildNotFound,
    CommandRefused,
    NoAnswer,
)
from client.projects import ProjectNotFound, ProjectRefused
from client.reruns import RerunRefused
from core.build_io import build_id_from
from core.settings import Settings, get_settings
from core.telemetry import current_build
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
    ProjectNotFound: status.HTTP_404_NOT_FOUND,
    ProjectRefused: status.HTTP_422_UNPROCESSABLE_CONTENT,
    RerunRefused: status.HTTP_409_CONFLICT,
}


class AsciiJSONResponse(JSONResponse):
    """JSON with every non-ASCII character escaped: it renders whatever text it is given."""

    def render(self, content: object) -> bytes:
        return json.dumps(content, ensure_ascii=True, separators=(",", ":")).encode("ascii")


def build_of(path: str) -> str | None:
    """The build a request is about: /api/workflows/{workflow_id}/... names it."""
    parts = path.strip("/").split("/")
    if len(parts) >= 4 and parts[:2] == ["api", "workflows"] and parts[3] != "start":
        return None if parts[2] == "project" else build_id_from(parts[2])
    return None


class Observe:
    """Times every request by its route, and tags its log lines with the build it is about.
    Plain ASGI: Starlette's BaseHTTPMiddleware costs more than the requests it wraps."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status_code = [500]

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_code[0] = message["status"]
            await send(message)

        token = current_build.set(build_of(scope["path"]))
        started = time.perf_counter()
        try:
            await self.app(scope, receive, sending)
        finally:
            current_build.reset(token)
            route = getattr(scope.get("route"), "path", "unmatched")
            scope["app"].state.requests.labels(scope["method"], route, str(status_code[0])).observe(
                time.perf_counter() - started
            )


DOCS_ASSETS = "/docs/assets"


def offline_docs(app: FastAPI) -> None:
    """The OpenAPI page at /docs with Swagger UI's files served by the API itself (from the
    swagger-ui-bundle package): the page works where no CDN can be reached."""
    app.mount(DOCS_ASSETS, StaticFiles(directory=swagger_ui_path), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title}: API",
            swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{DOCS_ASSETS}/favicon-32x32.png",
        )


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    sdk_metrics = SdkCollector()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        url = settings.db_url()
        await run_in_threadpool(upgrade, url)
        engine = make_engine(url)
        app.state.api = AppState(settings=settings, engine=engine, runtime=sdk_metrics.runtime)
        app.state.metrics, app.state.requests = api_registry(engine, sdk_metrics)
        log.info(
            "API ready: mirror %s, Temporal %s (namespace %s)",
            engine.url.render_as_string(hide_password=True),
            settings.temporal_address,
            settings.temporal_namespace,
        )
        if settings.api_key is None:
            log.warning("API_KEY is not set: every endpoint is open to anyone who can reach it")
        # What start-up built lives as long as the process: full collections need not rescan it.
        gc.collect()
        gc.freeze()
        yield
        engine.dispose()

    app = FastAPI(
        title="Q Assistant Orchestration",
        summary="Start, steer and inspect AI builds that run as Temporal workflows.",
        version="0.1.0",
        lifespan=lifespan,
        docs_url=None,  # served below from the package, not a CDN
        redoc_url=None,
    )
    offline_docs(app)
    app.include_router(health.router)
    app.include_router(workflows.router, dependencies=[Depends(require_api_key)])
    app.include_router(steering.router, dependencies=[Depends(require_api_key)])
    app.include_router(reruns.router, dependencies=[Depends(require_api_key)])
    app.include_router(projects.router, dependencies=[Depends(require_api_key)])
    app.include_router(evals.router, dependencies=[Depends(require_api_key)])

    app.add_middleware(Guard, settings=settings)  # inside Observe: its refusals are counted
    app.add_middleware(Observe)

    @app.get("/metrics", tags=["health"], response_class=Response)
    def metrics(request: Request) -> Response:
        """Prometheus metrics: HTTP requests, the Temporal client, builds from the mirror."""
        body = generate_latest(request.app.state.metrics)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    @app.exception_handler(BuildError)
    async def refused(_: Request, err: BuildError) -> JSONResponse:
        code = STATUS_OF.get(type(err), status.HTTP_502_BAD_GATEWAY)
        log.info("refused with %s: %s", code, err)
        return JSONResponse({"detail": str(err)}, status_code=code)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, err: RequestValidationError) -> JSONResponse:
        # The default answer echoes the input, which may hold text that UTF-8 cannot encode.
        return AsciiJSONResponse(
            {"detail": jsonable_encoder(err.errors())},
            status_code=status.HTTP_422_UNPROCESSABLE_CONTENT,
        )

    @app.exception_handler(PydanticSerializationError)
    async def unencodable(_: Request, err: PydanticSerializationError) -> JSONResponse:
        # JSON allows lone UTF-16 surrogates ("\udbff"); Unicode text does not, so such a body
        # cannot be sent to Temporal. It fails before anything is sent: the caller's mistake.
        if "surrogates not allowed" not in str(err):
            raise err
        detail = (
            "the request holds unpaired UTF-16 surrogates (\\ud800-\\udfff); send valid Unicode"
        )
        return JSONResponse({"detail": detail}, status_code=status.HTTP_422_UNPROCESSABLE_CONTENT)

    @app.exception_handler(OperationalError)
    async def database_down(_: Request, err: OperationalError) -> JSONResponse:
        log.warning("mirror database unavailable: %s", err.orig)
        return JSONResponse(
            {"detail": "the mirror database is unavailable; try again shortly"},
            status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
        )

    return app
