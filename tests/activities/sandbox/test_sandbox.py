"""Generated code runs isolated: a hostile test suite (tests/activities/sandbox/hostile_suite.py),
run through the real test activity's path (activities/testing/testrun.py) under each sandbox,
tries every way out.

Under bubblewrap every attempt must fail while the build's own test passes; each attempt is a
test of its own here, so a failure names the hole that opened. Under `none` the same suite
gets out, which shows the suite can fail.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from activities.repository.gitcmd import git
from activities.sandbox import cgroups, isolation, landlock
from activities.sandbox.policy import Policy
from activities.sandbox.runs import Limits
from activities.testing import environment
from activities.testing.results import passed_tests
from activities.testing.testrun import run_command
from core.reports import TestReport
from core.settings import Settings

HOSTILE = Path(__file__).with_name("hostile_suite.py")
# The attempts that know inside whether they got out (each passes when it did). Whether the
# daemon outlived the run is seen only from outside, after it (Outcome.daemon_alive).
DAEMON = "test_leave_a_daemon_behind"
ATTEMPTS = sorted(
    line.split("(")[0].removeprefix("def ")
    for line in HOSTILE.read_text().splitlines()
    if line.startswith("def test_") and "feature_works" not in line and DAEMON not in line
)
FORKS = 300  # over the sandbox's 256 processes
FILL_MB = 320  # over its /tmp of 256 MB


@dataclass
class Outcome:
    kind: str
    report: TestReport
    got_out: set[str]  # the attempts that passed: the holes
    received: bytes  # what the host's listener was sent
    outside_written: bool
    git_hook_written: bool
    daemon_alive: bool


class Listener:
    """A listener of the host's (TCP on its loopback, or a unix socket at `path`) that keeps
    what it is sent."""

    def __init__(self, path: Path | None = None) -> None:
        if path is None:
            self.sock = socket.create_server(("127.0.0.1", 0))
            self.port = self.sock.getsockname()[1]
        else:  # a database server's socket, say: outside every workspace
            self.sock = socket.socket(socket.AF_UNIX)
            self.sock.bind(str(path))
            self.sock.listen()
        self.received = b""
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(2)
                try:
                    while chunk := conn.recv(4096):
                        self.received += chunk
                except OSError:
                    pass

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def secret_holder() -> Iterator[tuple[int, str]]:
    """A process standing for the worker, with a secret in its environment."""
    secret = f"sk-hostile-{uuid.uuid4().hex}"
    proc = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(600)"],
        env={**os.environ, "OPENAI_API_KEY": secret},
    )
    yield proc.pid, secret
    proc.kill()
    proc.wait()


async def hostile_run(
    kind: isolation.Choice, root: Path, holder: tuple[int, str], temporal: str
) -> Outcome:
    pid, secret = holder
    workspaces = root / "workspaces"
    repo = workspaces / "b-hostile" / "repo"
    (repo / "tests").mkdir(parents=True)
    git(None, "init", "-q", str(repo))
    shutil.copy(HOSTILE, repo / "tests" / "test_hostile.py")
    other = workspaces / "b-other" / "repo" / "secret.txt"
    other.parent.mkdir(parents=True)
    other.write_text(secret)
    mirror = root / "data" / "mirror.db"
    mirror.parent.mkdir()
    sqlite3.connect(mirror).execute("create table builds (secret text)").connection.commit()
    home_file = Path.home() / f".qao-hostile-{uuid.uuid4().hex[:8]}"
    outside_system = Path("/var/tmp") / f"qao-escaped-{uuid.uuid4().hex[:8]}"
    home_file.write_text(secret)
    listener, unix = Listener(), Listener(root / "host.sock")
    targets = {
        "worker_pid": pid,
        "secret": secret,
        "mirror": str(mirror),
        "other_workspace": str(other),
        "workspaces": str(workspaces),
        "home_file": str(home_file),
        "outside": str(root / "escaped.txt"),
        "outside_system": str(outside_system),
        "listener_port": listener.port,
        "unix_socket": str(root / "host.sock"),
        "temporal": temporal,
        "daemon_marker": str(repo / "daemon.log"),
        "forks": FORKS,
        "fill_mb": FILL_MB,
    }
    (repo / "targets.json").write_text(json.dumps(targets))
    try:
        with isolation.using(kind):
            # As a project's tests run: in an environment of its own (the runner alone here).
            request = environment.Request(store=root / "environments", project="hostile")
            report = await run_command(
                repo,
                repo.parent / "runs",
                "hostile",
                "python -m pytest",
                Limits(90, 2048),
                request=request,
            )
    finally:
        home_file.unlink()
        escaped = outside_system.exists()
        outside_system.unlink(missing_ok=True)
    marker = repo / "daemon.log"
    before = marker.stat().st_size if marker.exists() else 0
    await asyncio.sleep(0.6)
    after = marker.stat().st_size if marker.exists() else 0
    listener.close()
    unix.close()
    junit = Path(report.junit or repo.parent / "runs" / "junit-hostile.xml")
    passed = {name.rsplit("::", 1)[-1] for name in passed_tests(junit)}
    return Outcome(
        kind=kind,
        report=report,
        got_out=passed & set(ATTEMPTS),
        received=listener.received + unix.received,
        outside_written=escaped or (root / "escaped.txt").exists(),
        git_hook_written=(repo / ".git" / "hooks" / "post-checkout").exists(),
        daemon_alive=after > before,
    )


CONFINED = ("bubblewrap", "landlock")  # every sandbox that works here


@pytest.fixture(scope="module", params=CONFINED)
async def sandboxed(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    secret_holder: tuple[int, str],
    temporal_address: str,
) -> AsyncIterator[Outcome]:
    kind = request.param
    root = tmp_path_factory.mktemp(f"hostile-{kind}")
    yield await hostile_run(kind, root, secret_holder, temporal_address)


@pytest.fixture(scope="module")
async def unconfined(
    tmp_path_factory: pytest.TempPathFactory, secret_holder: tuple[int, str], temporal_address: str
) -> AsyncIterator[Outcome]:
    root = tmp_path_factory.mktemp("hostile-none")
    yield await hostile_run("none", root, secret_holder, temporal_address)


@pytest.mark.parametrize("attempt", ATTEMPTS)
def test_every_way_out_fails(sandboxed: Outcome, attempt: str) -> None:
    assert attempt not in sandboxed.got_out, f"hole: {attempt} got out of the sandbox"


def test_the_builds_own_test_runs_and_nothing_leaks(sandboxed: Outcome) -> None:
    report = sandboxed.report
    assert report.tests_run == len(ATTEMPTS) + 2
    assert "test_the_feature_works" not in {f.test.rsplit("::", 1)[-1] for f in report.failures}
    assert report.sandbox.startswith(sandboxed.kind)
    assert "256 processes (a pids cgroup)" in report.sandbox
    assert sandboxed.received == b""
    assert not sandboxed.outside_written and not sandboxed.git_hook_written


def test_no_daemon_outlives_the_run(sandboxed: Outcome) -> None:
    # bubblewrap: the run's PID namespace takes it along; landlock: the subreaper kills it.
    assert not sandboxed.daemon_alive


def test_without_a_sandbox_the_same_suite_gets_out(unconfined: Outcome) -> None:
    """The suite can fail: unconfined, every attempt gets out but those the run's pids cgroup
    stops where the machine has one (the fork bomb, and the daemon, killed with the group)."""
    grouped = any("pids" in place.controls for place in cgroups.places())
    stopped = {"test_fork_without_end"} if grouped else set()
    assert unconfined.got_out == set(ATTEMPTS) - stopped, set(ATTEMPTS) - unconfined.got_out
    assert unconfined.received and unconfined.outside_written and unconfined.git_hook_written
    assert unconfined.daemon_alive is not grouped
    assert unconfined.report.sandbox.startswith("none")


def pids_place() -> Path:
    for place in cgroups.places():
        if "pids" in place.controls:
            return place.root
    pytest.skip("no pids cgroup can be made here")


def test_the_worker_sweeps_empty_run_groups_of_no_known_worker() -> None:
    base = pids_place()
    # Groups named without their worker's pid: only their age and emptiness say they are left.
    left, busy = (base / f"{cgroups.PREFIX}{uuid.uuid4().hex[:12]}" for _ in range(2))
    left.mkdir()
    busy.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (busy / "cgroup.procs").write_text(str(holder.pid))
        cgroups.sweep()
        assert left.exists()  # a new group may be a run's that is about to join it
        cgroups.sweep(older_than=0)
        assert not left.exists()
        assert busy.exists()  # a process in it: never removed
    finally:
        holder.kill()
        holder.wait()
        cgroups.remove_folder(busy)
    assert not busy.exists()


def test_the_worker_ends_what_a_dead_workers_runs_left_and_spares_a_live_ones() -> None:
    """A sandbox that outlived its worker (bubblewrap as PID 1 of a run's namespace, say) is
    in its run's group, named after the worker: a worker at start kills what is in the groups
    of workers that are gone, and leaves those of workers that run."""
    base = pids_place()
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a worker that was killed: its pid is free
    orphaned = base / f"{cgroups.PREFIX}{gone.pid}-{uuid.uuid4().hex[:12]}"
    orphaned.mkdir()
    made = cgroups.make(8, 2**30)  # this process's: a worker that runs
    assert made is not None
    live = next(path for path in made.paths if path.parent == base)
    left = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    kept = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (orphaned / "cgroup.procs").write_text(str(left.pid))
        (live / "cgroup.procs").write_text(str(kept.pid))
        assert cgroups.sweep() >= 1
        assert left.wait(timeout=10) == -9 and not orphaned.exists()
        assert kept.poll() is None and live.exists()
    finally:
        for proc in (left, kept):
            proc.kill()
            proc.wait()
        cgroups.remove(made)
        cgroups.remove_folder(orphaned)


async def test_landlock_writes_the_repositorys_entries_but_not_git_nor_its_top_level(
    tmp_path: Path,
) -> None:
    """Landlock's rights only add up beneath a folder: `.git` stays read-only because the
    write right goes to each of the repository's other entries, not to the repository."""
    repo = tmp_path / "repo"
    writes = (
        "from pathlib import Path\n"
        "import pytest\n\n\n"
        "def test_a_file_in_an_existing_folder():\n"
        "    Path('tests/out.txt').write_text('ok')\n\n\n"
        "def test_a_new_top_level_file_is_refused():\n"
        "    with pytest.raises(PermissionError):\n"
        "        Path('new.txt').write_text('no')\n\n\n"
        "def test_its_git_is_read_only():\n"
        "    with pytest.raises(PermissionError):\n"
        "        Path('.git/config').write_text('[core]\\n\\tfsmonitor = evil\\n')\n"
    )
    report = await landlocked(repo, {"tests/test_writes.py": writes}, wall_seconds=60)
    assert report.passed and report.tests_run == 3, report.failures
    assert (repo / "tests" / "out.txt").read_text() == "ok" and not (repo / "new.txt").exists()
    policy = Policy(cwd=repo, writable=(tmp_path / "runs",))
    rules = landlock.rules(policy, isolation.writable_entries(repo))
    assert str(repo / ".git") not in rules.write and str(repo) in rules.read


async def test_at_its_time_limit_a_landlock_run_leaves_no_daemon_even_without_a_cgroup(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The subreaper clears up: a daemon in a session of its own escapes the process group's
    kill, and here no cgroup holds the run."""
    monkeypatch.setattr(cgroups, "make", lambda processes, memory: None)
    repo = tmp_path / "repo"
    files = {"tests/daemon.py": DAEMON_SCRIPT, "tests/test_hangs.py": LEAVES_A_DAEMON,
             "tests/daemon.log": ""}  # fmt: skip
    report = await landlocked(repo, files, wall_seconds=3)
    marker = repo / "tests" / "daemon.log"
    assert report.timed_out and "rlimit only" in report.sandbox
    before = marker.stat().st_size
    assert before > 0  # the daemon ran
    await asyncio.sleep(0.5)
    assert marker.stat().st_size == before  # and is gone


def test_the_subreaper_told_to_stop_again_and_again_still_kills_what_the_run_left(
    tmp_path: Path,
) -> None:
    """A killed worker's run is told to stop more than once (once per thread of the worker the
    kernel re-parents it through): every stop after the first finds the command gone, and the
    subreaper still kills the daemon the run left and ends with the command's own status."""
    (tmp_path / "daemon.py").write_text(DAEMON_SCRIPT)
    marker = tmp_path / "daemon.log"
    left = f"{sys.executable} {tmp_path / 'daemon.py'} {marker}; exec sleep 60"
    confine = Path(isolation.__file__).with_name("confine.py")
    run = subprocess.Popen(
        [sys.executable, "-S", str(confine), "fs=off", "--", "sh", "-c", left], cwd=tmp_path
    )
    try:
        deadline = time.monotonic() + 10
        while not marker.exists() or marker.stat().st_size < 3:
            assert time.monotonic() < deadline, "the daemon never started"
            time.sleep(0.02)
        while run.poll() is None:  # stops every millisecond, until the subreaper has ended
            run.send_signal(signal.SIGTERM)
            time.sleep(0.001)
        before = marker.stat().st_size
        time.sleep(0.3)
        assert marker.stat().st_size == before, "the daemon outlived its run"
        assert run.returncode == 128 + signal.SIGKILL  # the command's end, not a traceback
    finally:
        run.kill()
        subprocess.run(["pkill", "-9", "-f", str(marker)], check=False)


DAEMON_SCRIPT = (
    "import os, sys, time\n"
    "if os.fork():\n    os._exit(0)\n"
    "os.setsid()\n"
    "if os.fork():\n    os._exit(0)\n"
    "while True:\n"
    "    with open(sys.argv[1], 'a') as out:\n        out.write('x')\n"
    "    time.sleep(0.05)\n"
)
LEAVES_A_DAEMON = (
    "import subprocess, sys, time\n"
    "from pathlib import Path\n\n\n"
    "def test_leaves_a_daemon_then_hangs():\n"
    "    here = Path(__file__).parent\n"
    "    subprocess.run([sys.executable, str(here / 'daemon.py'), str(here / 'daemon.log')])\n"
    "    time.sleep(60)\n"
)
A_WORKER = """
import asyncio, sys
from pathlib import Path
from activities.sandbox import cgroups, isolation
from activities.sandbox.runs import Limits
from activities.testing.testrun import run_command
cgroups.make = lambda processes, memory: None  # as on a machine where the worker can make no cgroup
repo = Path(sys.argv[2])
with isolation.using(sys.argv[1]):
    asyncio.run(run_command(repo, repo.parent / "runs", "t", "python -m pytest", Limits(60, 1024)))
"""


@pytest.mark.parametrize("kind", CONFINED)
async def test_a_killed_workers_run_leaves_no_daemon_even_without_a_cgroup(
    tmp_path: Path, kind: str
) -> None:
    """kill -9 of the worker while its run's test has left a daemon in a session of its own:
    bubblewrap's PID namespace ends with the run; under landlock the run's subreaper, told by
    the kernel that the worker died, kills what it holds before it goes."""
    repo = tmp_path / "repo"
    (repo / "tests").mkdir(parents=True)
    git(None, "init", "-q", str(repo))
    files = {"tests/daemon.py": DAEMON_SCRIPT, "tests/test_hangs.py": LEAVES_A_DAEMON}
    for name, text in files.items():
        (repo / name).write_text(text)
    marker = repo / "tests" / "daemon.log"
    worker = subprocess.Popen(  # noqa: ASYNC220 (killed, not awaited)
        [sys.executable, "-c", A_WORKER, kind, str(repo)], cwd=Path(__file__).parents[3]
    )
    try:
        async with asyncio.timeout(30):
            while not marker.exists() or marker.stat().st_size < 3:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
    finally:
        worker.kill()
        worker.wait()
    # The daemon writes every 50 ms while it lives: it is gone once the file stops growing.
    # A loaded machine may take a while to run the subreaper's clean-up; 10 s is for ever.
    async with asyncio.timeout(10):
        while True:
            before = marker.stat().st_size
            await asyncio.sleep(0.3)
            if marker.stat().st_size == before:
                break


async def landlocked(repo: Path, files: dict[str, str], wall_seconds: float) -> TestReport:
    """`files` in a new repository at `repo`, its tests run under landlock."""
    (repo / "tests").mkdir(parents=True)
    git(None, "init", "-q", str(repo))
    for name, text in files.items():
        (repo / name).write_text(text)
    with isolation.using("landlock"):
        limits = Limits(wall_seconds, 1024)
        return await run_command(repo, repo.parent / "runs", "t", "python -m pytest", limits)


def test_the_sandbox_is_given_the_setup_ports_of_the_settings_it_is_configured_by() -> None:
    """The ports a setup command with network may reach come from the settings the worker
    configures its sandbox with (isolation.configured, at start), not read inside."""
    settings = Settings(sandbox="bubblewrap", sandbox_setup_ports="8443,8080")
    with isolation.using("none"):  # the process's sandbox back as it was, after
        isolation.configured(settings)
        chosen = isolation.current()
        assert chosen.kind == "bubblewrap" and chosen.ports == (8443, 8080)
        assert "TCP ports 8443, 8080 only" in chosen.describe(network=True)
        argv = chosen.wrap(["pip", "install", "."], Path("/tmp"), network=True)
        command = argv[argv.index("--") + 1 :]  # confine.py, holding it to the ports
        assert command[3:] == ["port=8443", "port=8080", "network", "fs=off", "--", "pip",
                               "install", "."]  # fmt: skip
    with isolation.using("bubblewrap"):
        assert isolation.current().ports == ()  # none given: any port
