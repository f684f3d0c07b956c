"""The test runner every project environment gets first: pytest (and pip, where the project
installs anything), from wheels the worker fetches once per machine with its own pip and its
configuration (the worker's process, never a run's), unpacked into a new virtual environment
of the worker's base interpreter that holds nothing of the system's or the worker's packages.
Blocking."""

from __future__ import annotations

import configparser
import contextlib
import fcntl
import os
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

from packaging.utils import canonicalize_name

from activities import paths

VENV_SECONDS = 60
DOWNLOAD_SECONDS = 300
RUNNER = ("pytest",)  # what every environment gets before the project's own install
INSTALLER = ("pip",)  # and, where the project installs anything, the tool it installs with
# The build backends most projects build with (and what they need), offered to every
# project's install, so one that needs nothing else installs without an index.
BACKENDS = (
    "setuptools", "wheel", "flit_core", "hatchling", "hatch-vcs", "setuptools_scm",
    "poetry-core", "pdm-backend", "editables",
)  # fmt: skip
# The wheels, fetched once per machine (as pip's own cache is kept).
WHEELS = Path.home() / ".cache" / "q-assistant" / "wheels" / "runner"


@contextlib.contextmanager
def flock(path: Path) -> Iterator[None]:
    """An exclusive lock on the file at `path`, across processes (blocking until held)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def runner_wheels(folder: Path) -> tuple[str, ...]:
    """The wheels every environment is made with, fetched once into `folder` with the worker's
    own pip and its configuration (the worker's process, never a run's): the test runner and
    the installer with what they need (`runner/`), and the common build backends (`build/`),
    which a project's install finds without an index (PIP_FIND_LINKS): a project whose only
    needs are its build backend installs offline. Their names under `folder` (blocking)."""
    folder.mkdir(parents=True, exist_ok=True)
    with flock(folder / ".lock"):
        for part, names in (("runner", RUNNER + INSTALLER), ("build", BACKENDS)):
            if not _complete(folder / part, names):
                _download(folder / part, names)
        return tuple(f"{part}/{name}" for part in ("runner", "build")
                     for name in _wheels(folder / part))  # fmt: skip


def _complete(folder: Path, names: tuple[str, ...]) -> bool:
    have = {_project(w) for w in _wheels(folder)}
    return all(canonicalize_name(name) in have for name in names)


def _download(folder: Path, names: tuple[str, ...]) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--only-binary=:all:",
         "--dest", str(folder), *names],
        capture_output=True, text=True, timeout=DOWNLOAD_SECONDS, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        last = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise EnvironmentProblem(
            f"pip could not fetch {', '.join(names)} for projects' environments: "
            + " | ".join(last)
        )


def _project(wheel: str) -> str:
    return canonicalize_name(wheel.split("-", 1)[0])


def _wheels(folder: Path) -> tuple[str, ...]:
    return tuple(sorted(p.name for p in folder.glob("*.whl"))) if folder.is_dir() else ()


class EnvironmentProblem(RuntimeError):
    """An environment could not be made by the worker itself (no command of the project's
    ran); the message says why."""


def _install_wheel(wheel: Path, site: Path, bin_dir: Path, python: Path) -> None:
    """A pure-Python wheel unpacked into `site`, with its console scripts in `bin_dir` (what
    pip would do for it, in a fraction of the time). Its RECORD lists every file it unpacked,
    so pip can uninstall it when a project installs another version."""
    with zipfile.ZipFile(wheel) as archive:
        scripts: list[tuple[str, str]] = []
        for info in archive.infolist():
            name = info.filename
            if name.endswith("/") or ".." in name.split("/") or name.startswith("/"):
                continue
            parts = name.split("/")
            if parts[0].endswith(".data") and len(parts) > 2:
                if parts[1] not in ("purelib", "platlib"):
                    continue
                name = "/".join(parts[2:])
            target = site / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(archive.read(info))
            if name.endswith(".dist-info/entry_points.txt"):
                scripts += _console_scripts(target.read_text())
    for script, entry in scripts:
        module, _, attr = entry.partition(":")
        head = attr.split(".")[0]
        path = bin_dir / script
        path.write_text(
            f"#!{python}\nimport sys\nfrom {module.strip()} import {head.strip()}\n"
            f"sys.exit({attr.strip()}())\n"
        )
        path.chmod(0o755)


def _console_scripts(text: str) -> list[tuple[str, str]]:
    parser = configparser.RawConfigParser(delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    with contextlib.suppress(configparser.Error):
        parser.read_string(text)
    if not parser.has_section("console_scripts"):
        return []
    return [(name, entry) for name, entry in parser["console_scripts"].items() if entry]


def create(root: Path, wheels: Path, names: tuple[str, ...], installer: bool) -> None:
    """A fresh virtual environment at `root` of the worker's base interpreter, without the
    system's or the worker's packages, holding the test runner (and pip, if `installer`)
    from `wheels` (blocking)."""
    paths.remove_tree(root)
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(root)],
        check=True, capture_output=True, timeout=VENV_SECONDS,
    )  # fmt: skip
    sites = sorted(root.glob("lib/python*/site-packages"))
    if not sites:
        raise EnvironmentProblem(f"venv made no site-packages under {root}")
    wanted = RUNNER + (INSTALLER if installer else ())
    runner = {_project(n.removeprefix("runner/")): n for n in names if n.startswith("runner/")}
    left_out = set() if installer else {canonicalize_name(n) for n in INSTALLER}
    for project, name in runner.items():
        if project not in left_out:
            _install_wheel(wheels / name, sites[0], root / "bin", root / "bin" / "python")
    have = set(runner)
    if missing := [w for w in wanted if canonicalize_name(w) not in have]:
        raise EnvironmentProblem(f"no wheel of {', '.join(missing)} in {wheels}")
