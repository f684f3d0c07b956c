"""What one confined run may touch, as a typed policy, and the machine's facts a run's command
depends on. activities/sandbox/bubblewrap.py and activities/sandbox/landlock.py turn a policy
into each mechanism's command, purely: tests/activities/sandbox/test_policy.py asserts the
exact argv and rules, as openai/codex tests its bubblewrap argv.
activities/sandbox/isolation.py gathers the facts and chooses the mechanism.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

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
    """The machine's facts a policy's command depends on."""

    links: dict[str, str] = field(default_factory=dict)  # a system path that is a link -> target
    folders: tuple[str, ...] = ()  # the system paths that are folders
    git: bool = False  # the run's folder has a `.git`
    hosts: str = ""  # the localhost-only hosts file
    python: str = ""  # the interpreter that runs confine.py
    confine: str = ""  # activities/sandbox/confine.py
