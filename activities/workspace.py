"""A build's workspace: a git repository under WORKSPACE_DIR, one commit per implementation.

Every role that touches the code first checks out the commit the workflow names, so retries,
crashes and rollbacks all work from the state the workflow recorded. Blocking (git runs as
a subprocess): activities call it through asyncio.to_thread.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import uuid
from pathlib import Path, PurePosixPath

from core.role_io import FileRef, SourceFile

EMPTY_TREE = "4b825dc642cb6eb9a060e54bf8d69288fbee4904"  # git's empty tree object
GIT_TIMEOUT_SECONDS = 60
MAX_FILES = 200


# git sees none of the user's or the system's configuration (hooks, signing, templates).
GIT_ENV = {
    "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_TERMINAL_PROMPT": "0",
}


class UnsafePath(ValueError):
    """A file the model asked to write would land outside the workspace."""


class Workspace:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.repo = root / "repo"
        self.runs = root / "runs"  # test reports and logs: beside the repository, not in it

    def git(self, *args: str, repo: Path | None = None) -> str:
        done = subprocess.run(
            ["git", "-C", str(repo or self.repo), *args],
            capture_output=True,
            text=True,
            timeout=GIT_TIMEOUT_SECONDS,
            env=GIT_ENV,
        )
        if done.returncode != 0:
            raise RuntimeError(f"git {' '.join(args)} failed: {done.stderr.strip()}")
        return done.stdout.strip()

    def ensure(self) -> None:
        """Create the repository with an empty first commit if it is not there.

        Made complete in a staging folder and renamed into place, so a worker killed halfway
        leaves no repository without a first commit (every retry would fail on it)."""
        self.runs.mkdir(parents=True, exist_ok=True)
        if (self.repo / ".git").exists():
            if self._has_head():
                return
            shutil.rmtree(self.repo)  # created by a worker that died halfway: nothing committed
        staging = self.root / f"repo.creating-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        staging.mkdir(parents=True)
        try:
            self.git("init", "-q", "-b", "main", repo=staging)
            self.git("config", "user.name", "Q Assistant Orchestration", repo=staging)
            self.git("config", "user.email", "builds@q-assistant.invalid", repo=staging)
            self.git("config", "commit.gpgsign", "false", repo=staging)
            self.git("commit", "-q", "--allow-empty", "-m", "workspace created", repo=staging)
            os.rename(staging, self.repo)  # atomic; replaces an empty folder left by a crash
        except OSError:
            if not (self.repo / ".git").exists():  # not another attempt that got there first
                raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _has_head(self) -> bool:
        try:
            self.git("rev-parse", "-q", "--verify", "HEAD")
        except RuntimeError:
            return False
        return True

    def head(self) -> str:
        return self.git("rev-parse", "HEAD")

    def checkout(self, commit: str | None) -> str:
        """Make the working tree exactly `commit` (None: the workspace as created)."""
        self.ensure()
        target = commit or self.git("rev-list", "--max-parents=0", "HEAD")
        self.git("reset", "-q", "--hard", target)
        self.git("clean", "-q", "-fdx")
        return self.head()

    def safe_path(self, name: str) -> Path:
        """The absolute path of `name` inside the repository, or UnsafePath saying why not."""
        pure = PurePosixPath(name)
        if not name.strip() or pure.is_absolute() or name.startswith(("/", "\\")):
            raise UnsafePath(f"{name!r}: absolute or empty paths are refused")
        if ".." in pure.parts:
            raise UnsafePath(f"{name!r}: '..' is refused")
        if pure.parts and pure.parts[0] == ".git":
            raise UnsafePath(f"{name!r}: the repository's .git is off limits")
        target = (self.repo / pure).resolve()
        if not target.is_relative_to(self.repo.resolve()):
            raise UnsafePath(f"{name!r}: resolves outside the workspace (a symlink?)")
        return target

    def write(self, files: list[SourceFile], message: str) -> tuple[str, list[FileRef]]:
        """Check every path, then write all files and commit; nothing is written if one fails."""
        if len(files) > MAX_FILES:
            raise UnsafePath(f"{len(files)} files; at most {MAX_FILES} per attempt")
        targets = [(self.safe_path(f.path), f) for f in files]
        refs = []
        for target, file in targets:
            target.parent.mkdir(parents=True, exist_ok=True)
            data = file.content.encode()
            target.write_bytes(data)
            refs.append(FileRef(path=file.path, bytes=len(data), sha256=_sha(data)))
        self.git("add", "-A")
        self.git("commit", "-q", "--allow-empty", "-m", message)
        return self.head(), refs

    def diff(self, base: str | None, head: str, limit: int) -> tuple[str, str]:
        """The diff from `base` (None: from nothing) to `head`, cut at `limit`; and its stat."""
        start = base or EMPTY_TREE
        text = self.git("diff", start, head)
        stat = self.git("diff", "--shortstat", start, head)
        if len(text) > limit:
            text = text[:limit] + f"\n... diff cut at {limit} characters ..."
        return text, stat

    def export(self, commit: str, destination: Path) -> None:
        """The files of `commit` into `destination` (a release folder)."""
        destination.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(
            ["git", "-C", str(self.repo), "archive", "--format=tar", commit],
            capture_output=True,
            env=GIT_ENV,
            timeout=GIT_TIMEOUT_SECONDS,
            check=True,
        )
        subprocess.run(
            ["tar", "-x", "-C", str(destination)],
            input=archive.stdout,
            timeout=GIT_TIMEOUT_SECONDS,
            check=True,
        )


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
