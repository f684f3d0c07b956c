"""Fixtures: a real Temporal dev server for the session, a fresh worker and task queue per test."""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import Engine
from temporalio.client import Client, WorkflowHandle

from activities.llm import ModelClient
from core.control import start_build
from core.models import BuildOptions, BuildRequest, BuildStatus, Requirements
from core.settings import Settings
from core.temporal import connect
from db.engine import make_engine
from db.migrate import upgrade
from devstack import DevServer, free_port
from worker import build_worker
from workflows.build import BuildWorkflow

HISTORY_DIR = Path(__file__).parent / "histories"
# The folder this code's histories are recorded into. Bump it after a workflow change (guarded
# by a patch) and record anew; the older folders stay as they are, so replay proves the change
# safe for builds that started before it.
HISTORY_VERSION = "v4"

# temporalio 1.35 can abort in interpreter finalization after a green run (sdk-python #300).
# Leave with the session's own exit status, after pytest has printed and written everything.
_exit_status: list[int] = []


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    _exit_status.append(int(exitstatus))


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    if _exit_status and os.environ.get("QAO_PYTEST_HARD_EXIT", "1") == "1":
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_exit_status[-1])


@pytest.fixture(scope="session")
def dev_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevServer]:
    folder = tmp_path_factory.mktemp("temporal")
    server = DevServer(
        db_file=folder / "temporal.db",
        port=free_port(),
        headless=True,
        log_file=folder / "server.log",
        tied=True,  # a killed test run leaves no server behind
    )
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def base_settings(dev_server: DevServer, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    data = tmp_path_factory.mktemp("data")
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        temporal_address=dev_server.address,
        temporal_ui_url="http://localhost:8233",
        openai_api_key=None,
        data_dir=data,
        database_url=f"sqlite:///{data / 'mirror.db'}",
        worker_shutdown_grace_seconds=1,
    )
    upgrade(settings.db_url())
    return settings


@pytest.fixture(scope="session")
def engine(base_settings: Settings) -> Iterator[Engine]:
    """The session's SQLite mirror (the PostgreSQL one is in test_mirror.py)."""
    eng = make_engine(base_settings.db_url())
    yield eng
    eng.dispose()


PG_ADMIN = "host=127.0.0.1 port=5432 user=postgres dbname=test"


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this session, dropped afterwards."""
    name = f"qao_test_{uuid.uuid4().hex[:10]}"
    try:
        admin = psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as err:
        pytest.fail(f"PostgreSQL is needed at 127.0.0.1:5432 (database test): {err}")
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = f"postgresql://postgres@127.0.0.1:5432/{name}"
    upgrade(url)
    yield url
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def mirror_db(request: pytest.FixtureRequest, base_settings: Settings) -> Iterator[Engine]:
    if request.param == "sqlite":
        url = base_settings.db_url()
    else:
        url = request.getfixturevalue("postgres_url")
    eng = make_engine(url)
    assert eng.dialect.name == request.param
    yield eng
    eng.dispose()


@pytest.fixture(scope="session")
async def client(base_settings: Settings) -> Client:
    return await connect(base_settings)


@pytest.fixture
def settings(base_settings: Settings) -> Settings:
    """Settings with a task queue of this test's own."""
    queue = f"test-{uuid.uuid4().hex[:10]}"
    return base_settings.model_copy(update={"temporal_task_queue": queue})


@asynccontextmanager
async def running_worker(
    client: Client,
    settings: Settings,
    engine: Engine,
    llm: ModelClient | None = None,
    workflows: Sequence[type] = (BuildWorkflow,),
) -> AsyncIterator[ModelClient]:
    """A worker on the settings' task queue, with the offline model unless `llm` is given."""
    llm = llm or ModelClient(settings)
    async with build_worker(client, settings, llm=llm, engine=engine, workflows=workflows):
        yield llm
    await llm.close()


@pytest.fixture
async def worker(client: Client, settings: Settings, engine: Engine) -> AsyncIterator[Settings]:
    async with running_worker(client, settings, engine):
        yield settings


def make_request(
    requirements: Requirements | None = None, project: str = "proj-test", **options: object
) -> BuildRequest:
    return BuildRequest(
        project_id=project,
        build_id=f"t{uuid.uuid4().hex[:12]}",
        user_id="pytest",
        requirements=requirements or {"feature": "Dark mode", "priority": "high"},
        options=BuildOptions.model_validate(
            {"policy": {"initial_interval_seconds": 0.1, "max_attempts": 3}, **options}
        ),
    )


async def start(client: Client, settings: Settings, request: BuildRequest) -> WorkflowHandle:
    return await start_build(client, settings, request)


async def save_history(handle: WorkflowHandle, name: str) -> None:
    """With RECORD_HISTORIES=1, keep this run's history for the replay test, in the current
    version's folder; a history already there is never rewritten."""
    if os.environ.get("RECORD_HISTORIES") != "1":
        return
    path = HISTORY_DIR / HISTORY_VERSION / f"{name}.json"
    if path.exists():
        return
    history = await handle.fetch_history()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(history.to_json())


async def status_of(handle: WorkflowHandle) -> BuildStatus:
    status: BuildStatus = await handle.query(BuildWorkflow.status)
    return status


async def wait_until(
    handle: WorkflowHandle, check: Callable[[BuildStatus], bool], seconds: float = 20
) -> BuildStatus:
    """Poll the status query until `check` holds (a build is observed only through queries)."""
    async with asyncio.timeout(seconds):
        while not check(status := await status_of(handle)):  # noqa: ASYNC110 (queries poll)
            await asyncio.sleep(0.05)
    return status


def model_client_with(settings: Settings, handler: Callable[..., object]) -> ModelClient:
    """A ModelClient whose HTTP transport is `handler`: the real SDK against a scripted endpoint."""
    import httpx2

    llm = ModelClient(settings)
    llm.client = llm.client.with_options(
        http_client=httpx2.AsyncClient(transport=httpx2.MockTransport(handler))  # type: ignore[arg-type]
    )
    return llm
