"""Fault drills: the real worker, dev server, mirror and model path, with faults injected; each
drill ends with a VERDICT line (PASS or FAIL, and the figures behind it).

    .venv/bin/python -m chaos                      # every drill, full size (about 15 minutes)
    .venv/bin/python -m chaos --quick              # a few builds each (CI)
    .venv/bin/python -m chaos kill-worker db-outage --database postgresql

Drills:
  kill-worker      kill -9 the worker at random moments while builds run (restarted at once)
  restart-server   stop and restart the file-backed Temporal dev server while builds run
  db-outage        the mirror database unavailable for a while (SQLite: an exclusive lock held on
                   the file; PostgreSQL: connections refused and dropped), then back
  model-faults     429s, 500s, 503s, cut connections, timeouts and malformed answers on 30% of
                   model requests, from an OpenAI-compatible server on a real socket
  schemathesis     the API's OpenAPI schema, fuzzed and stateful; no 5xx, no schema breaks
Every drill but schemathesis checks: all builds complete, and for each build the mirror's rows
equal the workflow's events exactly (0 lost, 0 duplicated).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sqlite3
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from sqlmodel import Session
from temporalio.client import Client, WorkflowHandle

from client.builds import start_build
from core.models import BuildOptions, BuildRequest, RolePolicy
from core.settings import Settings
from core.states import BuildState
from core.temporal import connect
from db import crud
from db.engine import make_engine
from db.migrate import upgrade
from devtools.devserver import DevServer
from devtools.processes import api_process, child_env, free_port, log_tail, tied
from workflows.build import BuildWorkflow

ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN = "host=127.0.0.1 port=5432 user=postgres dbname=test"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass
class Size:
    builds: int
    kills: int
    outage_seconds: float
    fault_builds: int
    api_cases: int


FULL = Size(builds=50, kills=20, outage_seconds=30, fault_builds=50, api_cases=1000)
QUICK = Size(builds=3, kills=1, outage_seconds=4, fault_builds=3, api_cases=60)


@dataclass
class Verdict:
    drill: str
    passed: bool
    detail: str

    def line(self) -> str:
        return f"VERDICT {self.drill}: {'PASS' if self.passed else 'FAIL'} - {self.detail}"


@dataclass
class Stack:
    """A file-backed dev server, a mirror, and worker.py processes that can be killed."""

    folder: Path
    database: str
    server: DevServer = field(init=False)
    settings: Settings = field(init=False)
    client: Client = field(init=False)
    worker: asyncio.subprocess.Process | None = None
    worker_env: dict[str, str] = field(default_factory=dict)
    pg_name: str | None = None

    async def start(self) -> None:
        self.server = DevServer(
            db_file=self.folder / "temporal.db", port=free_port(), headless=True, tied=True
        )
        await asyncio.to_thread(self.server.start)
        if self.database == "postgresql":
            self.pg_name = f"qao_chaos_{uuid.uuid4().hex[:8]}"
            with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
                admin.execute(f'CREATE DATABASE "{self.pg_name}"')
            url = f"postgresql://postgres@127.0.0.1:5432/{self.pg_name}"
        else:
            url = f"sqlite:///{self.folder / 'mirror.db'}"
        self.settings = Settings(
            _env_file=None,
            temporal_address=self.server.address,
            temporal_task_queue=f"chaos-{uuid.uuid4().hex[:6]}",
            database_url=url,
            data_dir=self.folder / "data",
            openai_api_key=None,
            worker_metrics_address="",
        )
        upgrade(url)
        self.client = await connect(self.settings)

    async def stop(self) -> None:
        await self.stop_worker()
        await asyncio.to_thread(self.server.stop)
        if self.pg_name:
            with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{self.pg_name}" WITH (FORCE)')

    async def start_worker(self, **env: str) -> None:
        self.worker_env = env or self.worker_env
        base = child_env(
            self.settings, WORKER_METRICS_ADDRESS="off", OFFLINE_MODEL_LATENCY_SECONDS="0.2"
        )
        with (self.folder / "worker.log").open("ab") as out:
            self.worker = await asyncio.create_subprocess_exec(
                *tied([sys.executable, str(ROOT / "worker.py")]), cwd=self.folder,
                env=base | self.worker_env, stdout=asyncio.subprocess.DEVNULL, stderr=out,
            )  # fmt: skip

    async def kill_worker(self) -> None:
        if self.worker is not None and self.worker.returncode is None:
            self.worker.kill()
            await self.worker.wait()
        self.worker = None

    async def stop_worker(self) -> None:
        if self.worker is not None and self.worker.returncode is None:
            self.worker.terminate()
            await self.worker.wait()
        self.worker = None

    def worker_exit(self) -> str | None:
        """Why the worker exited on its own (None while it runs, or once the drill stopped it)."""
        if self.worker is None or self.worker.returncode is None:
            return None
        tail = log_tail(self.folder / "worker.log")
        return f"worker.py exited on its own with {self.worker.returncode}: {tail}"

    async def results(self, handles: list[WorkflowHandle[Any, Any]], seconds: float) -> list[Any]:
        """Every build's result or error; fails at once if the worker exits on its own (it used
        to wait out the whole timeout, 600 s, for builds nobody ran)."""
        pending = asyncio.gather(*(h.result() for h in handles), return_exceptions=True)
        deadline = time.monotonic() + seconds
        try:
            while True:
                done, _ = await asyncio.wait({pending}, timeout=0.5)
                if done:
                    return pending.result()
                if why := self.worker_exit():
                    raise WorkerExited(why)
                if time.monotonic() > deadline:
                    raise TimeoutError(f"builds not finished after {seconds:g} s")
        finally:
            pending.cancel()

    def request(self, max_attempts: int = 10, heartbeat_seconds: float = 10) -> BuildRequest:
        return BuildRequest(
            project_id="chaos",
            build_id=f"c{uuid.uuid4().hex[:12]}",
            user_id="chaos",
            requirements={"feature": "Dark mode", "priority": "high"},
            # A dead worker's call is retried after 10 s of silence (default 30 s). Shorter is
            # not safe on 2 cores running 50 builds' tests: the SDK sends heartbeats at most every
            # 0.8 x this, and a loaded machine delays them past it.
            options=BuildOptions(
                policy=RolePolicy(
                    heartbeat_seconds=heartbeat_seconds,
                    initial_interval_seconds=0.2,
                    maximum_interval_seconds=2,
                    max_attempts=max_attempts,
                )
            ),
        )

    async def start_builds(self, count: int, **kw: Any) -> list[WorkflowHandle[Any, Any]]:
        return [
            await start_build(self.client, self.settings, self.request(**kw)) for _ in range(count)
        ]

    async def check(
        self, drill: str, handles: list[WorkflowHandle[Any, Any]], extra: str, seconds: float
    ) -> Verdict:
        """All builds complete; per build, the mirror's rows are exactly the workflow's events."""
        results = await self.results(handles, seconds)
        complete = sum(
            1
            for r in results
            if not isinstance(r, BaseException) and r.state is BuildState.COMPLETE
        )
        events = lost = duplicated = extra_rows = 0
        engine = make_engine(self.settings.db_url())
        try:
            for handle in handles:
                log_ = await handle.query(BuildWorkflow.event_log, 0)
                with Session(engine) as session:
                    rows = crud.list_events(session, workflow_id=handle.id, limit=100_000)
                want = {(e.seq, e.event_type.value) for e in log_}
                have = [(r.seq, r.event_type) for r in rows]
                events += len(want)
                lost += len(want - set(have))
                duplicated += len(have) - len(set(have))
                extra_rows += len(set(have) - want)
        finally:
            engine.dispose()
        passed = complete == len(handles) and lost == duplicated == extra_rows == 0
        detail = (
            f"{complete}/{len(handles)} builds complete{extra}; mirror rows = events {events} "
            f"({lost} lost, {duplicated} duplicated, {extra_rows} unknown)"
        )
        reasons = sorted({_reason(r) for r in results if isinstance(r, BaseException)})
        if reasons:
            detail += f"; failures: {' | '.join(reasons[:3])}"
        return Verdict(drill, passed, detail)


class WorkerExited(RuntimeError):
    """The drill's worker stopped without being told to: the drill cannot go on."""


def _reason(err: BaseException) -> str:
    """The innermost message of a failed build's error chain."""
    while err.__cause__ is not None:
        err = err.__cause__
    return f"{type(err).__name__}: {err}"[:300]


@asynccontextmanager
async def stack(database: str) -> AsyncIterator[Stack]:
    with tempfile.TemporaryDirectory(prefix="qao-chaos-") as tmp:
        s = Stack(Path(tmp), database)
        await s.start()
        try:
            yield s
        finally:
            await s.stop()


# --- drills ----------------------------------------------------------------------------------


async def kill_worker(s: Stack, size: Size) -> Verdict:
    rng = random.Random(11)
    await s.start_worker()
    handles = await s.start_builds(size.builds)
    kills = 0
    pending = asyncio.gather(*(h.result() for h in handles), return_exceptions=True)
    while kills < size.kills and not pending.done():
        await asyncio.sleep(rng.uniform(0.5, 4.0))
        if pending.done():
            break
        if why := s.worker_exit():
            pending.cancel()
            raise WorkerExited(why)
        await s.kill_worker()  # kill -9, mid-whatever it was doing
        kills += 1
        log(f"kill-worker: kill {kills}/{size.kills}")
        await s.start_worker()
    return await s.check("kill-worker", handles, f", {kills} kill -9s", seconds=600)


async def restart_server(s: Stack, size: Size) -> Verdict:
    await s.start_worker()
    handles = await s.start_builds(size.builds)
    await asyncio.sleep(3)
    log("restart-server: stopping the dev server")
    await asyncio.to_thread(s.server.stop)
    await asyncio.sleep(2)
    await asyncio.to_thread(s.server.start)
    log("restart-server: dev server back")
    return await s.check("restart-server", handles, ", server restarted once", seconds=600)


async def db_outage(s: Stack, size: Size) -> Verdict:
    await s.start_worker()
    handles = await s.start_builds(size.builds)
    await asyncio.sleep(2)
    log(f"db-outage: mirror unavailable for {size.outage_seconds:g} s ({s.database})")
    if s.database == "postgresql":
        await asyncio.to_thread(_postgres_outage, s.pg_name or "", size.outage_seconds)
    else:
        await asyncio.to_thread(_sqlite_outage, s.folder / "mirror.db", size.outage_seconds)
    log("db-outage: mirror back")
    detail = f", {size.outage_seconds:g} s {s.database} outage"
    return await s.check("db-outage", handles, detail, seconds=600)


def _sqlite_outage(path: Path, seconds: float) -> None:
    """Hold an exclusive lock: no other connection reads or writes the file meanwhile."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN EXCLUSIVE")
    time.sleep(seconds)
    conn.execute("ROLLBACK")
    conn.close()


def _postgres_outage(name: str, seconds: float) -> None:
    """The database refuses new connections and its open ones are dropped, then it is back."""
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS false')
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", [name]
        )
        time.sleep(seconds)
        admin.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS true')


async def model_faults(s: Stack, size: Size) -> Verdict:
    sys.path.insert(0, str(ROOT))
    from tests.fake_openai import FakeOpenAI, Fault

    fake = FakeOpenAI(
        fault_rate=0.3,
        random_faults=[
            Fault("status", 429, retry_after=0.2),
            Fault("status", 500),
            Fault("status", 503),
            Fault("cut"),
            Fault("hang", seconds=6.0),
            Fault("invalid_json"),
            Fault("schema_break"),
        ],
    )
    await fake.start()
    try:
        await s.start_worker(
            OPENAI_API_KEY="chaos",
            OPENAI_BASE_URL=fake.base_url,
            # Long enough that only injected hangs time out: with 1 s, clean answers slowed by 50
            # builds on 2 cores timed out too, and the exact count no longer held (38 extra).
            LLM_TIMEOUT_SECONDS="5",
            LLM_SCHEMA_REASKS="4",
        )
        # The default heartbeat timeout: a retry here should come from an injected fault only.
        handles = await s.start_builds(size.fault_builds, heartbeat_seconds=30)
        verdict = await s.check("model-faults", handles, "", seconds=900)
    finally:
        await fake.stop()
    calls = 0
    engine = make_engine(s.settings.db_url())
    with Session(engine) as session:
        for handle in handles:
            rows = crud.list_events(session, workflow_id=handle.id, limit=100_000)
            calls += sum(1 for r in rows if r.event_type == "role_call")
    engine.dispose()
    requests, faults = fake.count(), fake.faults_injected
    # Each call ends with one clean answer; each fault costs exactly one more request.
    counted = requests == calls + faults
    verdict.passed = verdict.passed and counted
    share = faults / max(requests, 1)
    verdict.detail += (
        f"; requests {requests} = {calls} calls + {faults} faults ({share:.0%} of requests "
        f"faulted): {'exact' if counted else 'MISMATCH'}"
    )
    return verdict


async def schemathesis_drill(s: Stack, size: Size) -> Verdict:
    # The fuzzer starts builds of its own; 4 role calls at a time keep their pytest runs from
    # starving the workflow tasks that answer commands (a 503 is then a real finding).
    await s.start_worker(WORKER_MAX_CONCURRENT_ACTIVITIES="4")
    await s.start_builds(2)  # some builds to find and steer
    api, port = await api_process(s.settings, s.folder)
    try:
        report = s.folder / "schemathesis.xml"
        proc = await asyncio.create_subprocess_exec(
            *tied([sys.executable, "-m", "schemathesis.cli"]), "run",
            f"http://127.0.0.1:{port}/openapi.json",
            "--checks", "not_a_server_error,response_schema_conformance,status_code_conformance",
            "--max-examples", str(max(1, size.api_cases // 10)),
            "--phases", "examples,fuzzing,stateful",
            "--seed", "7",
            "--report", "junit", "--report-junit-path", str(report),
            "--no-color",
            cwd=s.folder, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        out, _ = await proc.communicate()
    finally:
        api.terminate()
        await api.wait()
    text = out.decode(errors="replace")
    (s.folder.parent / "schemathesis.log").write_text(text)
    cases = _cases(text)
    passed = proc.returncode == 0 and cases >= size.api_cases
    tail = " | ".join(line.strip() for line in text.splitlines()[-4:] if line.strip())
    return Verdict(
        "schemathesis",
        passed,
        f"{cases} test cases (at least {size.api_cases} wanted), exit {proc.returncode}: {tail}",
    )


def _cases(text: str) -> int:
    """The number of generated test cases from schemathesis' summary."""
    import re

    found = re.search(r"Test cases:\s*(\d+) generated", text)
    return int(found.group(1)) if found else 0


DRILLS: dict[str, Callable[[Stack, Size], Awaitable[Verdict]]] = {
    "kill-worker": kill_worker,
    "restart-server": restart_server,
    "db-outage": db_outage,
    "model-faults": model_faults,
    "schemathesis": schemathesis_drill,
}


async def run(names: list[str], size: Size, database: str) -> list[Verdict]:
    verdicts = []
    for name in names:
        log(f"drill {name}")
        async with stack(database) as s:
            try:
                verdict = await DRILLS[name](s, size)
            except Exception as err:  # a drill that breaks is a failed drill, with the reason
                verdict = Verdict(name, False, f"the drill broke: {type(err).__name__}: {err}")
        print(verdict.line(), flush=True)
        verdicts.append(verdict)
    return verdicts


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 2)[2],
    )  # fmt: skip
    parser.add_argument("drills", nargs="*", choices=[*DRILLS, []], help="default: all")
    parser.add_argument("--quick", action="store_true", help="a few builds per drill (CI)")
    parser.add_argument("--database", choices=["sqlite", "postgresql"], default="sqlite")
    args = parser.parse_args()
    verdicts = asyncio.run(
        run(args.drills or list(DRILLS), QUICK if args.quick else FULL, args.database)
    )
    failed = [v.drill for v in verdicts if not v.passed]
    print(f"{len(verdicts) - len(failed)} of {len(verdicts)} drills passed", flush=True)
    raise SystemExit(1 if failed else 0)


if __name__ == "__main__":
    from core.exit import exit_now

    exit_now(main)
