"""Running generated code: a subprocess in the process's sandbox (activities/sandbox/isolation.py),
with a time limit, CPU, memory, file-size and process limits, and an environment scrubbed of
secrets. Used for test runs, baseline runs, static checks and release smoke checks."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from activities import paths
from activities.beat import interval
from activities.sandbox import cgroups, isolation

# Only these variables reach generated code; nothing named like a secret ever does.
PASSED_THROUGH = ("PATH", "LANG", "LC_ALL", "TZ", "SYSTEMROOT")
OUTPUT_TAIL_CHARS = 4000
HEARTBEAT_SECONDS = 2.0  # at most; shorter when the heartbeat timeout asks
STOP_SECONDS = 2.0  # a landlock run's subreaper has this long to clear up at the time limit


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
    sandbox: str = ""  # how the run was confined, and its limits
    out_of_memory: bool = False  # killed for its memory limit (or a MemoryError under rlimit)

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


async def _stop(proc: asyncio.subprocess.Process, sandbox: isolation.Sandbox) -> None:
    """End a run at its time limit. Under landlock its subreaper is asked first (SIGTERM): it
    kills the command and every process left beneath it, a daemon in a session of its own
    too, which the process group's SIGKILL would miss where no cgroup holds the run."""
    if sandbox.kind == "landlock":
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(STOP_SECONDS):  # never swallows a cancellation
                await proc.wait()
    _kill_group(proc.pid)


def scrubbed_env(
    home: Path, venv: Path | None = None, temporary: Path | None = None
) -> dict[str, str]:
    """The environment of a run: HOME, PATH, TMPDIR if given, the locale, and nothing else of
    the worker's. With `venv` (a project's own environment) its folder leads PATH and the
    worker's does not appear at all, and pytest loads the plugins that environment holds, as
    the project's own CI would; without one (the worker's own tools: static checks) the
    worker's interpreter's folder is on PATH and pytest loads no plugin of the worker's."""
    env = {k: v for k, v in os.environ.items() if k in PASSED_THROUGH}
    env.update(HOME=str(home), PYTHONDONTWRITEBYTECODE="1", PYTHONHASHSEED="0")
    if temporary is not None:
        env["TMPDIR"] = str(temporary)
    if venv is not None:
        env["VIRTUAL_ENV"] = str(venv)
        path = [str(venv / "bin"), env.get("PATH", "")]
    else:
        env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
        path = [str(Path(sys.executable).parent), env.get("PATH", "")]
    env["PATH"] = os.pathsep.join(path)
    return env


def source_path(checkout: Path, roots: Sequence[str]) -> str:
    """A project's own import roots in `checkout` (relative paths an editable install named;
    none named: `src` where it is a folder), as PYTHONPATH: its source before anything its
    environment has installed."""
    found = [r for r in roots if (checkout / r).is_dir()]
    if not found and (checkout / "src").is_dir():
        found = ["src"]
    return os.pathsep.join(str(checkout / r) if r != "." else str(checkout) for r in found)


# The limits are set by a small launcher that then execs the command: a fresh, single-threaded
# process where that is safe. (Code in preexec_fn runs in a fork of the multi-threaded worker,
# and can deadlock there on a lock another thread held: the worker hung that way.) On Linux the
# launcher also asks for SIGKILL when its parent, the worker, dies (PR_SET_PDEATHSIG), so a
# killed worker's run does not go on beside the retry of its activity.
LAUNCHER = """
import ctypes, os, resource, signal, sys
cpu, memory, size, procs = (int(a) for a in sys.argv[1:5])
for group in filter(None, sys.argv[5].split(os.pathsep)):  # it and every descendant count
    with open(os.path.join(group, "cgroup.procs"), "w") as procs_file:
        procs_file.write(str(os.getpid()))
resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
if memory:  # 0: a memory cgroup holds the run
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))
resource.setrlimit(resource.RLIMIT_NPROC, (procs, procs))
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
if sys.platform == "linux":
    ctypes.CDLL(None).prctl(1, signal.SIGKILL)
command = sys.argv[6:]
if command[1:2] == ["-S"] and command[2:3] and command[2].endswith(os.sep + "confine.py"):
    # landlock: confine.py's main in this process (one interpreter start less a run)
    sys.path.insert(0, os.path.dirname(command[2]))
    import confine
    sys.exit(confine.main(command[2:]))
os.execvp(command[0], command)
"""
FILE_BYTES = 256 * 1024 * 1024  # the largest file a run may write
PROCESSES = 256  # processes of a sandboxed run at once (a fork bomb stops here)


def launched(argv: list[str], limits: Limits, group: cgroups.Group | None) -> list[str]:
    """The launcher's command for `argv`: the run joins its groups, then its rlimits are set
    (the address space only where no memory group holds it) and `argv` is executed."""
    held = group is not None and group.memory is not None
    memory = 0 if held else limits.memory_mb * 1024 * 1024
    groups = os.pathsep.join(map(str, group.paths)) if group else ""
    return [
        sys.executable, "-S", "-c", LAUNCHER,  # -S: the standard library is all it needs
        str(limits.cpu_seconds), str(memory), str(FILE_BYTES), str(PROCESSES), groups, *argv,
    ]  # fmt: skip


def described(
    sandbox: isolation.Sandbox,
    limits: Limits,
    group: cgroups.Group | None,
    network: bool = False,
    peak: int | None = None,
) -> str:
    """How the run was confined and limited (`peak`: the most memory it used, if known)."""
    controls = group.controls if group else ()
    counted = "a pids cgroup" if "pids" in controls else "rlimit only, which root is exempt from"
    used = f", {peak / 2**20:.0f} MB used at most" if peak is not None else ""
    memory = (
        f"{limits.memory_mb} MB of memory (a memory cgroup: all its processes together{used})"
        if "memory" in controls
        else f"{limits.memory_mb} MB of address space per process (rlimit)"
    )
    return (
        f"{sandbox.describe(network)}; limits {limits.wall_seconds:g} s, {memory}, "
        f"{PROCESSES} processes ({counted}), files up to {FILE_BYTES // 2**20} MB"
    )


def memory_exceeded(limits: Limits, group: cgroups.Group | None) -> str:
    if group is not None and group.memory is not None:
        return (
            f"killed for memory: the run's processes together used its limit of "
            f"{limits.memory_mb} MB"
        )
    return f"out of memory: a process reached its limit of {limits.memory_mb} MB of address space"


def out_of_memory(group: cgroups.Group | None, output: str) -> bool:
    """Whether the run ended for its memory limit: its memory group's kernel killed a
    process, or, under the address-space rlimit, an allocation was refused and said so."""
    if group is not None and group.memory is not None:
        return cgroups.oom_killed(group)
    return any(sign in output for sign in ("MemoryError", "Cannot allocate memory"))


async def run_limited(
    argv: list[str],
    *,
    cwd: Path,
    limits: Limits,
    scratch: Path,
    beat: Callable[[str], None] | None = None,
    writable: Sequence[Path] = (),
    readonly: Sequence[Path] = (),
    network: bool = False,
    venv: Path | None = None,
    write_cwd: bool = True,
    env: Mapping[str, str] | None = None,
    ports: Sequence[int] = (),
) -> RunResult:
    """Run argv in the process's sandbox, which lets it write `cwd` (unless not `write_cwd`)
    and `writable` only and read `readonly` besides the system and the interpreter; kill it
    at the wall-clock limit. `scratch` is a folder of the worker's that no run writes: the run
    gets a new folder in it for its home and temporary files (bubblewrap's tmpfs instead),
    removed after, so no run finds what an earlier one left there. `network` shares the
    host's network (a setup command a person allowed it); `venv` is a project's own
    environment, first on PATH. `env` adds variables the caller chose to the scrubbed
    environment (a setup command's package index); `ports` are TCP ports a run with network
    may reach besides the sandbox's own (the worker's index proxy). `beat` is called every few
    seconds while it runs (the activity heartbeats with it)."""
    started = time.monotonic()
    sandbox = await asyncio.to_thread(isolation.current)
    own: Path | None = None
    if sandbox.kind == "bubblewrap":
        home = Path("/tmp")  # the sandbox's own tmpfs
    else:  # its home and temporary files: a new folder of the run's own
        own = home = await asyncio.to_thread(paths.fresh, scratch, "run-")
        writable = [*writable, own]
    temporary = own if sandbox.kind == "landlock" else None
    group = await asyncio.to_thread(cgroups.make, PROCESSES, limits.memory_mb * 1024 * 1024)
    try:
        wrapped = sandbox.wrap(argv, cwd, writable, readonly, network, write_cwd, ports)
        proc = await asyncio.create_subprocess_exec(
            *launched(wrapped, limits, group),
            cwd=cwd,
            env=scrubbed_env(home, venv, temporary) | dict(env or {}),
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
                    await _stop(proc, sandbox)
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
        returncode = proc.returncode if proc.returncode is not None else -9
        short = returncode != 0 and await asyncio.to_thread(out_of_memory, group, text)
        peak = await asyncio.to_thread(cgroups.peak_bytes, group) if group else None
        if short:  # said last, where whoever reads the output's tail looks
            text += f"\n[sandbox] {memory_exceeded(limits, group)}\n"
        return RunResult(
            returncode=returncode,
            timed_out=timed_out,
            output=text[-OUTPUT_TAIL_CHARS:],
            seconds=time.monotonic() - started,
            sandbox=described(sandbox, limits, group, network, peak),
            out_of_memory=short,
        )
    finally:
        if group is not None:
            await asyncio.to_thread(cgroups.remove, group)  # what is left in it is killed
        if own is not None:
            await asyncio.to_thread(paths.remove_tree, own)
