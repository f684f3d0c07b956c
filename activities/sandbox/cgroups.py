"""A cgroup per run of generated code, where this machine lets the worker make one:
- pids: caps the run's processes (a fork bomb stops at pids.max, also for a worker running as
  root, which RLIMIT_NPROC does not bind), and whatever is left in it when the run ends is
  killed;
- memory: caps the memory of all the run's processes together (resident, swap not counted as
  a way out), so a suite that reserves much address space and uses little runs, and one that
  uses too much is killed and told so (the run's RLIMIT_AS is the fallback where no memory
  group can be made).
Linux cgroup v1 (a hierarchy per controller, `/sys/fs/cgroup/pids` and `/sys/fs/cgroup/memory`)
or v2 (one hierarchy with both controllers); a run is in every group made for it. Without
any, runs have no group and their description says so.

What a group's files are set to is a pure function (`settings`); the rest is the probing,
making and removing of folders.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

CANDIDATES = (
    Path("/sys/fs/cgroup/pids"),
    Path("/sys/fs/cgroup/memory"),
    Path("/sys/fs/cgroup/unified"),
    Path("/sys/fs/cgroup"),
)
CONTROLS = ("pids", "memory")
EMPTY_SECONDS = 2.0
PREFIX = "qao-run-"
STALE_SECONDS = 600.0  # a group this old is no run's that is starting


@dataclass(frozen=True)
class Place:
    """A folder where run groups can be made, of cgroup `version` 1 or 2, and what the groups
    made there hold."""

    root: Path
    version: int
    controls: tuple[str, ...]


@dataclass(frozen=True)
class Setting:
    file: str
    value: str
    required: bool = True  # the swap limits exist only where swap is accounted


@dataclass(frozen=True)
class Group:
    """A run's groups, one per place, and what they hold together."""

    paths: tuple[Path, ...]
    controls: tuple[str, ...]
    memory: Path | None = None  # the group that holds memory, if one does


def settings(place: Place, processes: int, memory_bytes: int) -> list[Setting]:
    """What a new group at `place` has its files set to, in order (v1 takes the memory limit
    before the memory+swap one, which may not be lower)."""
    found = []
    if "pids" in place.controls:
        found.append(Setting("pids.max", str(processes)))
    if "memory" in place.controls:
        if place.version == 2:
            found += [
                Setting("memory.max", str(memory_bytes)),
                Setting("memory.swap.max", "0", required=False),
            ]
        else:
            found += [
                Setting("memory.limit_in_bytes", str(memory_bytes)),
                Setting("memory.memsw.limit_in_bytes", str(memory_bytes), required=False),
            ]
    return found


def oom_kills(text: str) -> int:
    """The `oom_kill` count of a memory group's memory.oom_control (v1) or memory.events (v2)."""
    for line in text.splitlines():
        name, _, count = line.partition(" ")
        if name == "oom_kill" and count.strip().isdigit():
            return int(count)
    return 0


def _controls_of(probe: Path) -> tuple[int, tuple[str, ...]]:
    version = 2 if (probe / "cgroup.controllers").exists() else 1
    files = {
        "pids": "pids.max",
        "memory": "memory.max" if version == 2 else "memory.limit_in_bytes",
    }
    return version, tuple(c for c in CONTROLS if (probe / files[c]).exists())


@functools.cache
def places() -> tuple[Place, ...]:
    """Where run groups can be made here, probed once: each control at the first place that
    has it."""
    found: list[Place] = []
    held: set[str] = set()
    for candidate in CANDIDATES:
        probe = candidate / f"qao-probe-{os.getpid()}"
        try:
            probe.mkdir()
        except OSError:
            continue
        try:
            version, controls = _controls_of(probe)
        finally:
            with contextlib.suppress(OSError):
                probe.rmdir()
        new = tuple(c for c in controls if c not in held)
        if new:
            found.append(Place(candidate, version, new))
            held.update(new)
    return tuple(found)


def make(processes: int, memory_bytes: int) -> Group | None:
    """New groups for one run: at most `processes` processes, at most `memory_bytes` of
    memory, where each can be held here; None where no group can be made."""
    # Named after the worker that made it, so a later worker knows whose runs it held.
    name = f"{PREFIX}{os.getpid()}-{uuid.uuid4().hex[:12]}"
    made: list[Path] = []
    controls: list[str] = []
    memory: Path | None = None
    for place in places():
        group = place.root / name
        try:
            group.mkdir()
            for setting in settings(place, processes, memory_bytes):
                try:
                    (group / setting.file).write_text(setting.value)
                except OSError:
                    if setting.required:
                        raise
        except OSError:
            with contextlib.suppress(OSError):
                group.rmdir()
            continue
        made.append(group)
        controls += place.controls
        if "memory" in place.controls:
            memory = group
    return Group(tuple(made), tuple(controls), memory) if made else None


def oom_killed(group: Group) -> bool:
    """Whether the kernel killed a process of the run for its memory limit."""
    if group.memory is None:
        return False
    for name in ("memory.events", "memory.oom_control"):
        try:
            return oom_kills((group.memory / name).read_text()) > 0
        except OSError:
            continue
    return False


def peak_bytes(group: Group) -> int | None:
    """The most memory the run's processes used together, where the kernel tells it."""
    if group.memory is None:
        return None
    for name in ("memory.peak", "memory.max_usage_in_bytes"):
        try:
            return int((group.memory / name).read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
    return None


def remove(group: Group) -> None:
    """Kill every process left in the run's groups, then remove them."""
    for path in group.paths:
        remove_folder(path)


def remove_folder(group: Path) -> None:
    """Kill every process left in one group folder, then remove it."""
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


def run_groups() -> list[Path]:
    """Every run group on this machine, of any worker."""
    return [group for place in places() for group in place.root.glob(f"{PREFIX}*")]


def sweep(older_than: float = STALE_SECONDS) -> int:
    """End what the runs of a killed worker left: every group whose worker is gone, with the
    processes still in it (a sandbox that outlived its worker), and empty groups of unknown
    owner older than `older_than`; the number of groups removed. Groups of a worker that runs
    (this one, or another on this machine) are left alone."""
    removed = 0
    now = time.time()
    for group in run_groups():
        owner = _owner(group)
        try:
            if owner is not None:
                if _alive(owner):
                    continue
                remove_folder(group)  # its processes killed, then the group
            else:
                if now - group.stat().st_mtime < older_than:
                    continue
                group.rmdir()  # refused while a process is in it
        except OSError:
            continue
        if not group.exists():
            removed += 1
    return removed
