"""The worker's own file access under a folder that generated code or a repository could have
shaped (a workspace's repository, a run's output folder).

The invariant: the worker never follows a path that a run or a repository could have planted.
Every open of a name beneath such a root goes through `open_beneath`, which refuses a
symbolic link in every component and any way out of the root (`openat2` with
RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS where the kernel has it, a walk of `O_NOFOLLOW` opens
relative to the folder above otherwise); a file is replaced by a rename, never written
through, so a hard link planted in its place is not written either. Names from a model are
checked part by part first (`check_name`): no `.git` in any spelling, no control or invisible
characters, no `..`. What a run writes lives in a fresh folder (`fresh`) that the worker reads
only through these functions and then removes (`remove_tree`, whose failures are errors).

Blocking: activities call these through asyncio.to_thread.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import os
import shutil
import stat
import tempfile
import unicodedata
import uuid
from pathlib import Path

NAME_BYTES = 255  # a name's longest form on Linux file systems
PATH_BYTES = 1024  # longer than any file of a real project needs
OPENAT2 = 437  # the same number on every architecture Linux added it to (5.6+)
RESOLVE_NO_MAGICLINKS, RESOLVE_NO_SYMLINKS, RESOLVE_BENEATH = 0x02, 0x04, 0x08
RESOLVE = RESOLVE_NO_MAGICLINKS | RESOLVE_NO_SYMLINKS | RESOLVE_BENEATH
DIRECTORY = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC  # a folder on the way


class PathRefused(ValueError):
    """A name the worker does not open beneath its root; the reason says why."""


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _invisible(char: str) -> bool:
    """A character that shows as nothing or as a space: format characters (zero-width joiner,
    byte-order mark), controls, and separators other than the plain space."""
    category = unicodedata.category(char)
    return category in ("Cc", "Cf", "Co", "Cs", "Cn", "Zl", "Zp") or (
        category == "Zs" and char != " "
    )


def check_name(name: str) -> tuple[str, ...]:
    """The parts of `name`, a relative path a model or a repository gave; PathRefused with a
    reason a model can act on if one part is not a plain name, or one spells `.git`."""
    if not isinstance(name, str) or not name.strip():
        raise PathRefused(f"{name!r}: an empty path")
    if bad := next((c for c in name if _invisible(c)), None):
        raise PathRefused(f"{name!r}: control or invisible character U+{ord(bad):04X}")
    if name.startswith(("/", "\\", "~")) or "\\" in name:
        raise PathRefused(f"{name!r}: only relative paths with '/' between their parts")
    if len(name.encode()) > PATH_BYTES:
        raise PathRefused(f"{name[:60]!r}...: longer than {PATH_BYTES} bytes")
    parts = tuple(part for part in name.split("/") if part not in ("", "."))
    if not parts:
        raise PathRefused(f"{name!r}: names no file")
    for part in parts:
        if part == "..":
            raise PathRefused(f"{name!r}: '..' is refused")
        if len(part.encode()) > NAME_BYTES:
            raise PathRefused(f"{name[:60]!r}...: a part longer than {NAME_BYTES} bytes")
        # As case-insensitive and normalising file systems, and git on them, would see it.
        folded = unicodedata.normalize("NFKC", part).rstrip(" .").casefold()
        if folded == ".git" or folded.startswith(".git:"):
            raise PathRefused(f"{name!r}: the repository's .git is off limits (in any spelling)")
    return parts


@functools.cache
def has_openat2() -> bool:
    how = _OpenHow(os.O_PATH | os.O_CLOEXEC, 0, RESOLVE)
    fd = _libc.syscall(ctypes.c_long(OPENAT2), ctypes.c_int(-100), b".",
                       ctypes.byref(how), ctypes.c_size_t(ctypes.sizeof(how)))  # fmt: skip
    if fd < 0:
        return False
    os.close(fd)
    return True


def _openat2(dir_fd: int, name: str, flags: int, mode: int) -> int:
    how = _OpenHow(flags | os.O_CLOEXEC, mode if flags & os.O_CREAT else 0, RESOLVE)
    fd = _libc.syscall(ctypes.c_long(OPENAT2), ctypes.c_int(dir_fd), os.fsencode(name),
                       ctypes.byref(how), ctypes.c_size_t(ctypes.sizeof(how)))  # fmt: skip
    if fd < 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), name)
    return int(fd)


def _refusal(parts: tuple[str, ...], err: OSError) -> Exception:
    where = "/".join(parts)
    if err.errno in (errno.ELOOP, errno.EXDEV, errno.ENOTDIR):
        return PathRefused(
            f"{where!r}: a symbolic link (or a file) on the way; the worker does not write or "
            "read through links, write the file where it really is"
        )
    return err


def _walk(root: int, parts: tuple[str, ...], make: bool) -> int:
    """A descriptor of the folder `parts` names beneath the folder `root`, opened part by part
    without following a link (made if `make`); the caller closes it."""
    fd = os.dup(root)
    try:
        for part in parts:
            if has_openat2():
                opener = functools.partial(_openat2, fd, part, DIRECTORY, 0)
            else:
                opener = functools.partial(os.open, part, DIRECTORY, dir_fd=fd)
            try:
                child = opener()
            except FileNotFoundError:
                if not make:
                    raise
                # Made beside us, or a link in its place: the open below decides.
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, 0o755, dir_fd=fd)
                child = opener()
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_beneath(root: Path, name: str, flags: int = os.O_RDONLY, mode: int = 0o644) -> int:
    """A descriptor of `name` beneath the folder `root`, no link followed on the way nor at the
    end; PathRefused if there is one. `root` itself is the worker's own path."""
    parts = check_name(name)
    base = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if has_openat2():
            return _openat2(base, "/".join(parts), flags | os.O_NOFOLLOW, mode)
        folder = _walk(base, parts[:-1], make=False)
        try:
            return os.open(parts[-1], flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=folder)
        finally:
            os.close(folder)
    except OSError as err:
        raise _refusal(parts, err) from err
    finally:
        os.close(base)


def read_beneath(root: Path, name: str, limit: int | None = None) -> bytes | None:
    """The bytes of the regular file `name` beneath `root` (at most `limit`); None if there is
    no such file; PathRefused for a link on the way or something that is not a file."""
    try:
        fd = open_beneath(root, name)
    except FileNotFoundError:
        return None
    with os.fdopen(fd, "rb") as file:
        if not stat.S_ISREG(os.fstat(file.fileno()).st_mode):
            raise PathRefused(f"{name!r}: not a regular file")
        return file.read() if limit is None else file.read(limit)


def _folder_of(root: Path, name: str, make: bool) -> tuple[tuple[str, ...], int | None]:
    """The parts of `name`, and a descriptor of the folder its last part is in, opened without
    following a link (made if `make`; None if it is not there); the caller closes it."""
    parts = check_name(name)
    base = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        return parts, _walk(base, parts[:-1], make=make)
    except FileNotFoundError:
        if make:
            raise
        return parts, None
    except OSError as err:
        raise _refusal(parts, err) from err
    finally:
        os.close(base)


def exists_beneath(root: Path, name: str) -> bool:
    """Whether `name` beneath `root` is there (as anything, a link included), no link followed
    on the way."""
    parts, folder = _folder_of(root, name, make=False)
    if folder is None:
        return False
    try:
        os.stat(parts[-1], dir_fd=folder, follow_symlinks=False)
        return True
    except FileNotFoundError:
        return False
    finally:
        os.close(folder)


def write_beneath(root: Path, name: str, data: bytes) -> None:
    """`data` as the file `name` beneath `root`, its folders made as needed. A regular file
    with no other name (one link) is written in place; anything else there (a link, a hard
    link, a device) is replaced by a new file renamed over it, never written through. An
    existing file keeps its mode."""
    parts, folder = _folder_of(root, name, make=True)
    assert folder is not None  # made when missing
    try:
        try:
            before = os.stat(parts[-1], dir_fd=folder, follow_symlinks=False)
        except FileNotFoundError:
            before = None
        if before is not None and stat.S_ISDIR(before.st_mode):
            raise PathRefused(f"{name!r}: is a folder; name a file")
        if before is not None and stat.S_ISREG(before.st_mode) and before.st_nlink == 1:
            flags = os.O_WRONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
            fd = os.open(parts[-1], flags, dir_fd=folder)
            with os.fdopen(fd, "wb") as out:
                now = os.fstat(out.fileno())  # the file opened is the one looked at
                if stat.S_ISREG(now.st_mode) and now.st_nlink == 1 and now.st_ino == before.st_ino:
                    out.truncate(0)
                    out.write(data)
                    return
        mode = stat.S_IMODE(before.st_mode) if before and stat.S_ISREG(before.st_mode) else 0o644
        temporary = f".qao-write-{uuid.uuid4().hex[:12]}"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(temporary, flags, 0o600, dir_fd=folder)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
                os.fchmod(out.fileno(), mode)
            os.rename(temporary, parts[-1], src_dir_fd=folder, dst_dir_fd=folder)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary, dir_fd=folder)
            raise
    finally:
        os.close(folder)


def unlink_beneath(root: Path, name: str) -> None:
    """Remove the file (or link) `name` beneath `root`, if it is there; no link followed on the
    way."""
    parts, folder = _folder_of(root, name, make=False)
    if folder is None:
        return
    try:
        os.unlink(parts[-1], dir_fd=folder)
    except FileNotFoundError:
        pass
    except IsADirectoryError as err:
        raise PathRefused(f"{name!r}: is a folder; name a file") from err
    finally:
        os.close(folder)


def fresh(parent: Path, prefix: str) -> Path:
    """A new, empty folder of the worker's under `parent` (mode 0700, a name nobody could have
    chosen beforehand): where one run writes, or a release is staged."""
    parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=prefix, dir=parent))


def remove_tree(path: Path) -> None:
    """Remove `path` and all beneath it without following a link (a link at `path` itself is
    removed as a link); folders a run made unwritable are opened up first. A failure is an
    error, never ignored: what could not be removed must not be taken for gone."""
    if not os.path.lexists(path):
        return
    if path.is_symlink() or not path.is_dir():
        path.unlink()
        return
    try:
        shutil.rmtree(path)  # fd-based on Linux: never follows a link it meets
    except OSError:
        os.chmod(path, 0o700)
        for folder, folders, _ in os.walk(path):  # followlinks=False: links are not entered
            for name in folders:
                inner = os.path.join(folder, name)
                if not os.path.islink(inner):
                    os.chmod(inner, 0o700)
        shutil.rmtree(path)
