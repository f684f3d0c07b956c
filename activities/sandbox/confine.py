"""Confines one run of generated code with Landlock and seccomp: the `landlock` sandbox of
activities/sandbox/isolation.py, for machines where bubblewrap cannot make namespaces (some
container runtimes refuse user namespaces). A script the launcher runs, stdlib only; its
command line is made by activities/sandbox/landlock.py:

    python -S confine.py [read=PATH | write=PATH | file-r=PATH | file-rw=PATH | network |
        port=N | fs=off]... -- command...

(Plain arguments, not JSON, and only light modules: this runs before every command, and its
start-up is the sandbox's cost.)

- Landlock (Linux 5.13+; the rights the kernel's ABI knows): the run reads and executes only
  beneath `read` and `write`, writes only beneath `write` (and the `files` marked rw), and
  with ABI 4+ binds and connects no TCP port; with ABI 6+ it signals no process outside its
  own domain and reaches no abstract unix socket outside it (landlock.py gives it no
  /proc: Landlock's ptrace rule does not keep a process of root's from the environment of
  another there).
- seccomp: no `socket()` at all (no network, no unix socket of the host's such as a database
  server's: Landlock does not cover connecting to a pathname socket), no io_uring (which
  opens sockets around the filter), and no syscall of a foreign ABI (i386 on x86_64). A
  socket pair, which Python's asyncio and multiprocessing use, still works. With
  `network` (a setup command a person allowed it) the filter does not apply, and TCP reaches
  only the `port`s given (a package index's 443, say, not a database on the loopback); with
  `fs=off` (inside bubblewrap, which confines the file system) only that port rule is made.
- Processes: this script is the run's subreaper. It runs the command as its child, and when
  that ends (or SIGTERM, the run's time limit, ends it) it kills every process left beneath
  it: a daemon that double-forked into a new session is re-parented here, not to init. The
  child dies with this script (PR_SET_PDEATHSIG), and when the worker dies this script is sent
  SIGTERM, so it kills all beneath it before it goes (even where no cgroup holds the run).
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # signal without its enums: ms less a run
import ctypes
import errno
import os
import sys
import time

LANDLOCK_CREATE_RULESET, LANDLOCK_ADD_RULE, LANDLOCK_RESTRICT_SELF = 444, 445, 446
LANDLOCK_CREATE_RULESET_VERSION = 1
LANDLOCK_RULE_PATH_BENEATH, LANDLOCK_RULE_NET_PORT = 1, 2
PR_SET_PDEATHSIG, PR_SET_SECCOMP, PR_SET_NO_NEW_PRIVS, PR_SET_CHILD_SUBREAPER = 1, 22, 38, 36
SECCOMP_MODE_FILTER = 2
STOPS = (_signal.SIGTERM, _signal.SIGINT)

# Landlock's file system rights (include/uapi/linux/landlock.h), and the ABI that added them.
EXECUTE, WRITE_FILE, READ_FILE, READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
REFER, TRUNCATE, IOCTL_DEV = 1 << 13, 1 << 14, 1 << 15
ABI_1_FS = (1 << 13) - 1  # execute ... make_sym
READ = EXECUTE | READ_FILE | READ_DIR
FILE_RIGHTS = EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE | IOCTL_DEV
NET_BIND_TCP, NET_CONNECT_TCP = 1 << 0, 1 << 1  # ABI 4
SCOPE_ABSTRACT_UNIX_SOCKET, SCOPE_SIGNAL = 1 << 0, 1 << 1  # ABI 6

# seccomp: per architecture, its audit id and the numbers of socket and io_uring_setup.
ARCHES = {"x86_64": (0xC000003E, 41, 425), "aarch64": (0xC00000B7, 198, 425)}
X32_BIT = 0x40000000
BPF_LD_W_ABS, BPF_JEQ_K, BPF_JGE_K, BPF_RET_K = 0x20, 0x15, 0x35, 0x06
RET_ALLOW, RET_ERRNO = 0x7FFF0000, 0x00050000
EXIT_CONFINE_FAILED = 126
REAP_PAUSE_SECONDS = 0.01

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long


class RulesetAttr(ctypes.Structure):
    _fields_ = [
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    ]


class PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


class NetPortAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("port", ctypes.c_uint64)]


class SockFilter(ctypes.Structure):
    _fields_ = [
        ("code", ctypes.c_ushort),
        ("jt", ctypes.c_ubyte),
        ("jf", ctypes.c_ubyte),
        ("k", ctypes.c_uint32),
    ]


class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(SockFilter))]


def _check(result: int, what: str) -> int:
    if result < 0:
        code = ctypes.get_errno()
        raise OSError(code, f"{what}: {os.strerror(code)}")
    return result


def _syscall(number: int, *args: object) -> int:
    return _check(libc.syscall(ctypes.c_long(number), *args), f"syscall {number}")


def _prctl(option: int, arg: object = 0, what: str = "prctl") -> int:
    """prctl is variadic: every argument is passed as a full unsigned long (or a pointer)."""
    value = arg if not isinstance(arg, int) else ctypes.c_ulong(arg)
    zero = ctypes.c_ulong(0)
    return _check(libc.prctl(ctypes.c_int(option), value, zero, zero, zero), what)


def abi() -> int:
    """The kernel's Landlock ABI version (OSError where Landlock is off or unknown)."""
    return _syscall(LANDLOCK_CREATE_RULESET, None, ctypes.c_size_t(0),
                    ctypes.c_uint32(LANDLOCK_CREATE_RULESET_VERSION))  # fmt: skip


def fs_rights(version: int) -> int:
    rights = ABI_1_FS
    if version >= 2:
        rights |= REFER
    if version >= 3:
        rights |= TRUNCATE
    if version >= 5:
        rights |= IOCTL_DEV
    return rights


def landlock(rules: dict[str, object], version: int) -> None:
    """Restrict this process, and all it starts, to the rules."""
    handled = fs_rights(version) if rules["fs"] else 0
    ports: list[int] = rules["ports"]  # type: ignore[assignment]
    attr = RulesetAttr(handled_access_fs=handled)
    size = 8
    if version >= 4:
        size = 16
        if not rules["network"] or ports:  # no TCP at all, or to these ports only
            attr.handled_access_net = NET_BIND_TCP | NET_CONNECT_TCP
    elif ports:
        raise OSError(errno.ENOTSUP, f"Landlock ABI {version} cannot restrict TCP ports (4+)")
    if version >= 6:
        size = 24
        attr.scoped = SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL
    ruleset = _syscall(LANDLOCK_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size),
                       ctypes.c_uint32(0))  # fmt: skip
    files = dict(rules["files"])  # type: ignore[call-overload]
    # (path, rights, whether a link there is followed): the read rules are the system's and
    # the worker's own paths (/bin -> usr/bin); a write rule is never opened through a link.
    allowed = [(p, READ, True) for p in rules["read"]]  # type: ignore[attr-defined]
    allowed += [(p, handled, False) for p in rules["write"]]  # type: ignore[attr-defined]
    allowed += [
        (p, READ | WRITE_FILE | TRUNCATE if m == "rw" else READ, m != "rw")
        for p, m in files.items()
    ]
    if not handled:
        allowed = []  # the file system is another sandbox's (bubblewrap's) to confine
    try:
        for port in ports:
            reach = NetPortAttr(allowed_access=NET_CONNECT_TCP, port=port)
            _syscall(LANDLOCK_ADD_RULE, ctypes.c_int(ruleset),
                     ctypes.c_int(LANDLOCK_RULE_NET_PORT), ctypes.byref(reach),
                     ctypes.c_uint32(0))  # fmt: skip
        for path, rights, follow in allowed:
            # A rule that lets a run write is never opened through a link: a repository's
            # `shared -> /` would open the whole file system to it.
            nofollow = 0 if follow else os.O_NOFOLLOW
            try:
                fd = os.open(path, os.O_PATH | os.O_CLOEXEC | nofollow)
            except OSError:
                continue  # not on this machine: nothing to allow
            try:
                kind = os.fstat(fd).st_mode & 0o170000
                if kind == 0o120000:  # the link itself (O_NOFOLLOW): no rule through it
                    continue
                if kind != 0o040000:
                    rights &= FILE_RIGHTS  # a file's rule takes a file's rights only
                beneath = PathBeneathAttr(allowed_access=rights & handled, parent_fd=fd)
                _syscall(LANDLOCK_ADD_RULE, ctypes.c_int(ruleset),
                         ctypes.c_int(LANDLOCK_RULE_PATH_BENEATH), ctypes.byref(beneath),
                         ctypes.c_uint32(0))  # fmt: skip
            finally:
                os.close(fd)
        _prctl(PR_SET_NO_NEW_PRIVS, 1, "no_new_privs")
        _syscall(LANDLOCK_RESTRICT_SELF, ctypes.c_int(ruleset), ctypes.c_uint32(0))
    finally:
        os.close(ruleset)


def socket_filter(machine: str) -> list[tuple[int, int, int, int]]:
    """The seccomp program for `machine` (os.uname's): socket() and io_uring_setup() refused
    with EACCES, a foreign ABI's syscalls with ENOSYS, everything else allowed."""
    if machine not in ARCHES:
        raise OSError(errno.ENOSYS, f"no seccomp filter for {machine}")
    arch, socket, io_uring_setup = ARCHES[machine]
    return [
        (BPF_LD_W_ABS, 0, 0, 4),  # 0: the syscall's architecture
        (BPF_JEQ_K, 0, 6, arch),  # 1: a foreign one -> 8
        (BPF_LD_W_ABS, 0, 0, 0),  # 2: the syscall's number
        (BPF_JGE_K, 4, 0, X32_BIT),  # 3: x32 -> 8
        (BPF_JEQ_K, 2, 0, socket),  # 4: -> 7
        (BPF_JEQ_K, 1, 0, io_uring_setup),  # 5: -> 7
        (BPF_RET_K, 0, 0, RET_ALLOW),  # 6
        (BPF_RET_K, 0, 0, RET_ERRNO | errno.EACCES),  # 7
        (BPF_RET_K, 0, 0, RET_ERRNO | errno.ENOSYS),  # 8
    ]


def seccomp() -> None:
    program = socket_filter(os.uname().machine)
    filters = (SockFilter * len(program))(*(SockFilter(*insn) for insn in program))
    prog = SockFprog(len=len(program), filter=filters)
    _prctl(PR_SET_NO_NEW_PRIVS, 1, "no_new_privs")
    zero = ctypes.c_ulong(0)
    mode = ctypes.c_ulong(SECCOMP_MODE_FILTER)
    _check(
        libc.prctl(ctypes.c_int(PR_SET_SECCOMP), mode, ctypes.byref(prog), zero, zero), "seccomp"
    )


def confine(rules: dict[str, object]) -> None:
    landlock(rules, abi())
    if not rules["network"]:
        seccomp()


def children() -> list[int]:
    """The processes whose parent is this one (the run's leftovers, re-parented here)."""
    me, found = os.getpid(), []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == me:
            found.append(int(entry))
    return found


def reap_all() -> None:
    """Kill and reap every process left beneath this one, until none is (one forked after a
    look is found by the next). Without leftovers, nothing is looked for."""
    while True:
        try:
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass
        except ChildProcessError:
            return
        for pid in children():
            try:  # noqa: SIM105 (contextlib costs this script milliseconds)
                os.kill(pid, _signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(REAP_PAUSE_SECONDS)


def parse(args: list[str]) -> tuple[dict[str, object], list[str]]:
    """The rules and the command of this script's arguments."""
    end = args.index("--")
    rules = empty_rules()
    for arg in args[:end]:
        kind, _, value = arg.partition("=")
        if kind in ("read", "write"):
            rules[kind].append(value)  # type: ignore[attr-defined]
        elif kind in ("file-r", "file-rw"):
            rules["files"][value] = kind.removeprefix("file-")  # type: ignore[index]
        elif kind == "port":
            rules["ports"].append(int(value))  # type: ignore[attr-defined]
        elif kind == "network":
            rules["network"] = True
        elif arg == "fs=off":
            rules["fs"] = False
        else:
            raise SystemExit(f"confine: unknown rule {arg!r}")
    return rules, args[end + 1 :]


def empty_rules() -> dict[str, object]:
    """Nothing readable or writable, no network: the rules before any is given."""
    return {"read": [], "write": [], "files": {}, "network": False, "ports": [], "fs": True}


def main(argv: list[str]) -> int:
    rules, command = parse(argv[1:])
    worker = os.getppid()
    _prctl(PR_SET_CHILD_SUBREAPER, 1, "subreaper")
    child = os.fork()
    if child == 0:
        try:
            _prctl(PR_SET_PDEATHSIG, _signal.SIGKILL, "pdeathsig")
            confine(rules)
            os.execvp(command[0], command)
        except OSError as err:
            os.write(2, f"confine: {err}\n".encode())
        os._exit(EXIT_CONFINE_FAILED)

    # Told to stop (the run's time limit): the command is killed, then whatever it left. A stop
    # may come more than once (the worker's death signals this script once per thread of the
    # worker the kernel re-parents it through): after the first, it has nothing to do.
    def stop(*_: object) -> None:
        try:  # noqa: SIM105 (contextlib costs this script milliseconds)
            os.kill(child, _signal.SIGKILL)
        except ProcessLookupError:
            pass

    for name in STOPS:
        _signal.signal(name, stop)
    # The worker's death is a stop too: SIGKILL would end this script and leave what the run
    # left beneath it to init (where no cgroup holds the run); SIGTERM lets it kill them first.
    _prctl(PR_SET_PDEATHSIG, _signal.SIGTERM, "pdeathsig")
    if os.getppid() != worker:  # the worker died before the line above
        os.kill(child, _signal.SIGKILL)
    _, status = os.waitpid(child, 0)
    for name in STOPS:  # the child's pid is free now, and another process may take it
        _signal.signal(name, _signal.SIG_IGN)
    reap_all()
    code = os.waitstatus_to_exitcode(status)
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main(sys.argv))
