"""What the workflow tells a role's call and hears back beside its output: the feedback the
Code Writer fixes next (why the build came back), and what a model call spent.

Below core/role_io.py and core/events.py, both of which carry them.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field, SerializerFunctionWrapHandler, model_serializer

from core.releases import ReleaseOutcome
from core.reports import TestFailure
from core.states import BuildState


class ModelUsage(BaseModel):
    model: str
    prompt_version: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_ms: int = 0
    cost_usd: float = 0.0
    requests: int = 0  # HTTP requests this call made (re-asks included)
    offline: bool = False
    output_mode: str = ""  # how the answer was asked for (activities/model/output_modes.py)
    reused: bool = False  # the answer kept from an earlier try of the same call (not paid again)
    replayed: bool = False  # a re-run's answer from its original build (core/reruns.py)
    # Some tokens are counted from the text, not the server's usage: a stream without usage,
    # or one cut before its end (its retry carries what it had received).
    estimated: bool = False
    context_cut: int = 0  # characters of the task cut to fit the model's context window


class SetOnly(BaseModel):
    """A model whose JSON holds only the fields that are set (not None): a role's prompt shows
    what the role has, not a list of what it has not."""

    @model_serializer(mode="wrap")
    def _set_only(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        dumped: dict[str, Any] = handler(self)
        return {name: value for name, value in dumped.items() if getattr(self, name) is not None}


class Merge(BaseModel):
    """The merge the Code Writer makes: the project branch's commit and the files that conflict
    with the build; the activity adds both sides of each file (`sides`) for the prompt."""

    branch_head: str | None = None
    conflicts: list[str] = Field(default_factory=list)
    sides: dict[str, dict[str, str]] | None = None  # path -> {"build": ..., "project": ...}


class Feedback(SetOnly):
    """What the Code Writer is asked to fix: the phase that sent the build back and why (the
    failing tests, the review's reasons, the merge to make, the release that did not go out),
    or what a person said with a retry or a rollback."""

    loop_back_from: BuildState | None = None
    failures: list[TestFailure] | None = None
    reasons: list[str] | None = None
    merge: Merge | None = None
    release: ReleaseOutcome | None = None
    error: str | None = None  # why the Code Writer's last attempt was refused
    requested_by: str | None = None
    reason: str | None = None
