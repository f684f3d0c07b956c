"""Stats on 10,000 mirrored builds: the API's stats answer vs a bare COUNT(*) baseline.

    .venv/bin/python -m bench.stats_bench [--builds 10000] [--runs 50] [--database-url URL]

Seeds a fresh mirror (SQLite file by default) with builds of one project in every state,
then times the stats queries directly and through the real API over HTTP (uvicorn).
Target: the stats answer in under 100 ms on SQLite.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import uvicorn
from sqlalchemy import Engine, func, insert
from sqlmodel import Session, select

from api.main import create_app
from core.mirror import BuildSnapshot
from core.settings import Settings
from core.states import BuildState
from db import crud
from db.engine import make_engine
from db.migrate import upgrade
from db.models import BuildRoleUsageRow, BuildWorkflowRow
from devtools.processes import free_port

PROJECT = "bench"
ROLES = ("q_assistant", "code_writer", "test_auditor", "verification_overseer", "release_manager")
TARGET_MS = 100.0
STATES = [BuildState.COMPLETE] * 6 + [BuildState.FAILED] * 2 + list(BuildState)
FAILURES = [
    (BuildState.TESTING, "retries exhausted: tests failed"),
    (BuildState.VERIFICATION, "retries exhausted: verification requested changes"),
    (BuildState.DISCOVERY, "q_assistant error: ModelRequestRejected"),
]


def seed(engine: Engine, builds: int, other_projects: int = 3) -> None:
    """`builds` builds in PROJECT, and as many spread over other projects (noise)."""
    rng = random.Random(7)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    rows, usage_rows = [], []
    for project, count in [(PROJECT, builds)] + [
        (f"other-{i}", builds // other_projects) for i in range(other_projects)
    ]:
        for n in range(count):
            state = rng.choice(STATES)
            finished = state in (BuildState.COMPLETE, BuildState.FAILED, BuildState.CANCELLED)
            failed = state is BuildState.FAILED
            failed_state, reason = rng.choice(FAILURES) if failed else (None, None)
            created = start + timedelta(seconds=n)
            snapshot = BuildSnapshot(
                build_id=f"{project}-{n}",
                workflow_id=f"build-{project}-{n}",
                project_id=project,
                user_id="bench",
                requirements="r",
                state=state,
                current_role=None,
                attempts={"implementation": 1},
                loop_backs=rng.randint(0, 3),
                last_error=reason,
                failed_state=failed_state,
                failure_reason=reason,
                created_at=created,
                updated_at=created,
                completed_at=created if finished else None,
                duration_seconds=rng.uniform(5, 600) if finished else None,
                usage={
                    role: {
                        "calls": 1,
                        "prompt_tokens": 500,
                        "completion_tokens": 200,
                        "cost_usd": 0.0002,
                        "requests": 1,
                    }
                    for role in ROLES
                },
                tokens=700 * len(ROLES),
                cost_usd=0.0002 * len(ROLES),
                last_seq=1,
            )
            rows.append(crud.build_values(snapshot))
            usage_rows += [
                {
                    "project_id": project,
                    "workflow_id": snapshot.workflow_id,
                    "role": role,
                    "calls": 1,
                    "tokens": 700,
                    "cost_usd": 0.0002,
                }
                for role in ROLES
            ]
    with engine.begin() as conn:
        conn.execute(insert(BuildWorkflowRow), rows)
        conn.execute(insert(BuildRoleUsageRow), usage_rows)


def timed(fn: Callable[[], object], runs: int) -> list[float]:
    fn()  # warm up caches and the connection pool
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1000)
    return samples


async def timed_http(settings: Settings, runs: int) -> tuple[list[float], list[float]]:
    """GET /healthz (baseline: HTTP and framework only) and GET stats, over real HTTP."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning")
    )
    task = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110 (uvicorn offers no event for this)
        await asyncio.sleep(0.02)
    results: list[list[float]] = []
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
        for path in ("/healthz", f"/api/workflows/project/{PROJECT}/stats"):
            (await http.get(path)).raise_for_status()
            samples = []
            for _ in range(runs):
                t0 = time.perf_counter()
                (await http.get(path)).raise_for_status()
                samples.append((time.perf_counter() - t0) * 1000)
            results.append(samples)
    server.should_exit = True
    await task
    return results[0], results[1]


def row(name: str, samples: list[float], baseline: float | None = None) -> str:
    p50 = statistics.median(samples)
    p95 = statistics.quantiles(samples, n=20)[-1]
    ratio = f"{p50 / baseline:6.1f}x" if baseline else "     -"
    verdict = "" if baseline is None else ("meets" if p95 < TARGET_MS else "MISSES")
    return f"{name:<34} {p50:8.2f} {p95:8.2f} {max(samples):8.2f}  {ratio}  {verdict}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--builds", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--database-url", help="default: a fresh SQLite file in a temp folder")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("api").setLevel(logging.ERROR)  # the open-API warning is expected here

    folder = Path(tempfile.mkdtemp(prefix="stats-bench-"))
    url = args.database_url or f"sqlite:///{folder / 'mirror.db'}"
    upgrade(url)
    engine = make_engine(url)
    with Session(engine) as session:
        existing = session.exec(
            select(func.count()).where(BuildWorkflowRow.project_id == PROJECT)
        ).one()
    if existing < args.builds:
        t0 = time.perf_counter()
        seed(engine, args.builds - existing)
        print(
            f"seeded {args.builds} builds of project {PROJECT!r} (+ noise) "
            f"in {time.perf_counter() - t0:.1f}s"
        )

    def baseline() -> object:
        with Session(engine) as session:
            return session.exec(
                select(func.count()).where(BuildWorkflowRow.project_id == PROJECT)
            ).one()

    def stats() -> object:
        with Session(engine) as session:
            return (
                crud.project_state_counts(session, project_id=PROJECT),
                crud.project_failures(session, project_id=PROJECT),
                crud.project_usage_by_role(session, project_id=PROJECT),
            )

    base = timed(baseline, args.runs)
    direct = timed(stats, args.runs)
    settings = Settings(_env_file=None, database_url=url, temporal_address="127.0.0.1:1")
    health, http = asyncio.run(timed_http(settings, args.runs))
    print(f"\n{engine.dialect.name}, {args.builds} builds in the project, {args.runs} runs each")
    header = f"{'measure (ms)':<34} {'p50':>8} {'p95':>8} {'max':>8}  {'/base':>7}"
    print(f"{header}  target: p95 < {TARGET_MS:.0f} ms")
    print(row("baseline: COUNT(*) of the project", base))
    print(row("stats queries (db.crud)", direct, statistics.median(base)))
    print(row("baseline: GET /healthz (HTTP)", health))
    print(row("GET .../project/{id}/stats (HTTP)", http, statistics.median(health)))
    engine.dispose()


if __name__ == "__main__":
    main()
