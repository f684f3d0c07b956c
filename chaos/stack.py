"""A drill's own stack: a file-backed dev server, a worker process it can kill, the mirror on
SQLite or PostgreSQL, and the checks every build drill ends with."""

from __future__ import annotations

import asyncio
import ctypes
import os
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from sqlmodel import Session
from temporalio.client import Client

from activities.sandbox import cgroups
from client.builds import BuildHandle, has_worker, start_build
from core.build_io import BuildOptions, BuildRequest, RolePolicy
from core.settings import Settings
from core.states import BuildState
from core.temporal import connect
from db import crud
from db.engine import make_engine
from db.migrate import upgrade
from devtools.devserver import DevServer
from devtools.processes import child_env, free_port, log_tail, tied
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

    async def wait_for_worker(self, seconds: float = 60) -> None:
        """Until the worker polls the task queue (connected to Temporal, the mirror migrated):
        a fault injected before then would test the worker's start, not the builds' durability."""
        deadline = time.monotonic() + seconds
        while not await has_worker(self.client, self.settings):
            if why := self.worker_exit():
                raise WorkerExited(why)
            if time.monotonic() > deadline:
                raise TimeoutError(f"the worker did not poll within {seconds:g} s")
            await asyncio.sleep(0.1)

    def worker_exit(self) -> str | None:
        """Why the worker exited on its own (None while it runs, or once the drill stopped it)."""
        if self.worker is None or self.worker.returncode is None:
            return None
        tail = log_tail(self.folder / "worker.log")
        return f"worker.py exited on its own with {self.worker.returncode}: {tail}"

    async def results(self, handles: list[BuildHandle], seconds: float) -> list[Any]:
        """Every build's result or error; fails at once if the worker exits on its own, rather
        than wait out the whole timeout for builds nobody runs."""
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
        build_id = f"c{uuid.uuid4().hex[:12]}"
        return BuildRequest(
            project_id="chaos",
            build_id=build_id,
            user_id="chaos",
            # A feature of its own per build: the same change twice would be an empty one,
            # which is never released.
            requirements={"feature": f"Dark mode {build_id}", "priority": "high"},
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

    async def start_builds(self, count: int, **kw: Any) -> list[BuildHandle]:
        return [
            await start_build(self.client, self.settings, self.request(**kw)) for _ in range(count)
        ]

    async def check(
        self, drill: str, handles: list[BuildHandle], extra: str, seconds: float
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
        left = leftovers()
        deadline = time.monotonic() + LEFTOVER_GRACE_SECONDS
        while left and time.monotonic() < deadline:  # a run's own clean-up may still be ending
            await asyncio.sleep(0.2)
            left = leftovers()
        passed = complete == len(handles) and lost == duplicated == extra_rows == 0 and not left
        detail = (
            f"{complete}/{len(handles)} builds complete{extra}; mirror rows = events {events} "
            f"({lost} lost, {duplicated} duplicated, {extra_rows} unknown); "
            f"{len(left)} sandbox processes left"
        )
        if left:
            detail += f" ({', '.join(left[:3])})"
        reasons = sorted({_reason(r) for r in results if isinstance(r, BaseException)})
        if reasons:
            detail += f"; failures: {' | '.join(reasons[:3])}"
        return Verdict(drill, passed, detail)


LEFTOVER_GRACE_SECONDS = 3.0


PR_SET_CHILD_SUBREAPER = 36


def adopt_orphans() -> None:
    """Make this process the one its descendants' orphans are given to, not init: a sandbox
    whose worker a drill killed stays below the drill, so `leftovers` finds it by descent and
    sees nothing of other processes' sandboxes (tests that run beside the drills). Orphans
    that end stay zombies until this process exits; `leftovers` does not count them."""
    if sys.platform == "linux":
        ctypes.CDLL(None).prctl(PR_SET_CHILD_SUBREAPER, 1)


def descendants(root: int) -> dict[int, tuple[str, str]]:
    """Every live process below `root`: pid -> (state, command line)."""
    children: dict[int, list[int]] = {}
    seen: dict[int, tuple[str, str]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        state, ppid = stat[stat.rindex(")") + 2 :].split()[:2]  # after "(command) "
        children.setdefault(int(ppid), []).append(int(entry.name))
        seen[int(entry.name)] = (state, b" ".join(argv).decode(errors="replace"))
    found: dict[int, tuple[str, str]] = {}
    todo = list(children.get(root, []))
    while todo:
        pid = todo.pop()
        if pid in seen and pid not in found:
            found[pid] = seen[pid]
            todo += children.get(pid, [])
    return found


def leftovers() -> list[str]:
    """Processes of sandboxed runs still alive below this process once every build has ended
    (its workers' and, by `adopt_orphans`, their orphans): bubblewrap, the landlock confiner,
    or anything in a run's cgroups ("pid command" each). Zombies have ended: not counted."""
    live = {pid: command for pid, (state, command) in descendants(os.getpid()).items()
            if state != "Z"}  # fmt: skip
    found: dict[int, str] = {}
    for group in cgroups.run_groups():
        try:
            members = [int(p) for p in (group / "cgroup.procs").read_text().split()]
        except OSError:
            continue
        found |= {pid: "in a run cgroup" for pid in members if pid in live}
    for pid, command in live.items():
        if command.split(" ", 1)[0].endswith("bwrap") or "activities/sandbox/confine.py" in command:
            found[pid] = command[:60]
    return [f"{pid} {what}" for pid, what in sorted(found.items())]


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
