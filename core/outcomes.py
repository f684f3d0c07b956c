"""Why a build goes back, waits or ends: the named reasons the workflow records (events, the
mirror's `failure_reason`, metrics' labels), so a reader branches on a member, never on text.

Values are what histories, the mirror and dashboards carry: a value never changes. Pure
standard library, like core/states.py.
"""

from __future__ import annotations

from enum import StrEnum


class Actor(StrEnum):
    """Who made an event happen when it was neither a role nor a named person."""

    SYSTEM = "system"  # the workflow itself
    PERSON = "person"  # somebody outside it (a cancel), name unknown


class Setback(StrEnum):
    """Why a phase's output sends the build back to IMPLEMENTATION, or to a person."""

    ENVIRONMENT_FAILED = "environment failed"  # the project's setup failed: a person's
    EMPTY_CHANGE = "empty change"
    TESTS_FAILED = "tests failed"
    CHANGES_REQUESTED = "verification requested changes"
    MERGE_CONFLICT = "merge conflict"
    RELEASE_FAILED = "release failed"
    UNSAFE_PATHS = "unsafe file paths"  # a Code Writer attempt refused before it wrote
    EDITS_REFUSED = "edits refused"


class Ending(StrEnum):
    """Why a build ended FAILED (with a detail where one says more: the setback, the error)."""

    ABORTED = "aborted"
    EXECUTION_TIMEOUT = "execution timeout"
    APPROVAL_TIMEOUT = "approval timeout"
    BUDGET_EXHAUSTED = "budget exhausted"
    RETRIES_EXHAUSTED = "retries exhausted"  # detail: the last setback
    NON_CONVERGING = "non-converging"  # the same failure twice, nobody answered; detail: it
    UNANSWERED = "unanswered"  # a person was asked and did not answer; detail: the question
    ROLE_ERROR = "role error"  # a role's activity failed; detail: "<role>: <failure kind>"
    REPOSITORY_ERROR = "repository error"
    RESTORE_FAILED = "restore failed"
    REVERT_CONFLICT = "revert conflict"
    TERMINATED = "terminated from outside the build"  # the reconciler's (db/reconciled.py)


def ending_text(ending: Ending, detail: str | None = None) -> str:
    """The mirror's `failure_reason`: the ending, and its detail where it has one."""
    return f"{ending.value}: {detail}" if detail else ending.value
