"""Landlock and seccomp, the sandbox for machines where user namespaces are refused: a policy
turned into the rules activities/sandbox/confine.py applies inside the run, and that script's
command line. Pure: the machine's facts come in as a `Host`."""

from __future__ import annotations

from dataclasses import dataclass

from activities.sandbox.policy import ETC, NETWORK_ETC, SYSTEM, Host, Policy

# The devices a run uses (bubblewrap makes a /dev of its own).
DEVICES = (("/dev/null", "rw"), ("/dev/zero", "r"), ("/dev/full", "rw"), ("/dev/random", "r"),
           ("/dev/urandom", "r"))  # fmt: skip


@dataclass(frozen=True)
class Rules:
    """What confine.py lets a run touch: `read` and `write` are paths beneath which it reads
    (and executes), or reads and writes; `files` single files with "r" or "rw"; without
    `network` it makes no socket at all (seccomp) and no TCP; with it, TCP to `ports` only
    (none given: any); `fs=False` leaves the file system to another sandbox (bubblewrap)."""

    read: tuple[str, ...] = ()
    write: tuple[str, ...] = ()
    files: tuple[tuple[str, str], ...] = ()
    network: bool = False
    ports: tuple[int, ...] = ()
    fs: bool = True


def rules(policy: Policy, entries: list[str]) -> Rules:
    """What a run under `policy` may touch. Landlock's rights only add up beneath a folder, so
    the run's `.git` stays read-only by giving the write right to each of its folder's other
    `entries` (not links: confine.py never opens a write rule through a link), not to the
    folder itself."""
    read = [*SYSTEM, *(f"/etc/{name}" for name in ETC), *policy.readonly]
    # Not /proc: Landlock's ptrace rule does not keep a run of root's from another process's
    # /proc/<pid>/environ there (tried on this kernel), and a run needs none of it.
    read.append(str(policy.cwd))
    if policy.network:
        read += [f"/etc/{name}" for name in NETWORK_ETC]
    return Rules(
        read=tuple(read),
        write=(*(entries if policy.write_cwd else []), *map(str, policy.writable)),
        files=DEVICES,
        network=policy.network,
        ports=policy.ports if policy.network else (),
    )


def ports_only(ports: tuple[int, ...]) -> Rules:
    """TCP to `ports` only and nothing of the file system (bubblewrap confines that)."""
    return Rules(network=True, ports=ports, fs=False)


def arguments(rules: Rules) -> list[str]:
    """confine.py's arguments for `rules`, up to the `--` before the command."""
    args = [f"read={p}" for p in rules.read]
    args += [f"write={p}" for p in rules.write]
    args += [f"file-{mode}={path}" for path, mode in rules.files]
    args += [f"port={p}" for p in rules.ports]
    args += ["network"] if rules.network else []
    return [*args, *([] if rules.fs else ["fs=off"]), "--"]


def argv(host: Host, rules: Rules, command: list[str]) -> list[str]:
    """`command` run by confine.py under `rules`."""
    return [host.python, "-S", host.confine, *arguments(rules), *command]
