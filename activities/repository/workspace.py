"""A build's workspace: a git repository under WORKSPACE_DIR, one commit per implementation.

Every role that touches the code first checks out the commit the workflow names, so retries,
crashes and rollbacks all work from the state the workflow recorded. A workspace of a project
is a clone of the project's repository on a branch `build/<build_id>`; every commit it makes
is pushed to the project under `refs/builds/<build_id>/<commit>`, so the workspace is only a
cache: a missing one (another worker, a wiped disk) is cloned again and goes on. A workspace
without a remote (builds started before projects had repositories) lives only on this disk.
Blocking (git runs as a subprocess): activities call it through asyncio.to_thread.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

from activities import paths
from activities.paths import PathRefused
from activities.repository.edits import (
    AttemptRefused,
    EditRefused,
    MergeUnresolved,
    UnsafePath,
    plan_edits,
)
from activities.repository.gitcmd import (
    EMPTY_TREE,
    GIT_ENV,
    GIT_TIMEOUT_SECONDS,
    GitError,
    git,
    git_bytes,
)
from core.role_io import FileEdit, FileRef, SourceFile

MAX_FILES = 200
__all__ = [
    "GIT_ENV", "AttemptRefused", "CommitMissing", "EditRefused", "GitError", "MergeUnresolved",
    "Remote", "UnsafePath", "Workspace",
]  # fmt: skip


@dataclass(frozen=True)
class Remote:
    """The project repository a workspace is a clone of, and the build it works for."""

    url: str
    branch: str
    build_id: str

    @property
    def build_branch(self) -> str:
        return f"build/{self.build_id}"

    @property
    def refs(self) -> str:
        """Where the build's commits are kept in the project's repository."""
        return f"refs/builds/{self.build_id}"


class CommitMissing(GitError):
    """A commit to start from that the project's repository does not have (retrying cannot
    bring it back)."""


CONFLICT_MARKERS = ("<<<<<<< ", ">>>>>>> ")
# How the workspace's merges treat files (the clone's own info/attributes, never committed):
# two builds adding their lines to the changelog is the commonest conflict, and its one right
# answer is both lines, which git's union driver gives.
MERGE_ATTRIBUTES = "CHANGELOG.md merge=union\n"


class Workspace:
    def __init__(self, root: Path, remote: Remote | None = None) -> None:
        self.root = root
        self.remote = remote
        self.repo = root / "repo"
        self.runs = root / "runs"  # test reports and logs: beside the repository, not in it

    def git(self, *args: str, repo: Path | None = None) -> str:
        return git(repo or self.repo, *args)

    def git_bytes(self, *args: str) -> bytes:
        return git_bytes(self.repo, *args)

    def git_input(self, data: bytes, *args: str) -> None:
        git_bytes(self.repo, *args, stdin=data)

    def ensure(self) -> None:
        """Create the repository if it is not there: a clone of the project's repository, or
        (without a remote) a new repository with an empty first commit.

        Made complete in a staging folder and renamed into place, so a worker killed halfway
        leaves no repository without a first commit (every retry would fail on it)."""
        self.runs.mkdir(parents=True, exist_ok=True)
        if (self.repo / ".git").exists():
            if self._has_head():
                return
            shutil.rmtree(self.repo)  # created by a worker that died halfway: nothing committed
        staging = self.root / f"repo.creating-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        staging.parent.mkdir(parents=True, exist_ok=True)
        try:
            if self.remote is None:
                staging.mkdir()
                self.git("init", "-q", "-b", "main", repo=staging)
                self.git("commit", "-q", "--allow-empty", "-m", "workspace created", repo=staging)
            else:
                remote = self.remote
                git(None, "clone", "-q", "--no-checkout", "-b", remote.branch, remote.url,
                    str(staging))  # fmt: skip
                self.git("fetch", "-q", "origin", f"+{remote.refs}/*:{remote.refs}/*", repo=staging)
                self.git("checkout", "-q", "-B", remote.build_branch, f"origin/{remote.branch}",
                         repo=staging)  # fmt: skip
            self.git("config", "commit.gpgsign", "false", repo=staging)
            (staging / ".git" / "info").mkdir(exist_ok=True)
            (staging / ".git" / "info" / "attributes").write_text(MERGE_ATTRIBUTES)
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

    def has(self, commit: str) -> bool:
        try:
            self.git("cat-file", "-e", f"{commit}^{{commit}}")
        except GitError:
            return False
        return True

    def fetch(self) -> str:
        """The project branch's head now, with the build's own commits fetched beside it."""
        remote = self._remote()
        self.git(
            "fetch", "-q", "--prune", "--prune-tags", "--tags", "origin",
            f"+refs/heads/{remote.branch}:refs/remotes/origin/{remote.branch}",
            f"+{remote.refs}/*:{remote.refs}/*",
        )  # fmt: skip
        return self.git("rev-parse", f"refs/remotes/origin/{remote.branch}")

    def open(self, at: str | None = None) -> str:
        """Clone (or fetch) the project, put the build branch at the project branch's head (or
        at commit `at`, which the project's repository must have) and return that commit: the
        build's base."""
        self.ensure()
        base = self.fetch()
        if at is not None:
            if not self.has(at):
                raise CommitMissing(("checkout", at), f"commit {at} is not in it", 128)
            base = self.git("rev-parse", f"{at}^{{commit}}")
        self.git("checkout", "-q", "-f", "-B", self._remote().build_branch, base)
        self.git("clean", "-q", "-ffdx")  # -ff: nested repositories too
        return base

    def checkout(self, commit: str | None) -> str:
        """Make the working tree exactly `commit` (None: the workspace as created); a commit
        this clone lacks is fetched from the project's repository."""
        self.ensure()
        if (self.repo / ".git" / "MERGE_HEAD").exists():  # a merge a crashed attempt began
            self.git("merge", "--abort")
        if commit is None:
            target = self.git("rev-list", "--max-parents=0", "HEAD")
        else:
            target = commit
            if self.remote is not None and not self.has(commit):
                self.fetch()
        if self.remote is None:
            self.git("reset", "-q", "--hard", target)
        else:
            self.git("checkout", "-q", "-f", "-B", self.remote.build_branch, target)
        self.git("clean", "-q", "-ffdx")  # -ff: nested repositories too
        return self.head()

    def start_merge(self, commit: str) -> list[str]:
        """Begin merging `commit` into the checked-out tree; the files left in conflict (the
        next `write` must resolve them)."""
        with contextlib.suppress(GitError):
            self.git("merge", "-q", "--no-commit", "--no-ff", commit)
        return self.unmerged()

    def unmerged(self) -> list[str]:
        """The files a merge in progress left in conflict."""
        return self.git("diff", "--name-only", "--diff-filter=U").split()

    def add_worktree(self, commit: str, name: str) -> Path:
        """`commit` checked out in a folder of its own beside the repository (a baseline)."""
        tree = self.root / f"{name}-{commit[:12]}"
        self.drop_worktree(tree)
        self.git("worktree", "add", "-q", "--detach", "--force", str(tree), commit)
        return tree

    def clone_at(self, commit: str, name: str) -> Path:
        """`commit` checked out in a clone of its own beside the repository, with its git data
        and tags (a local clone: objects hard-linked, so it costs little), where a run sees
        what a checkout of the project has: a project versioned from its tags (setuptools_scm,
        hatch-vcs) builds in it. The caller removes it."""
        return clone_at(self.repo, paths.fresh(self.root, f"{name}-{commit[:12]}-"), commit)

    def drop_worktree(self, tree: Path) -> None:
        if tree.exists():
            with contextlib.suppress(GitError):
                self.git("worktree", "remove", "--force", str(tree))
            shutil.rmtree(tree, ignore_errors=True)
        self.git("worktree", "prune")

    def push_commit(self, commit: str) -> None:
        """Keep `commit` in the project's repository under the build's refs (no-op without a
        remote)."""
        if self.remote is not None:
            self.git("push", "-q", "origin", f"{commit}:{self.remote.refs}/{commit}")

    def remote_branch(self) -> str:
        return self._remote().branch

    def build_branch(self) -> str:
        return self._remote().build_branch

    def _remote(self) -> Remote:
        if self.remote is None:
            raise ValueError("this workspace has no project repository")
        return self.remote

    def read_file(self, name: str) -> bytes | None:
        """The bytes of the file `name` in the working tree (None: there is none); UnsafePath
        for a name the worker does not open (activities/paths.py says which)."""
        try:
            return paths.read_beneath(self.repo, name)
        except PathRefused as err:
            raise UnsafePath(str(err)) from err
        except OSError as err:
            raise UnsafePath(f"{name!r}: {err.strerror or err}") from err

    def write(
        self, files: list[SourceFile], message: str, edits: list[FileEdit] | None = None
    ) -> tuple[str, list[FileRef]]:
        """Check every path and edit, then write all files, apply the edits and commit;
        nothing changes if one of them does not apply. Every file goes through
        activities/paths.py: no link is followed, no `.git` touched."""
        edits = edits or []
        if len(files) + len(edits) > MAX_FILES:
            raise UnsafePath(f"{len(files) + len(edits)} changes; at most {MAX_FILES} per attempt")
        try:
            for name in (
                [f.path for f in files]
                + [e.path for e in edits]
                + [e.to for e in edits if e.kind == "rename"]
            ):
                paths.check_name(name)
        except PathRefused as err:
            raise UnsafePath(str(err)) from err
        planned = plan_edits(self.read_file, files, edits)
        unresolved = self.unmerged()
        contents = {f.path: f.content.encode() for f in files} | planned
        written = {path for path, data in contents.items() if data is not None}
        marked = [
            path
            for path, data in contents.items()
            if data is not None and any(m.encode() in data for m in CONFLICT_MARKERS)
        ]
        if left := [path for path in unresolved if path not in written or path in marked]:
            self.git("merge", "--abort")
            raise MergeUnresolved(
                f"merging the project's branch conflicts in {', '.join(left)}; "
                "write each of these files whole, with both sides' changes and no markers"
            )
        refs = []
        try:
            for name, data in contents.items():
                if data is None:
                    paths.unlink_beneath(self.repo, name)
                    continue
                paths.write_beneath(self.repo, name, data)
                refs.append(FileRef(path=name, bytes=len(data), sha256=_sha(data)))
        except (PathRefused, OSError) as err:
            self._discard()
            if isinstance(err, PathRefused):
                raise UnsafePath(str(err)) from err
            raise UnsafePath(f"{err.filename or ''}: {err.strerror or err}") from err
        self.git("add", "-A")
        self.git("commit", "-q", "--allow-empty", "-m", message)
        commit = self.head()
        self.push_commit(commit)
        return commit, refs

    def _discard(self) -> None:
        """The working tree back to its commit (a merge in progress is given up too)."""
        self.git("reset", "-q", "--hard")
        self.git("clean", "-q", "-ffdx")

    def changes(self, base: str | None, head: str) -> bool:
        """Whether `head`'s tree differs from `base`'s (None: from nothing)."""
        return bool(self.git("diff", "--name-only", base or EMPTY_TREE, head))

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


def clone_at(repo: Path, destination: Path, commit: str) -> Path:
    """`commit` of the repository `repo` checked out at `destination` (empty or absent), with
    its git data and tags: a local clone, objects hard-linked."""
    git(None, "clone", "-q", "--no-checkout", str(repo), str(destination))
    try:
        git(destination, "cat-file", "-e", f"{commit}^{{commit}}")
    except GitError:  # reachable only from the repository's other refs (the project branch)
        git(destination, "fetch", "-q", "origin", "+refs/remotes/*:refs/remotes/workspace/*")
    git(destination, "checkout", "-q", "--detach", commit)
    return destination


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
