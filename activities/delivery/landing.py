"""The Release Manager's work on a project's repository, as the role activity drives it:
land the tested commit and deploy it (the smoke check first, then the push, then `current`),
and undo a landed release by a revert that is deployed in turn (activities/delivery/pushes.py has
the git side)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from temporalio.exceptions import ApplicationError

from activities import paths
from activities.beat import in_thread
from activities.delivery import pushes
from activities.delivery.targets import Release, ReleaseTarget
from activities.repository.workspace import Workspace
from activities.sandbox.runs import Limits
from core.contracts import Failure
from core.projects import Bump, VersionScheme
from core.releases import Released, ReleaseOutcome, RestoreResult, RestoreTask, SmokeFailed
from core.role_io import RoleTask

SMOKE_LIMITS = Limits(60, 512)
SMOKE_OUTPUT_CHARS = 600
EMPTY = (
    "the change is empty on the project's branch: merging it changes no file, so nothing was "
    "released or tagged"
)


async def land(
    ws: Workspace,
    releases: ReleaseTarget,
    project_id: str,
    head: str,
    bump: Bump,
    smoke_command: str,
    venv: Path | None = None,
    scheme: VersionScheme = "auto",
    roots: tuple[str, ...] = (),
) -> ReleaseOutcome:
    """Land `head` on the project's branch with its version tag and make it the current
    release; or an outcome that says why not (the branch moved: re-test; a conflict; a
    failed smoke check, before anything was pushed; a change that changes nothing). The smoke
    check runs with `venv`, the project's environment, its import roots `roots` first."""
    for _ in range(pushes.PUSH_ATTEMPTS):
        landing = await in_thread("fetch the project", pushes.survey, ws, head, bump, scheme)
        if landing.kind in ("moved", "conflict"):
            return pushes.not_landed(landing)
        if landing.kind == "ready" and not await in_thread(
            "diff", ws.changes, landing.branch_head, head
        ):
            return SmokeFailed(
                version="",
                summary=EMPTY,
                commit=head,
                branch_head=landing.branch_head,
                smoke="not run: nothing to deliver",
                empty=True,
            )
        version = landing.version or f"build-{ws.build_branch().removeprefix('build/')}"
        release = await in_thread("stage", exported, ws, head, releases.stage, project_id, version)
        smoke = await releases.verify(release, smoke_command, SMOKE_LIMITS, venv, roots)
        ran = f"`{smoke_command or 'import every module'}` exited {smoke.returncode}"
        if not smoke.ok:  # nothing was pushed, nothing switched
            await in_thread("discard", paths.remove_tree, release.path)
            why = "timed out" if smoke.timed_out else _tail(smoke.output)
            summary = f"smoke check failed ({ran}): {why}; nothing was delivered"
            return pushes.smoke_checked(SmokeFailed, release, head, ran, summary, landing)
        if landing.kind == "ready" and not await in_thread("push", pushes.push, ws, landing):
            await in_thread("discard", paths.remove_tree, release.path)
            continue
        release = await in_thread("switch current", releases.publish, release)
        done = pushes.smoke_checked(Released, release, head, ran, landing=landing)
        done.declared = await in_thread(
            "version files", pushes.disagreement, ws, landing.commit, landing.version
        )
        return done
    landing = await in_thread("fetch the project", pushes.survey, ws, head, bump, scheme)
    return pushes.not_landed(landing)


async def release_here(
    ws: Workspace, releases: ReleaseTarget, task: RoleTask, smoke_command: str, limits: Limits
) -> Released | SmokeFailed:
    """A build without a project repository (started before builds had one): its tree
    released as a version of its own and smoke-checked; a failed check restores the release
    that was current."""
    commit = await in_thread("checkout", ws.checkout, task.head)
    version = f"0.1.{task.attempt - 1}+{task.build_id}"
    release = await in_thread(
        "release", exported, ws, commit, releases.release, task.project_id, version
    )
    smoke = await releases.verify(release, smoke_command, limits)
    ran = f"`{smoke_command or 'import every module'}` exited {smoke.returncode}"
    if smoke.ok:
        return pushes.smoke_checked(Released, release, commit, ran)
    now = await in_thread("restore", releases.restore, task.project_id, release.previous)
    why = "timed out" if smoke.timed_out else _tail(smoke.output)
    summary = f"smoke check failed ({ran}): {why}; restored release {now or 'none'}"
    failed = pushes.smoke_checked(SmokeFailed, release, commit, ran, summary)
    failed.restored = True
    return failed


async def revert(
    ws: Workspace, releases: ReleaseTarget, task: RestoreTask, landed_from: str, landed: str
) -> RestoreResult:
    """A release merged into the project's branch is reverted there by a new commit and
    version, which is deployed; the build's code at `task.commit` goes on from the revert."""
    await in_thread("checkout", ws.checkout, landed)
    scheme = task.project.version_scheme if task.project else "auto"
    done = await in_thread("revert", pushes.revert, ws, landed_from, landed, task.build_id, scheme)
    if done.conflicts:
        raise ApplicationError(
            f"reverting release {task.undo_release} on the project's branch conflicts in "
            f"{', '.join(done.conflicts)}; a person must revert it by hand",
            type=Failure.REVERT_CONFLICT,
            non_retryable=True,
        )
    release = await in_thread(
        "release", exported, ws, done.commit, releases.release, task.project_id, done.version
    )
    message = f"build {task.build_id}: its code again, after the revert"
    head = await in_thread(
        "reapply", pushes.reapply, ws, done.commit, landed_from, task.commit or landed_from,
        message,
    )  # fmt: skip
    return RestoreResult(
        commit=head,
        release_current=release.version,
        release_restored=True,
        base=done.commit,
        reverted_by=done.commit,
    )


def exported(
    ws: Workspace,
    commit: str,
    put: Callable[[str, str, Path], Release],
    project_id: str,
    version: str,
) -> Release:
    """The files of `commit` handed to the release target (`put`: stage or release) from a
    new private folder of the worker's, removed after: no run has ever written there, so
    nothing in it can point elsewhere."""
    staging = paths.fresh(ws.root / "staging", "export-")
    try:
        ws.export(commit, staging)
        return put(project_id, version, staging)
    finally:
        paths.remove_tree(staging)


def _tail(text: str) -> str:
    text = text.strip()
    return text if len(text) <= SMOKE_OUTPUT_CHARS else "..." + text[-SMOKE_OUTPUT_CHARS:]
