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
    # Named after the worker that made it, so a later worker knows whose runs it held.
    group = base / f"{PREFIX}{os.getpid()}-{uuid.uuid4().hex[:12]}"
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


def _owner(group: Path) -> int | None:
    """The pid of the worker that made `group` (None: a group named before groups said so)."""
    owner = group.name.removeprefix(PREFIX).split("-", 1)[0]
    return int(owner) if owner.isdigit() and "-" in group.name.removeprefix(PREFIX) else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive
    return True


def sweep(older_than: float = STALE_SECONDS) -> int:
    """End what the runs of a killed worker left: every group whose worker is gone, with the
    processes still in it (a sandbox that outlived its worker), and empty groups of unknown
    owner older than `older_than`; the number of groups removed. Groups of a worker that runs
    (this one, or another on this machine) are left alone."""
    base = root()
    if base is None:
        return 0
    removed = 0
    now = time.time()
    for group in base.glob(f"{PREFIX}*"):
        owner = _owner(group)
        try:
            if owner is not None:
                if _alive(owner):
                    continue
                remove(group)  # its processes killed, then the group
            else:
                if now - group.stat().st_mtime < older_than:
                    continue
                group.rmdir()  # refused while a process is in it
        except OSError:
            continue
        if not group.exists():
            removed += 1
    return removed
