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
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import psycopg
from sqlmodel import Session

from chaos.stack import (
    FULL,
    PG_ADMIN,
    QUICK,
    ROOT,
    Size,
    Stack,
    Verdict,
    WorkerExited,
    log,
    stack,
)
from db import crud
from db.engine import make_engine
from devtools.processes import api_process, tied

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
    await s.wait_for_worker()
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
    await s.wait_for_worker()
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
            # Long enough that only injected hangs time out: with 50 builds on 2 cores, a 1 s
            # limit times out clean answers too, and the request count stops being exact.
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
            # A call its checks decided (no model asked: a release that must wait for a re-test
            # of a moved branch) made no request.
            calls += sum(
                1 for r in rows if r.event_type == "role_call" and r.event_data.get("requests")
            )
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
