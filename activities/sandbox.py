"""Running generated code: a subprocess with a time limit, CPU and memory limits, and an
environment scrubbed of secrets. Used for test runs and release smoke checks."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from activities.beat import interval

# Only these variables reach generated code; nothing named like a secret ever does.
PASSED_THROUGH = ("PATH", "LANG", "LC_ALL", "TZ", "SYSTEMROOT")
OUTPUT_TAIL_CHARS = 4000
HEARTBEAT_SECONDS = 2.0  # at most; shorter when the heartbeat timeout asks


@dataclass(frozen=True)
class Limits:
    wall_seconds: float
    memory_mb: int

    @property
    def cpu_seconds(self) -> int:
        return int(self.wall_seconds) + 1


@dataclass
class RunResult:
    returncode: int
    timed_out: bool
    output: str  # the tail of stdout and stderr together
    seconds: float

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


def scrubbed_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k in PASSED_THROUGH}
    env.update(HOME=str(home), PYTHONDONTWRITEBYTECODE="1", PYTHONHASHSEED="0")
    # Generated tests run with pytest alone, not with whatever plugins the worker's environment
    # holds (they change what a test run means, and loading them cost ~3 s a run).
    env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


# The limits are set by a small launcher that then execs the command: a fresh, single-threaded
# process where that is safe. (Code in preexec_fn runs in a fork of the multi-threaded worker,
# and can deadlock there on a lock another thread held: the worker hung that way.) On Linux the
# launcher also asks for SIGKILL when its parent, the worker, dies (PR_SET_PDEATHSIG), so a
# killed worker's run does not go on beside the retry of its activity.
LAUNCHER = """
import ctypes, os, resource, signal, sys
cpu, memory = int(sys.argv[1]), int(sys.argv[2])
resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
if sys.platform == "linux":
    ctypes.CDLL(None).prctl(1, signal.SIGKILL)
os.execvp(sys.argv[3], sys.argv[3:])
"""


def _launched(argv: list[str], limits: Limits) -> list[str]:
    memory = limits.memory_mb * 1024 * 1024
    return [sys.executable, "-c", LAUNCHER, str(limits.cpu_seconds), str(memory), *argv]


async def run_limited(
    argv: list[str],
    *,
    cwd: Path,
    limits: Limits,
    home: Path,
    beat: Callable[[str], None] | None = None,
) -> RunResult:
    """Run argv; kill its whole process group at the wall-clock limit. `beat` is called every
    few seconds while it runs (the activity heartbeats with it)."""
    started = time.monotonic()
    await asyncio.to_thread(home.mkdir, parents=True, exist_ok=True)
    proc = await asyncio.create_subprocess_exec(
        *_launched(argv, limits),
        cwd=cwd,
        env=scrubbed_env(home),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,  # its own process group, killed as one
    )
    output = asyncio.create_task(proc.communicate())
    timed_out = False
    deadline = started + limits.wall_seconds
    try:
        while not output.done():
            left = deadline - time.monotonic()
            if left <= 0:
                timed_out = True
                _kill_group(proc.pid)
                break
            await asyncio.wait({output}, timeout=min(interval(HEARTBEAT_SECONDS), left))
            if beat is not None:
                beat(f"{argv[0]} running for {time.monotonic() - started:.0f}s")
    except BaseException:  # the activity was cancelled (or timed out): its run goes with it
        _kill_group(proc.pid)
        output.cancel()
        raise
    out, _ = await output
    text = (out or b"").decode(errors="replace")
    return RunResult(
        returncode=proc.returncode if proc.returncode is not None else -9,
        timed_out=timed_out,
        output=text[-OUTPUT_TAIL_CHARS:],
        seconds=time.monotonic() - started,
    )
