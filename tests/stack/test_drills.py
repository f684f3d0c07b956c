"""The fault drills keep working: each one, short, on the real worker, dev server and mirror
(`python -m chaos --quick`; the full drills run by hand, see bench/RESULTS.md)."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from chaos.__main__ import DRILLS
from chaos.stack import WorkerExited, stack
from tests.helpers import ROOT

SANDBOX_LIKE = "import time; time.sleep(60)  # activities/sandbox/confine.py"

# A process that adopts orphans starts a child that starts a sandbox-like grandchild and exits
# (the grandchild is orphaned, as a killed worker's sandbox is), then prints what a drill would
# count as left over, and ends what it found.
COUNTS_ITS_OWN = f"""
import os, signal, subprocess, sys, time
from chaos.stack import adopt_orphans, leftovers
adopt_orphans()
grandchild = [sys.executable, "-c", {SANDBOX_LIKE!r}]
starter = f"import subprocess; subprocess.Popen({{grandchild!r}})"
subprocess.run([sys.executable, "-c", starter], check=True)
time.sleep(0.5)
found = leftovers()
print(len(found), found)
for line in found:
    os.kill(int(line.split()[0]), signal.SIGKILL)
"""


def test_a_drill_counts_what_its_own_workers_left_and_nothing_beside_it():
    """The orphan of its own child is found; a sandbox-like process beside it (this test's)
    is not: the drills run beside the rest of the suite."""
    beside = subprocess.Popen([sys.executable, "-c", SANDBOX_LIKE])
    try:
        done = subprocess.run(
            [sys.executable, "-c", COUNTS_ITS_OWN],
            cwd=ROOT, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    finally:
        beside.kill()
        beside.wait()
    assert done.returncode == 0, done.stderr
    count, found = done.stdout.split(" ", 1)
    assert count == "1" and f"{beside.pid} " not in found, done.stdout


def drills(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "chaos", "--quick", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    return done.stdout


# Every drill of `python -m chaos` runs here or in test_drills_faults.py and
# test_drills_api.py: three modules, so the suite's processes run them side by side.
HERE = ("kill-worker", "restart-server")


def test_the_drills_modules_run_every_drill():
    from tests.stack import test_drills_api, test_drills_faults

    assert sorted([*HERE, *test_drills_faults.HERE, *test_drills_api.HERE]) == sorted(DRILLS)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_killed_worker_and_a_restarted_server_lose_and_double_nothing():
    out = drills(*HERE)
    for name in HERE:
        assert f"VERDICT {name}: PASS" in out, out
    assert out.count("0 lost, 0 duplicated, 0 unknown") == len(HERE), out


@pytest.mark.slow
async def test_a_drill_stops_at_once_when_its_worker_exits_on_its_own():
    """Not after waiting out its whole timeout (600 s) for builds no worker runs."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        async with stack("sqlite") as s:
            await s.start_worker(WORKER_METRICS_ADDRESS=address)  # it cannot serve metrics there
            handles = await s.start_builds(1)
            with pytest.raises(WorkerExited, match="cannot serve metrics at"):
                await s.check("kill-worker", handles, "", seconds=300)
