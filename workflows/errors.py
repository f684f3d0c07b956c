"""How a build's workflow code ends it FAILED, and what an activity's failure says."""

from __future__ import annotations

from typing import Any

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError, TimeoutError

with workflow.unsafe.imports_passed_through():
    from pydantic import ValidationError

    from core.contracts import Failure
    from core.feedback import ModelUsage
    from core.outcomes import Ending


class BuildFailed(Exception):
    """Raised inside the workflow to end the build FAILED: what happened, for a person; its
    ending; and what says more (the setback, the error)."""

    def __init__(self, reason: str, ending: Ending, detail: str | None = None) -> None:
        super().__init__(reason)
        self.ending = ending
        self.detail = detail


class RevertConflicted(BuildFailed):
    """Undoing a build's release on its project's branch conflicts: a person must look."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason, Ending.REVERT_CONFLICT)


def cause_of(err: ActivityError) -> str:
    """What an activity's failure says, for a person."""
    return getattr(err.cause, "message", None) or str(err)


def kind_of(err: ActivityError) -> Failure | str:
    """The kind of an activity's failure: the `Failure` its ApplicationError names (another
    type an activity raised, as the SDK names it), or the timeout that ended the call."""
    cause = err.cause
    if isinstance(cause, TimeoutError):
        return f"timeout ({cause.type.name.lower() if cause.type else 'unknown'})"
    if not isinstance(cause, ApplicationError) or not cause.type:
        return "unknown"
    try:
        return Failure(cause.type)
    except ValueError:  # a type raised without a member (an unexpected exception's class)
        return cause.type


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
