"""Files a project's install writes into its own source tree, which git ignores: the version
file setuptools_scm writes (`src/pkg/_version.py`), an extension built in place. A test run
imports the build's own source (activities/testing/environment.py), not the checkout the
environment was made in, so these are kept beside the environment when it is made and put
into each checkout that runs with it where it has none, never over a file of its own. Only
ignored files: the Code Writer's commits (`git add -A`) never take them in.

Read from the maker's checkout, which the install could write, without following a link
(activities/paths.py). Blocking."""

from __future__ import annotations

import re
from pathlib import Path

from activities import paths
from activities.repository.gitcmd import git

MAX_FILES = 200
MAX_BYTES = 32 * 1024 * 1024
# What an install leaves that a run does not import: build folders, metadata, caches.
SKIPPED = re.compile(
    r"(^|/)(build|dist|\.eggs|__pycache__|\.tox|\.nox|\.venv|venv|\.git)(/|$)|\.egg-info(/|$)"
)


def keep(source: Path, folder: Path) -> tuple[str, ...]:
    """The ignored files the install wrote in `source`, copied to `folder`: their names."""
    paths.remove_tree(folder)
    folder.mkdir(parents=True)
    listed = git(source, "ls-files", "-z", "--others", "--ignored", "--exclude-standard")
    kept: list[str] = []
    total = 0
    for name in listed.split("\0"):
        if not name or SKIPPED.search(name) or len(kept) >= MAX_FILES:
            continue
        try:
            data = paths.read_beneath(source, name, MAX_BYTES)
        except (paths.PathRefused, OSError):
            continue
        if data is None or total + len(data) > MAX_BYTES:
            continue
        total += len(data)
        paths.write_beneath(folder, name, data)
        kept.append(name)
    return tuple(kept)


def put(folder: Path, names: tuple[str, ...], checkout: Path) -> None:
    """The kept files into `checkout`, each where it has none."""
    for name in names:
        try:
            if paths.exists_beneath(checkout, name):
                continue
            data = paths.read_beneath(folder, name)
            if data is not None:
                paths.write_beneath(checkout, name, data)
        except (paths.PathRefused, OSError):
            continue  # a link the build planted on the way: not followed, not written
