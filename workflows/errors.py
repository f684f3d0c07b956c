"""How a build's workflow code ends it FAILED, and what an activity's failure says."""

from __future__ import annotations

from temporalio.exceptions import ActivityError


class BuildFailed(Exception):
    """Raised inside the workflow to end the build FAILED with a reason and its short kind."""

    def __init__(self, reason: str, kind: str) -> None:
        super().__init__(reason)
        self.kind = kind


class RevertConflicted(BuildFailed):
    """Undoing a build's release on its project's branch conflicts: a person must look."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason, "revert conflict")


def cause_of(err: ActivityError) -> str:
    """What an activity's failure says, for a person."""
    return getattr(err.cause, "message", None) or str(err)
