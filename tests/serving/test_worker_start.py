"""A worker started while the mirror's database is down waits for it, says why, and comes up
when it returns: a real worker process against a PostgreSQL database that does not exist yet
and is then made. A worker checks its model endpoint at start and says what it found in one
line, a wrong one included."""

from __future__ import annotations

import asyncio
import os
import uuid
from pathlib import Path

import psycopg
import pytest
from temporalio.client import Client

from core.settings import Settings
from db.engine import make_engine
from devtools.processes import free_port
from tests.conftest import PG_ADMIN
from tests.fake_openai import FakeOpenAI
from tests.helpers import make_request, spawn_worker, start


@pytest.mark.slow  # a worker process, waiting for a database
async def test_a_worker_waits_for_its_database_and_comes_up_when_it_returns(
    client: Client, settings: Settings, tmp_path: Path
):
    name = f"qao_late_{uuid.uuid4().hex[:8]}"
    late = settings.model_copy(
        update={"database_url": f"postgresql://postgres@127.0.0.1:5432/{name}"}
    )
    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        proc = await spawn_worker(late, tmp_path, stderr=out)
    try:
        async with asyncio.timeout(30):
            while "mirror database unavailable" not in log.read_text():
                assert proc.returncode is None, log.read_text()
                await asyncio.sleep(0.2)
        await asyncio.sleep(1.5)
        assert proc.returncode is None  # still waiting, not gone
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
        handle = await start(client, late, make_request())
        async with asyncio.timeout(60):
            result = await handle.result()
        assert result.state.value == "complete"
        engine = make_engine(late.db_url())
        with engine.connect() as conn:
            rows = conn.exec_driver_sql(
                "select current_state from build_workflows where workflow_id = %s",
                (handle.id,),
            ).all()
        engine.dispose()
        assert rows == [("complete",)]
    finally:
        proc.terminate()
        await proc.wait()
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def niceness(pid: int) -> int:
    """A process's nice value, as the kernel reports it (/proc/<pid>/stat, field 19)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[16])


@pytest.mark.parametrize("endpoint", ["fake", "nothing there"])
async def test_a_worker_says_at_start_what_its_model_endpoint_takes(
    settings: Settings, tmp_path: Path, fake: FakeOpenAI, endpoint: str
):
    url = fake.base_url if endpoint == "fake" else f"http://127.0.0.1:{free_port()}/v1"
    settings = settings.model_copy(update={"worker_nice": 5})
    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        proc = await spawn_worker(
            settings, tmp_path, stderr=out, OPENAI_API_KEY="sk-test", OPENAI_BASE_URL=url
        )
    try:
        async with asyncio.timeout(30):
            while "model check" not in log.read_text():
                assert proc.returncode is None, log.read_text()
                await asyncio.sleep(0.2)
        await asyncio.sleep(0.3)
        text = log.read_text()
        assert proc.returncode is None and "Traceback" not in text  # serving all the same
        # Builds are batch work: the worker runs below this process's CPU priority.
        expected = min(os.nice(0) + settings.worker_nice, 19)
        assert niceness(proc.pid) == expected and f"nice {expected}" in text
        (line,) = [line for line in text.splitlines() if "model check" in line]
        if endpoint == "fake":  # it answers the roles' questions only, not the check's
            assert "json_schema refused (HTTP 400" in line and "NO output mode works" in line
        else:
            assert f"cannot reach {url}" in line and "ERROR" in line, line
    finally:
        proc.terminate()
        await proc.wait()
