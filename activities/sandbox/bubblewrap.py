"""bubblewrap, the sandbox of namespaces: a policy turned into bwrap's command. Pure: the
machine's facts come in as a `Host`."""

from __future__ import annotations

from activities.sandbox import landlock
from activities.sandbox.policy import ETC, NETWORK_ETC, SYSTEM, Host, Policy

TMP_BYTES = 256 * 1024 * 1024  # the sandbox's /tmp


def argv(binary: str, policy: Policy, host: Host, command: list[str]) -> list[str]:
    """bwrap's command for `command` under `policy`: every namespace new (the network a
    loopback of its own unless `network`), a read-only system of /usr, the /etc files a run
    reads and the interpreter, a fresh /proc, /dev and size-limited /tmp, the run's folder
    writable (its `.git` read-only), and the root remounted read-only. A run with the network
    on given ports is held to them by confine.py's Landlock rule inside."""
    if policy.network and policy.ports:
        command = landlock.argv(host, landlock.ports_only(policy.ports), command)
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
    return [*args, "--remount-ro", "/", "--chdir", cwd, "--", *command]
