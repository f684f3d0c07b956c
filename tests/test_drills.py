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

# The fault drills, each with its own stack. Serial: a drill counts the sandbox processes
# left on the whole machine, which tests running beside it would add to.
pytestmark = [pytest.mark.slow, pytest.mark.serial]


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


@pytest.mark.timeout(600)
def test_every_drill_passes_on_sqlite():
    out = drills()
    for name in DRILLS:
        assert f"VERDICT {name}: PASS" in out, out
    assert "0 lost, 0 duplicated, 0 unknown" in out and ": exact" in out


@pytest.mark.timeout(300)
def test_the_mirror_survives_a_postgresql_outage():
    out = drills("db-outage", "--database", "postgresql")
    assert "VERDICT db-outage: PASS" in out and "postgresql outage" in out, out


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
