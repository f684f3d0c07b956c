"""Real git repositories for the tests: a bare repository as a project's remote, with a small
Python application and its tests, and a working clone to change it from the side (another
person pushing while a build works)."""

from __future__ import annotations

from pathlib import Path

from activities.repository.gitcmd import git

APP = '''"""A tiny application the builds add features to."""


def greet(name: str) -> str:
    return f"Hello, {name}!"
'''
APP_TEST = """from app import greet


def test_greet():
    assert greet("Ada") == "Hello, Ada!"
"""


def make_project(
    root: Path,
    files: dict[str, str] | None = None,
    branch: str = "main",
    links: dict[str, str] | None = None,
) -> Path:
    """A bare repository at root/remote.git whose `branch` holds `files` (default: the app) and
    `links`, committed as symbolic links (name: target)."""
    remote = root / "remote.git"
    git(None, "init", "-q", "--bare", "-b", branch, str(remote))
    side = root / "seed"
    git(None, "clone", "-q", str(remote), str(side))
    git(side, "checkout", "-q", "-b", branch)
    for name, target in (links or {}).items():
        (side / name).parent.mkdir(parents=True, exist_ok=True)
        (side / name).symlink_to(target)
    commit_files(side, files or {"app.py": APP, "tests/test_app.py": APP_TEST}, "initial")
    git(side, "push", "-q", "origin", f"HEAD:refs/heads/{branch}")
    return remote


def commit_files(clone: Path, files: dict[str, str], message: str) -> str:
    for name, text in files.items():
        path = clone / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    git(clone, "add", "-A")
    git(clone, "commit", "-q", "-m", message)
    return git(clone, "rev-parse", "HEAD")


def push_change(remote: Path, files: dict[str, str], message: str, branch: str = "main") -> str:
    """Someone else's commit on the project's branch; its id."""
    side = remote.parent / f"side-{abs(hash(message)) % 10**8}"
    if not side.exists():
        git(None, "clone", "-q", "-b", branch, str(remote), str(side))
    git(side, "pull", "-q", "--ff-only", "origin", branch)
    commit = commit_files(side, files, message)
    git(side, "push", "-q", "origin", f"HEAD:refs/heads/{branch}")
    return commit


def tree_of(remote: Path, ref: str = "main") -> set[str]:
    return set(git(remote, "ls-tree", "-r", "--name-only", ref).split())


def tags_of(remote: Path) -> list[str]:
    return git(remote, "tag", "--list", "--sort=v:refname").split()
