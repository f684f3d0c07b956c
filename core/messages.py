"""Messages into a running build and their answers: retry, rollback, approve, top-up, abort.

The workflow's signals and updates take these; the API's bodies extend them.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field, JsonValue, model_validator

from core.states import BuildState


class RetryRequest(BaseModel):
    reason: Annotated[str, Field(min_length=1, max_length=2000)]
    requested_by: str = "person"


class RollbackRequest(BaseModel):
    target_state: BuildState
    reason: Annotated[str, Field(min_length=1, max_length=2000)]
    requested_by: str = "person"


class ApproveRequest(BaseModel):
    note: Annotated[str, Field(max_length=2000)] = ""
    approved_by: str = "person"
    phase_result: dict[str, JsonValue] | None = None  # what the approver adds for the next role


class TopUpRequest(BaseModel):
    """More budget for a build: added to its limits (a limit it had none of stays none)."""

    tokens: int = Field(default=0, ge=0)
    cost_usd: float = Field(default=0.0, ge=0)
    note: Annotated[str, Field(max_length=2000)] = ""
    requested_by: str = "person"

    @model_validator(mode="after")
    def adds_something(self) -> TopUpRequest:
        if self.tokens == 0 and self.cost_usd == 0:
            raise ValueError("a top-up needs tokens or cost_usd above 0")
        return self


class AbortRequest(BaseModel):
    """End the build FAILED with a reason (at once at a gate or pause, else after the phase)."""

    reason: Annotated[str, Field(min_length=1, max_length=2000)]
    requested_by: str = "person"


class TopUpAccepted(BaseModel):
    max_tokens: int | None
    max_cost_usd: float | None
    tokens_used: int
    cost_used_usd: float
    resumes: bool  # the build was paused for its budget and goes on now


class CommandAccepted(BaseModel):
    """Result of an accepted retry/rollback/approve update."""

    command: Literal["retry", "rollback", "approve", "abort"]
    from_state: BuildState
    target_state: BuildState
    applies: Literal["now", "after_current_phase"]
