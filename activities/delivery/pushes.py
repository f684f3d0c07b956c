"""Delivery of a build into its project's repository: the commit that lands is the commit that
was tested.

The project branch only ever moves forward to a build's tested commit (a fast-forward), with
the version tag in the same atomic push. If the branch moved since the build's base, the
branch is merged into the build instead and the build goes back to testing with the merged
tree; a merge that conflicts goes back to the Code Writer. The push itself is the lock: of
two builds that race, git accepts one and refuses the other, which then merges and re-tests.
Every step can be repeated after a crash: a commit already on the branch is not pushed again
and its tag is the one it already has.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from typing import Literal, TypeVar

from packaging.version import InvalidVersion, Version

from activities.delivery.targets import Release
from activities.repository.gitcmd import EMPTY_TREE, GitError, git
from activities.repository.workspace import Workspace
from core.feedback import Merge
from core.projects import Bump, VersionScheme, next_version, version_of
from core.releases import Conflict, Released, Retest, SmokeFailed

PUSH_ATTEMPTS = 3  # a refused push means the branch moved meanwhile: look again
MAX_CONFLICT_FILES = 10
CONFLICT_SIDE_CHARS = 4000


@dataclass
class Landing:
    """Where a build stands against its project's branch."""

    kind: Literal["ready", "landed", "moved", "conflict"]
    commit: str  # the commit to deliver (after a merge: the merge commit)
    branch_head: str  # the project branch's commit when delivery looked
    version: str = ""
    conflicts: list[str] = field(default_factory=list)


def _is_ancestor(ws: Workspace, older: str, newer: str) -> bool:
    try:
        ws.git("merge-base", "--is-ancestor", older, newer)
    except GitError as err:
        if err.returncode == 1:
            return False
        raise
    return True


def _tags(ws: Workspace) -> list[str]:
    return ws.git("tag", "--list").split()


def _version_at(ws: Workspace, commit: str) -> str:
    tags = [(v, t) for t in ws.git("tag", "--points-at", commit).split() if (v := version_of(t))]
    return max(tags)[1] if tags else ""


def survey(ws: Workspace, head: str, bump: Bump, scheme: VersionScheme = "auto") -> Landing:
    """Fetch the project and say what delivering `head` takes; a moved branch is merged in
    here (and the merge commit pushed under the build's refs)."""
    tip = ws.fetch()
    if _is_ancestor(ws, head, tip):  # delivered already: a retry after the push
        return Landing("landed", head, tip, _version_at(ws, head))
    if _is_ancestor(ws, tip, head):
        return Landing("ready", head, tip, next_version(_tags(ws), bump, scheme))
    ws.checkout(head)
    try:
        message = f"Merge {ws.remote_branch()} into {ws.build_branch()}"
        ws.git("merge", "-q", "--no-edit", "-m", message, tip)
    except GitError:
        conflicts = ws.unmerged()
        ws.git("merge", "--abort")
        return Landing("conflict", head, tip, conflicts=conflicts)
    merged = ws.head()
    ws.push_commit(merged)
    return Landing("moved", merged, tip)


TEAMMATE = "Simulated teammate <teammate@offline.invalid>"


def simulate_teammate(ws: Workspace, base: str | None, head: str, build_id: str) -> str | None:
    """`--simulate conflict`: a teammate's commit that rewrites the first file the build
    changed lands on the project's branch, once per build (its trailer finds it again); the
    commit, or None when it landed before or the build changed nothing that could collide."""
    trailer = f"Simulated-conflict: {build_id}"
    tip = ws.fetch()
    if ws.git("log", "--format=%H", "--fixed-strings", f"--grep={trailer}", tip):
        return None
    changed = ws.git("diff", "--name-only", "--diff-filter=AM", base or EMPTY_TREE, head)
    colliding = [path for path in changed.split() if path != "CHANGELOG.md"]  # merged by line
    if not colliding:
        return None
    tree = ws.add_worktree(tip, "teammate")
    try:
        path = colliding[0]
        target = tree / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(f"# {path}: a teammate's version, landed first\nTEAMMATE = True\n")
        message = f"A teammate changes {path}\n\n{trailer}\n"
        git(tree, "add", "--", path)
        git(tree, "commit", "-q", f"--author={TEAMMATE}", "-m", message)
        git(tree, "push", "-q", "origin", f"HEAD:refs/heads/{ws.remote_branch()}")
        return git(tree, "rev-parse", "HEAD")
    finally:
        ws.drop_worktree(tree)


def push(ws: Workspace, landing: Landing) -> bool:
    """Fast-forward the project branch to the tested commit and tag it (no tag without a
    version: the `none` scheme), in one atomic push; False when git refused (the branch moved
    or the version was taken meanwhile)."""
    tag, branch = landing.version, ws.remote_branch()
    refs = [f"{landing.commit}:refs/heads/{branch}"]
    if tag:
        ws.git("tag", "-f", "-a", tag, "-m", f"{tag}", landing.commit)
        refs.append(f"refs/tags/{tag}")
    try:
        ws.git("push", "-q", "--atomic", "origin", *refs)
    except GitError:
        if tag:
            ws.git("tag", "-d", tag)
        return False
    return True


@dataclass
class Revert:
    """A released build taken back out of its project's branch by a new commit."""

    commit: str  # the revert commit on the branch
    version: str
    conflicts: list[str] = field(default_factory=list)  # the revert did not apply here


def _trailer(build_id: str) -> str:
    return f"Reverts-build: {build_id}"


def revert(
    ws: Workspace, landed_from: str, landed: str, build_id: str, scheme: VersionScheme = "auto"
) -> Revert:
    """Revert the change `landed_from..landed` on the project's branch with a new commit and
    a patch version (history is never rewritten), also under later releases. Repeatable: a
    revert already on the branch is found by its trailer, not made twice."""
    for _ in range(PUSH_ATTEMPTS):
        tip = ws.fetch()
        found = ws.git("log", "--format=%H", f"--grep={_trailer(build_id)}", f"{landed}..{tip}")
        if found:
            commit = found.split()[0]
            return Revert(commit, _version_at(ws, commit))
        change = ws.git_bytes("diff", "--binary", landed_from, landed)
        ws.git("checkout", "-q", "-f", "--detach", tip)
        try:
            if change.strip():  # a build whose files were already there changed nothing
                ws.git_input(change, "apply", "--3way", "--reverse", "--index")
        except GitError as err:
            unmerged = ws.unmerged()
            failed = re.findall(r"error: (.+?): patch does not apply", err.reason)
            ws.git("reset", "-q", "--hard", tip)
            return Revert(tip, "", conflicts=sorted({*unmerged, *failed}) or [err.reason])
        version = next_version(_tags(ws), "patch", scheme)
        message = f"Revert build {build_id} ({_version_at(ws, landed) or landed[:12]})"
        ws.git("commit", "-q", "--allow-empty", "-m", message, "-m", _trailer(build_id))
        landing = Landing("ready", ws.head(), tip, version)
        if push(ws, landing):
            return Revert(landing.commit, version)
    raise GitError(("push",), "the branch kept moving; the revert could not land", 1)


def reapply(ws: Workspace, onto: str, landed_from: str, commit: str, message: str) -> str:
    """The build's code as it was at `commit`, on top of its revert: `onto` with the build's
    own change at `commit` applied (from where `commit` meets the project's history; nothing
    when `commit` is project history, such as the build's base)."""
    ws.git("checkout", "-q", "-f", "-B", ws.build_branch(), onto)
    start = ws.git("merge-base", landed_from, commit)
    change = ws.git_bytes("diff", "--binary", start, commit)
    if change.strip():
        ws.git_input(change, "apply", "--3way", "--index")
        ws.git("commit", "-q", "--allow-empty", "-m", message)
    head = ws.head()
    ws.push_commit(head)
    return head


def not_landed(landing: Landing) -> Retest | Conflict:
    if landing.kind == "conflict":
        files = ", ".join(landing.conflicts) or "unknown files"
        return Conflict(
            version="",
            summary=f"the project's branch moved and conflicts with this build in {files}",
            commit=landing.commit,
            delivery="merge",
            branch_head=landing.branch_head,
            conflicts=landing.conflicts,
        )
    return Retest(
        version="",
        summary="the project's branch moved; its merge into the build is tested again",
        commit=landing.commit,
        delivery="merge",
        branch_head=landing.branch_head,
    )


VERSION_FILES = ("*__init__.py", "*__about__.py", "*_version.py", "*version.py")
_DUNDER = re.compile(r"""^__version__\s*(?::\s*str\s*)?=\s*["']([^"']+)["']""", re.M)


def declared_version(ws: Workspace, commit: str) -> tuple[str, str] | None:
    """The version the project's files at `commit` declare, and the file: pyproject.toml's
    [project] version (unless dynamic), else the first `__version__ = "..."` of its packages."""
    try:
        text = ws.git("show", f"{commit}:pyproject.toml")
        project = tomllib.loads(text).get("project", {})
        if isinstance(project.get("version"), str):
            return project["version"], "pyproject.toml"
    except (GitError, tomllib.TOMLDecodeError):
        pass
    try:
        found = ws.git("grep", "-l", "-E", "^__version__", commit, "--", *VERSION_FILES)
    except GitError:  # exit 1: nothing found
        return None
    for line in sorted(found.splitlines(), key=lambda name: (name.count("/"), name)):
        path = line.split(":", 1)[1]
        if match := _DUNDER.search(ws.git("show", f"{commit}:{path}")):
            return match[1], path
    return None


def disagreement(ws: Workspace, commit: str, tag: str) -> str:
    """What the project's files declare, where it is not the version `tag` releases."""
    declared = declared_version(ws, commit)
    released = version_of(tag)
    if declared is None or released is None:
        return ""
    try:
        if Version(declared[0]) == released:
            return ""
    except InvalidVersion:
        pass
    return (
        f"{declared[1]} declares version {declared[0]}, the release is tagged {tag}; "
        "the project's own version was not changed"
    )


Checked = TypeVar("Checked", Released, SmokeFailed)


def smoke_checked(
    kind: type[Checked],
    release: Release,
    commit: str,
    ran: str,
    summary: str = "",
    landing: Landing | None = None,
) -> Checked:
    """A release that reached its smoke check, as `kind` (it passed, or it failed): merged
    into the project's branch when there is a `landing`, else a release of its own."""
    return kind(
        version=release.version,
        summary=summary,
        commit=commit,
        path=str(release.path),
        previous=release.previous,
        smoke=ran,
        delivery="merge" if landing else "",
        branch_head=landing.branch_head if landing else None,
    )


def conflict_sides(ws: Workspace, head: str | None, merge: Merge) -> Merge:
    """Both sides of each conflicting file, for the Code Writer's prompt (never history)."""
    ws.checkout(head)
    sides = {}
    for path in merge.conflicts[:MAX_CONFLICT_FILES]:
        sides[path] = {
            "build": _show(ws, head or "HEAD", path),
            "project": _show(ws, str(merge.branch_head), path),
        }
    return merge.model_copy(update={"sides": sides})


def _show(ws: Workspace, commit: str, path: str) -> str:
    try:
        return ws.git("show", f"{commit}:{path}")[:CONFLICT_SIDE_CHARS]
    except GitError:
        return "(absent)"
