"""How a build's workflow code ends it FAILED, and what an activity's failure says."""

from __future__ import annotations

from typing import Any

from temporalio import workflow
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from pydantic import ValidationError

    from core.role_io import ModelUsage


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


def spend_of(err: ActivityError) -> ModelUsage | None:
    """What a role's model call spent before its failure, where the failure's details say it
    (activities/model/llm.py puts it there when no retry can mend the call)."""
    details: Any = getattr(err.cause, "details", None) or ()
    if len(details) != 1 or not isinstance(details[0], dict):
        return None
    try:
        return ModelUsage.model_validate(details[0])
    except ValidationError:
        return None
