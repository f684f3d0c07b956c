"""Running generated code: a subprocess with a time limit, CPU and memory limits, and an
environment scrubbed of secrets. Used for test runs and release smoke checks."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import resource
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


# Linux: the child is killed when the worker dies (kill -9 included), not left running beside
# the retry of its activity. prctl(PR_SET_PDEATHSIG, SIGKILL).
_PR_SET_PDEATHSIG = 1
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None


def _apply_limits(limits: Limits) -> Callable[[], None]:
    def preexec() -> None:  # runs in the child, before exec
        os.setsid()
        if _LIBC is not None:
            _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_seconds, limits.cpu_seconds))
        memory = limits.memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    return preexec


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
        *argv,
        cwd=cwd,
        env=scrubbed_env(home),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        preexec_fn=_apply_limits(limits),
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
