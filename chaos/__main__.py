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
  eval-kill-worker an evaluation suite (evals/offline.yaml, repeated to the drill's size, two
                   configs) while the worker is killed -9: the run ends with its table, each
                   child build started once (chaos/eval_drills.py)
Every drill but schemathesis checks: all builds complete, and for each build the mirror's rows
equal the workflow's events exactly (0 lost, 0 duplicated).

Only when named (slow; needs `make install-local-model`):
  real-model       5 builds against the real local model (llama-cpp-python's server, Gemma 3
                   270M): each ends in words (COMPLETE, FAILED or waiting for a person: the model
                   is tiny), nothing crashes or hangs, the mirror is whole; a table per role of
                   modes, requests, tokens, tokens/s, latency
  eval-real-model  evals/local-model.yaml against the real local model: the run ends with its
                   table (pass rate, tokens, wall time), each child build in words
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sqlite3
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import psycopg
from sqlmodel import Session

from chaos.eval_drills import eval_kill_worker, eval_real_model
from chaos.stack import (
    FULL,
    PG_ADMIN,
    QUICK,
    ROOT,
    Size,
    Stack,
    Verdict,
    WorkerExited,
    adopt_orphans,
    log,
    stack,
)
from client.builds import start_build
from core.build_io import BuildStatus
from core.states import BuildState
from db import crud
from db.engine import make_engine
from devtools.processes import api_process, free_port, tied
from workflows.build import BuildWorkflow

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
            LLM_PROBE_AT_START="false",  # the fake server counts every request the builds made
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


REAL_MODEL_BUILDS = 5
ENDS = {BuildState.COMPLETE, BuildState.FAILED, BuildState.NEEDS_ATTENTION}


async def real_model(s: Stack, size: Size) -> Verdict:
    from devtools import local_model

    port = free_port()
    async with local_model.serving(s.settings.data_dir, port, s.folder / "local-model.log") as env:
        # One re-ask: the tiny model's answers that are cut off stay cut off when asked again.
        await s.start_worker(**env, LLM_STREAM_PUBLISH_SECONDS="1", LLM_SCHEMA_REASKS="1")
        await s.wait_for_worker()
        handles = []
        for _ in range(min(size.builds, REAL_MODEL_BUILDS)):
            request = s.request(max_attempts=3)
            options = request.options.model_copy(update={"max_retries": 1})
            request = request.model_copy(update={"options": options})
            handles.append(await start_build(s.client, s.settings, request))
        ended: dict[str, BuildStatus] = {}
        deadline = time.monotonic() + 1800
        while len(ended) < len(handles) and time.monotonic() < deadline:
            for handle in handles:
                if handle.id not in ended:
                    status = await handle.query(BuildWorkflow.status)
                    if status.state in ENDS:
                        ended[handle.id] = status
            if why := s.worker_exit():
                return Verdict("real-model", False, why)
            await asyncio.sleep(2)
        events = {h.id: await h.query(BuildWorkflow.event_log, 0) for h in handles}
        for handle in handles:  # a build waiting for a person is let go
            if ended.get(handle.id) and ended[handle.id].state is BuildState.NEEDS_ATTENTION:
                await handle.cancel()
    engine = make_engine(s.settings.db_url())
    mirrored = True
    with Session(engine) as session:
        for handle in handles:
            rows = crud.list_events(session, workflow_id=handle.id, limit=100_000)
            mirrored &= {(r.seq, r.event_type) for r in rows} >= {
                (e.seq, e.event_type.value) for e in events[handle.id]
            } and len(rows) == len({r.seq for r in rows})
    engine.dispose()
    print(_real_model_table(events, ended), flush=True)
    words = all(
        st.state is BuildState.COMPLETE or (st.last_error and "Traceback" not in st.last_error)
        for st in ended.values()
    )
    outcomes = Counter(st.state.value for st in ended.values())
    passed = len(ended) == len(handles) and mirrored and words
    detail = (
        f"{len(ended)}/{len(handles)} builds ended ({dict(outcomes)}), reasons in words: {words}, "
        f"mirror whole: {mirrored}"
    )
    return Verdict("real-model", passed, detail)


def _real_model_table(events: dict[str, list[Any]], ended: dict[str, BuildStatus]) -> str:
    """Per role: calls, output modes, requests (re-asks and refused modes included), tokens,
    completion tokens per second of latency, mean latency; then each build's outcome."""
    per: dict[str, list[dict[str, Any]]] = {}
    for log_ in events.values():
        for event in log_:
            if event.event_type.value == "role_call":
                per.setdefault(event.triggered_by, []).append(event.data)
    lines = [
        f"{'role':<22} {'calls':>5} {'modes':<22} {'requests':>8} {'tokens':>8} {'tok/s':>6} "
        f"{'latency':>8}"
    ]
    for role, calls in per.items():
        modes = Counter(str(c.get("output_mode")) for c in calls)
        completion = sum(c["completion_tokens"] for c in calls)
        seconds = sum(c["latency_ms"] for c in calls) / 1000
        lines.append(
            f"{role:<22} {len(calls):>5} {','.join(f'{m}:{n}' for m, n in modes.items()):<22} "
            f"{sum(c['requests'] for c in calls):>8} "
            f"{sum(c['prompt_tokens'] for c in calls) + completion:>8} "
            f"{completion / max(seconds, 0.001):>6.1f} {seconds / len(calls):>7.1f}s"
        )
    for build, status in ended.items():
        lines.append(f"{build}: {status.state.value} {status.last_error or ''}"[:160])
    return "\n".join(lines)


DRILLS: dict[str, Callable[[Stack, Size], Awaitable[Verdict]]] = {
    "kill-worker": kill_worker,
    "restart-server": restart_server,
    "db-outage": db_outage,
    "model-faults": model_faults,
    "schemathesis": schemathesis_drill,
    "eval-kill-worker": eval_kill_worker,
}
NAMED_ONLY: dict[str, Callable[[Stack, Size], Awaitable[Verdict]]] = {
    "real-model": real_model,
    "eval-real-model": eval_real_model,
}


async def run(names: list[str], size: Size, database: str) -> list[Verdict]:
    verdicts = []
    for name in names:
        log(f"drill {name}")
        async with stack(database) as s:
            try:
                verdict = await (DRILLS | NAMED_ONLY)[name](s, size)
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
    parser.add_argument(
        "drills", nargs="*", choices=[*DRILLS, *NAMED_ONLY, []], help="default: all but real-model"
    )
    parser.add_argument("--quick", action="store_true", help="a few builds per drill (CI)")
    parser.add_argument("--database", choices=["sqlite", "postgresql"], default="sqlite")
    args = parser.parse_args()
    adopt_orphans()  # what a killed worker's sandboxes leave is counted as the drill's own
    verdicts = asyncio.run(
        run(args.drills or list(DRILLS), QUICK if args.quick else FULL, args.database)
    )
    failed = [v.drill for v in verdicts if not v.passed]
    print(f"{len(verdicts) - len(failed)} of {len(verdicts)} drills passed", flush=True)
    raise SystemExit(1 if failed else 0)


if __name__ == "__main__":
    from core.exit import exit_now

    exit_now(main)
