"""A run's policy turned into bubblewrap's argv and into confine.py's Landlock rules: the exact
result for given facts of a machine, with no machine needed (the end-to-end sandbox tests
run them for real: tests/test_sandbox.py, tests/test_planted_paths.py)."""

from __future__ import annotations

from pathlib import Path

from activities.sandbox.policy import (
    DEVICES,
    ETC,
    SYSTEM,
    TMP_BYTES,
    Host,
    Policy,
    bubblewrap_argv,
    confined,
    landlock_rules,
)

HOST = Host(
    links={"/bin": "usr/bin", "/lib": "usr/lib"},
    folders=("/usr", "/lib64"),
    git=True,
    hosts="/tmp/qao-sandbox-x/hosts",
    python="/venv/bin/python",
    confine="/app/activities/sandbox/confine.py",
)
RUN = Path("/work/ws/b1/repo")
ETC_BINDS = [arg for name in ETC for arg in ("--ro-bind-try", f"/etc/{name}", f"/etc/{name}")]


def test_an_offline_run_writes_its_folder_and_runs_folder_only():
    policy = Policy(cwd=RUN, writable=(Path("/work/ws/b1/runs/3"),), readonly=("/venv",))
    argv = bubblewrap_argv("/bin/bwrap", policy, HOST, ["python", "-m", "pytest"])
    assert argv == [
        "/bin/bwrap", "--unshare-all", "--die-with-parent", "--new-session",
        "--cap-drop", "ALL", "--hostname", "sandbox",
        "--ro-bind", "/usr", "/usr",
        "--symlink", "usr/bin", "/bin",
        "--symlink", "usr/lib", "/lib",
        "--ro-bind", "/lib64", "/lib64",
        *ETC_BINDS,
        "--ro-bind", "/tmp/qao-sandbox-x/hosts", "/etc/hosts",
        "--proc", "/proc", "--dev", "/dev", "--size", str(TMP_BYTES), "--tmpfs", "/tmp",
        "--ro-bind", "/venv", "/venv",
        "--bind", str(RUN), str(RUN),
        "--bind", "/work/ws/b1/runs/3", "/work/ws/b1/runs/3",
        "--ro-bind", f"{RUN}/.git", f"{RUN}/.git",
        "--remount-ro", "/", "--chdir", str(RUN), "--", "python", "-m", "pytest",
    ]  # fmt: skip


def test_a_networked_run_shares_the_network_and_is_held_to_its_ports_by_confine():
    policy = Policy(cwd=RUN, network=True, ports=(443,))
    argv = bubblewrap_argv("/bin/bwrap", policy, HOST, ["pip", "install", "."])
    assert argv[:3] == ["/bin/bwrap", "--unshare-all", "--share-net"]
    assert argv[argv.index("/etc/resolv.conf") - 1 : argv.index("/etc/resolv.conf") + 2] == [
        "--ro-bind-try",
        "/etc/resolv.conf",
        "/etc/resolv.conf",
    ]
    assert "/tmp/qao-sandbox-x/hosts" not in argv  # the host's names, not localhost's
    bind = argv.index("/app/activities/sandbox/confine.py")
    assert argv[bind - 1 : bind + 2] == ["--ro-bind", HOST.confine, HOST.confine]
    command = argv[argv.index("--") + 1 :]
    assert command == [
        "/venv/bin/python", "-S", "/app/activities/sandbox/confine.py",
        *confine_arguments({"network": True, "ports": [443], "fs": False}),
        "pip", "install", ".",
    ]  # fmt: skip


def confine_arguments(rules: dict[str, object]) -> list[str]:
    argv = confined(HOST, rules, ["x"])
    return argv[3:-1]


def test_a_read_only_run_binds_its_folder_read_only_and_a_folder_without_git_binds_none():
    policy = Policy(cwd=RUN, write_cwd=False)
    argv = bubblewrap_argv("/bin/bwrap", policy, Host(hosts="/h"), ["true"])
    assert ["--ro-bind", str(RUN), str(RUN)] == argv[argv.index(str(RUN)) - 1 :][:3]
    assert "--bind" not in argv and f"{RUN}/.git" not in argv
    assert not any(path in argv for path in SYSTEM)  # no system path here, none bound


def test_landlock_rules_write_the_folders_entries_never_the_folder_or_its_git():
    entries = [f"{RUN}/a.py", f"{RUN}/tests"]
    policy = Policy(cwd=RUN, writable=(Path("/runs/3"),), readonly=("/venv", "/opt/env"))
    assert landlock_rules(policy, entries) == {
        "read": [*SYSTEM, *(f"/etc/{name}" for name in ETC), "/venv", "/opt/env", str(RUN)],
        "write": [f"{RUN}/a.py", f"{RUN}/tests", "/runs/3"],
        "files": DEVICES,
        "network": False,
        "ports": [],
    }
    shut = landlock_rules(Policy(cwd=RUN, write_cwd=False, network=True, ports=(80,)), entries)
    assert shut["write"] == [] and shut["network"] is True and shut["ports"] == [80]
    assert shut["read"][-2:] == ["/etc/hosts", "/etc/resolv.conf"]  # type: ignore[index]
