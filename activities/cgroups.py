"""A pids cgroup per run of generated code, where this machine lets the worker make one: it
caps the run's processes (a fork bomb stops at pids.max, also for a worker running as root,
which RLIMIT_NPROC does not bind), and whatever is left in it when the run ends is killed.
Linux cgroup v1 (`/sys/fs/cgroup/pids`) or v2 with the pids controller; without either, runs
have no group and their description says so."""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import time
import uuid
from pathlib import Path

ROOTS = (Path("/sys/fs/cgroup/pids"), Path("/sys/fs/cgroup/unified"), Path("/sys/fs/cgroup"))
EMPTY_SECONDS = 2.0
PREFIX = "qao-run-"
STALE_SECONDS = 600.0  # a group this old is no run's that is starting


@functools.cache
def root() -> Path | None:
    """Where run groups can be made here (probed once), or None."""
    for candidate in ROOTS:
        probe = candidate / f"qao-probe-{os.getpid()}"
        try:
            probe.mkdir()
        except OSError:
            continue
        try:
            if (probe / "pids.max").exists():
                return candidate
        finally:
            with contextlib.suppress(OSError):
                probe.rmdir()
    return None


def make(limit: int) -> Path | None:
    """A new group that admits at most `limit` processes, or None where none can be made."""
    base = root()
    if base is None:
        return None
    group = base / f"{PREFIX}{uuid.uuid4().hex[:12]}"
    try:
        group.mkdir()
        (group / "pids.max").write_text(str(limit))
    except OSError:
        return None
    return group


def remove(group: Path) -> None:
    """Kill every process left in the group, then remove it."""
    deadline = time.monotonic() + EMPTY_SECONDS
    while True:
        try:
            pids = [int(p) for p in (group / "cgroup.procs").read_text().split()]
        except OSError:
            pids = []
        if not pids or time.monotonic() > deadline:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.02)
    with contextlib.suppress(OSError):
        group.rmdir()


def sweep(older_than: float = STALE_SECONDS) -> int:
    """Remove the empty run groups a killed worker left (it could not remove its own); the
    number removed. A group with a process in it is never removed (rmdir refuses), and a new
    one is left to the worker that is about to join it."""
    base = root()
    if base is None:
        return 0
    removed = 0
    now = time.time()
    for group in base.glob(f"{PREFIX}*"):
        try:
            if now - group.stat().st_mtime < older_than:
                continue
            group.rmdir()
            removed += 1
        except OSError:
            continue
    return removed
