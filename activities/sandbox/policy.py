"""What one confined run may touch, as a typed policy, and the pure functions that turn it into
bubblewrap's argv and into the rules activities/sandbox/confine.py applies with Landlock and
seccomp.

The machine's facts the result depends on (which system paths are links, whether the run's
folder has a `.git`, the localhost-only hosts file) come in as `Host`, so each function is
pure: tests/test_policy.py asserts the exact argv and rules, as openai/codex tests its
bubblewrap argv. activities/sandbox/isolation.py gathers the facts and runs the result.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

TMP_BYTES = 256 * 1024 * 1024  # the sandbox's /tmp
SYSTEM = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
# What of /etc a run reads: the loader's cache, names of users and hosts, time zones, TLS roots,
# the system's name.
ETC = (
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "localtime",
    "passwd",
    "group",
    "nsswitch.conf",
    "alternatives",
    "ssl/certs",
    "ca-certificates",
    "mime.types",
    "os-release",  # what system this is (pip asks; a denied read is an error, a missing one not)
    "debian_version",
    "lsb-release",
)
NETWORK_ETC = ("hosts", "resolv.conf")
# The devices a run uses under landlock (bubblewrap makes a /dev of its own).
DEVICES = {"/dev/null": "rw", "/dev/zero": "r", "/dev/full": "rw", "/dev/random": "r",
           "/dev/urandom": "r"}  # fmt: skip


@dataclass(frozen=True)
class Policy:
    """One run: where it runs, what it may read and write besides the system, and whether it
    reaches the host's network (on `ports` only, where they are given)."""

    cwd: Path
    write_cwd: bool = True  # the run's folder is writable (its `.git` never is)
    writable: tuple[Path, ...] = ()
    readonly: tuple[str, ...] = ()  # the interpreter and its environment, the caller's paths
    network: bool = False
    ports: tuple[int, ...] = ()  # with the network: the TCP ports it may connect to (): any


@dataclass(frozen=True)
class Host:
    """The machine's facts a policy's argv depends on."""

    links: dict[str, str] = field(default_factory=dict)  # a system path that is a link -> target
    folders: tuple[str, ...] = ()  # the system paths that are folders
    git: bool = False  # the run's folder has a `.git`
    hosts: str = ""  # the localhost-only hosts file
    python: str = ""  # the interpreter that runs confine.py
    confine: str = ""  # activities/sandbox/confine.py


def confined(host: Host, rules: dict[str, object], argv: list[str]) -> list[str]:
    """`argv` run by activities/sandbox/confine.py under `rules`."""
    from activities.sandbox import confine

    return [host.python, "-S", host.confine, *confine.arguments(rules), *argv]


def bubblewrap_argv(binary: str, policy: Policy, host: Host, argv: list[str]) -> list[str]:
    """bwrap's command for `argv` under `policy`: every namespace new (the network a loopback of
    its own unless `network`), a read-only system of /usr, the /etc files a run reads and the
    interpreter, a fresh /proc, /dev and size-limited /tmp, the run's folder writable (its
    `.git` read-only), and the root remounted read-only."""
    if policy.network and policy.ports:  # Landlock keeps its TCP to these ports
        argv = confined(host, {"network": True, "ports": list(policy.ports), "fs": False}, argv)
    args = [
        binary,
        "--unshare-all",  # user, pid, net, ipc, uts, cgroup: the network is a loopback
        *(["--share-net"] if policy.network else []),
        "--die-with-parent",
        "--new-session",
        "--cap-drop", "ALL",
        "--hostname", "sandbox",
    ]  # fmt: skip
    for path in SYSTEM:
        if path in host.links:
            args += ["--symlink", host.links[path], path]
        elif path in host.folders:
            args += ["--ro-bind", path, path]
    for name in ETC:
        args += ["--ro-bind-try", f"/etc/{name}", f"/etc/{name}"]
    if policy.network:  # the host's names and resolver
        for name in NETWORK_ETC:
            args += ["--ro-bind-try", f"/etc/{name}", f"/etc/{name}"]
    else:  # localhost, not the host's names
        args += ["--ro-bind", host.hosts, "/etc/hosts"]
    # /tmp first: what is bound below it (an environment under /tmp) must stay visible.
    args += ["--proc", "/proc", "--dev", "/dev", "--size", str(TMP_BYTES), "--tmpfs", "/tmp"]
    for path in policy.readonly:
        args += ["--ro-bind", path, path]
    if policy.network:  # confine.py, which holds it to its ports
        args += ["--ro-bind", host.confine, host.confine]
    cwd = str(policy.cwd)
    args += ["--bind" if policy.write_cwd else "--ro-bind", cwd, cwd]
    for folder in policy.writable:
        args += ["--bind", str(folder), str(folder)]
    if host.git:
        git = str(policy.cwd / ".git")
        args += ["--ro-bind", git, git]
    # The sandbox's own root (where bwrap made the mount points) is read-only too.
    return [*args, "--remount-ro", "/", "--chdir", cwd, "--", *argv]


def landlock_rules(policy: Policy, entries: list[str]) -> dict[str, object]:
    """What activities/sandbox/confine.py lets a run read and write. Landlock's rights only add up
    beneath a folder, so the run's `.git` stays read-only by giving the write right to each of
    its folder's other `entries` (not links: confine.py never opens a write rule through a
    link), not to the folder itself."""
    read = [*SYSTEM, *(f"/etc/{name}" for name in ETC), *policy.readonly]
    # Not /proc: Landlock's ptrace rule does not keep a run of root's from another process's
    # /proc/<pid>/environ there (tried on this kernel), and a run needs none of it.
    read.append(str(policy.cwd))
    if policy.network:
        read += [f"/etc/{name}" for name in NETWORK_ETC]
    return {
        "read": read,
        "write": [*(entries if policy.write_cwd else []), *map(str, policy.writable)],
        "files": DEVICES,
        "network": policy.network,
        "ports": list(policy.ports) if policy.network else [],
    }
