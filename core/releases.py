"""What the Release Manager's delivery comes to (one outcome of four, matched by the build's
rules), and the compensation that undoes a release."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Discriminator, Field, Tag

from core.projects import ProjectConfig


class _Delivery(BaseModel):
    """What every outcome of the Release Manager's delivery says."""

    version: str  # the version released or meant ("": none was reached)
    summary: str
    commit: str | None = None
    delivery: str = ""  # "merge" or "branch" into the project's repository ("": none)
    branch_head: str | None = None  # the project branch's commit when delivery looked
    smoke: str = ""  # what the smoke check ran and how it ended


class Released(_Delivery):
    """The release went out: merged, tagged and deployed (`merge`), pushed as a branch for a
    person (`branch`), or deployed as a release of its own (a build without a project
    repository)."""

    outcome: Literal["released"] = "released"
    notes: list[str] = Field(default_factory=list)
    path: str | None = None  # the release folder
    previous: str | None = None  # the version `current` pointed to before
    # The version the project's own files declare (pyproject.toml, __version__), and where, when
    # it is not the version released: said, never silently disagreed with.
    declared: str = ""


class SmokeFailed(_Delivery):
    """The release's smoke check failed: nothing was delivered, and a release that had been
    switched to was put back (`restored`)."""

    outcome: Literal["smoke_failed"] = "smoke_failed"
    path: str | None = None
    previous: str | None = None
    restored: bool = False
    # Not delivered because it would change nothing on the project's branch (no smoke ran).
    empty: bool = False


class Retest(_Delivery):
    """The project's branch moved since the build's base: `commit` is the branch merged into
    the build, which is tested again before it can land."""

    outcome: Literal["retest"] = "retest"


class Conflict(_Delivery):
    """The project's branch moved and its merge into the build conflicts in `conflicts`: the
    Code Writer makes the merge."""

    outcome: Literal["conflict"] = "conflict"
    conflicts: list[str] = Field(default_factory=list)


def _release_outcome(value: Any) -> str:
    """Which outcome a payload is: its `outcome` tag, or, in payloads that carry flags instead
    (recorded histories), what the flags say, read in the order they were written."""
    if isinstance(value, Released | SmokeFailed | Retest | Conflict):
        return value.outcome
    if "outcome" in value:
        return str(value["outcome"])
    if value.get("retest"):
        return "retest"
    if value.get("conflicts"):
        return "conflict"
    return "released" if value.get("released") else "smoke_failed"


ReleaseOutcome = Annotated[
    Annotated[Released, Tag("released")]
    | Annotated[SmokeFailed, Tag("smoke_failed")]
    | Annotated[Retest, Tag("retest")]
    | Annotated[Conflict, Tag("conflict")],
    Discriminator(_release_outcome),
]


class RestoreTask(BaseModel):
    """Compensation of a rollback: the workspace back to `commit`, and, after a release of
    this build, the project's `current` release back to `release_to`."""

    build_id: str
    project_id: str
    commit: str | None
    undo_release: str | None = None  # the version this build released
    release_to: str | None = None  # what `current` pointed to before it
    project: ProjectConfig | None = None  # the workspace's project repository (None: none)
    # A release merged into the project's branch: the change landed_from..landed is reverted.
    landed_from: str | None = None
    landed: str | None = None


class RestoreResult(BaseModel):
    commit: str | None
    release_current: str | None
    release_restored: bool
    base: str | None = None  # the project branch's commit the build now goes on from
    reverted_by: str | None = None  # the commit that reverted the release on the branch
