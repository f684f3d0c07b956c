"""A run's policy turned into bubblewrap's argv, into Landlock's rules and confine.py's command
line, confine.py's seccomp program, a run's cgroup settings and its launcher's command: the
exact result for given facts of a machine, with no machine needed (the end-to-end sandbox
tests run them for real: tests/activities/sandbox/test_sandbox.py,
tests/activities/test_planted_paths.py)."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from activities.sandbox import bubblewrap, cgroups, confine, landlock
from activities.sandbox.bubblewrap import TMP_BYTES
from activities.sandbox.landlock import DEVICES, Rules
from activities.sandbox.policy import ETC, SYSTEM, Host, Policy
from activities.sandbox.runs import FILE_BYTES, PROCESSES, Limits, launched

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
    argv = bubblewrap.argv("/bin/bwrap", policy, HOST, ["python", "-m", "pytest"])
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
    argv = bubblewrap.argv("/bin/bwrap", policy, HOST, ["pip", "install", "."])
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
        "port=443", "network", "fs=off", "--",
        "pip", "install", ".",
    ]  # fmt: skip


def test_a_read_only_run_binds_its_folder_read_only_and_a_folder_without_git_binds_none():
    policy = Policy(cwd=RUN, write_cwd=False)
    argv = bubblewrap.argv("/bin/bwrap", policy, Host(hosts="/h"), ["true"])
    assert ["--ro-bind", str(RUN), str(RUN)] == argv[argv.index(str(RUN)) - 1 :][:3]
    assert "--bind" not in argv and f"{RUN}/.git" not in argv
    assert not any(path in argv for path in SYSTEM)  # no system path here, none bound


def test_landlock_rules_write_the_folders_entries_never_the_folder_or_its_git():
    entries = [f"{RUN}/a.py", f"{RUN}/tests"]
    policy = Policy(cwd=RUN, writable=(Path("/runs/3"),), readonly=("/venv", "/opt/env"))
    assert landlock.rules(policy, entries) == Rules(
        read=(*SYSTEM, *(f"/etc/{name}" for name in ETC), "/venv", "/opt/env", str(RUN)),
        write=(f"{RUN}/a.py", f"{RUN}/tests", "/runs/3"),
        files=DEVICES,
        network=False,
        ports=(),
    )
    shut = landlock.rules(Policy(cwd=RUN, write_cwd=False, network=True, ports=(80,)), entries)
    assert shut.write == () and shut.network is True and shut.ports == (80,)
    assert shut.read[-2:] == ("/etc/hosts", "/etc/resolv.conf")


def test_confine_py_is_given_the_rules_as_its_exact_command_line_and_reads_them_back():
    rules = Rules(
        read=("/usr", f"{RUN}"),
        write=(f"{RUN}/a.py",),
        files=(("/dev/null", "rw"), ("/dev/zero", "r")),
        network=True,
        ports=(443, 80),
    )
    argv = landlock.argv(HOST, rules, ["pytest", "-q"])
    assert argv == [
        "/venv/bin/python", "-S", "/app/activities/sandbox/confine.py",
        "read=/usr", f"read={RUN}", f"write={RUN}/a.py",
        "file-rw=/dev/null", "file-r=/dev/zero", "port=443", "port=80", "network",
        "--", "pytest", "-q",
    ]  # fmt: skip
    read, command = confine.parse(argv[3:])
    assert command == ["pytest", "-q"]
    assert read == {
        "read": list(rules.read),
        "write": list(rules.write),
        "files": dict(rules.files),
        "network": True,
        "ports": [443, 80],
        "fs": True,
    }
    assert confine.parse(landlock.arguments(landlock.ports_only((8080,))))[0] == {
        **confine.empty_rules(),
        "network": True,
        "ports": [8080],
        "fs": False,
    }


def test_the_seccomp_program_refuses_sockets_and_io_uring_and_a_foreign_abi():
    allow, refuse, enosys = 0x7FFF0000, 0x00050000 | errno.EACCES, 0x00050000 | errno.ENOSYS
    load, jeq, jge, ret = 0x20, 0x15, 0x35, 0x06
    assert confine.socket_filter("x86_64") == [
        (load, 0, 0, 4),  # the architecture
        (jeq, 0, 6, 0xC000003E),  # not x86_64: ENOSYS
        (load, 0, 0, 0),  # the syscall's number
        (jge, 4, 0, 0x40000000),  # x32: ENOSYS
        (jeq, 2, 0, 41),  # socket: EACCES
        (jeq, 1, 0, 425),  # io_uring_setup: EACCES
        (ret, 0, 0, allow),
        (ret, 0, 0, refuse),
        (ret, 0, 0, enosys),
    ]
    arm = confine.socket_filter("aarch64")
    assert arm[1] == (jeq, 0, 6, 0xC00000B7) and arm[4] == (jeq, 2, 0, 198)
    with pytest.raises(OSError, match="no seccomp filter for riscv64"):
        confine.socket_filter("riscv64")


def test_a_runs_cgroups_are_set_to_its_processes_and_memory_per_cgroup_version():
    v1_pids = cgroups.Place(Path("/sys/fs/cgroup/pids"), 1, ("pids",))
    v1_memory = cgroups.Place(Path("/sys/fs/cgroup/memory"), 1, ("memory",))
    v2 = cgroups.Place(Path("/sys/fs/cgroup"), 2, ("pids", "memory"))
    Setting = cgroups.Setting
    assert cgroups.settings(v1_pids, 256, 2**30) == [Setting("pids.max", "256")]
    assert cgroups.settings(v1_memory, 256, 2**30) == [
        Setting("memory.limit_in_bytes", "1073741824"),
        Setting("memory.memsw.limit_in_bytes", "1073741824", required=False),
    ]
    assert cgroups.settings(v2, 256, 2**30) == [
        Setting("pids.max", "256"),
        Setting("memory.max", "1073741824"),
        Setting("memory.swap.max", "0", required=False),
    ]


def test_the_kernels_oom_kills_are_read_from_either_versions_file():
    v1 = "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n"
    v2 = "low 0\nhigh 0\nmax 5\noom 1\noom_kill 1\noom_group_kill 0\n"
    assert cgroups.oom_kills(v1) == 2 and cgroups.oom_kills(v2) == 1
    assert cgroups.oom_kills("oom_kill_disable 0\nunder_oom 0\n") == 0


def test_the_launcher_joins_every_group_and_limits_address_space_only_without_a_memory_group():
    limits = Limits(60, 1024)
    both = cgroups.Group(
        (Path("/cg/pids/qao-run-1-a"), Path("/cg/memory/qao-run-1-a")),
        ("pids", "memory"),
        memory=Path("/cg/memory/qao-run-1-a"),
    )
    argv = launched(["pytest"], limits, both)
    assert argv[4:] == ["61", "0", str(FILE_BYTES), str(PROCESSES),
                        "/cg/pids/qao-run-1-a:/cg/memory/qao-run-1-a", "pytest"]  # fmt: skip
    pids_only = cgroups.Group((Path("/cg/pids/qao-run-1-a"),), ("pids",))
    assert launched(["pytest"], limits, pids_only)[5:8] == [
        str(1024 * 2**20),
        str(FILE_BYTES),
        str(PROCESSES),
    ]
    assert launched(["pytest"], limits, None)[5] == str(1024 * 2**20)
    assert launched(["pytest"], limits, None)[8] == ""
