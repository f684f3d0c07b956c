"""A re-run's role call answered from its original build's kept answers (core/reruns.py): the
answer the original kept for the same role, state and attempt (the latest, the one its build
acted on), else one it kept for the very same request, else the one of the original's n-th
attempt that made a call, for the re-run's attempt n (an original whose first attempt made no
call: its release waited for the project's queue and was tested again, where a re-run takes
no queue turn); no answer is a divergence, which ends the call (the build asks a person)
unless the re-run may go live after one.

Blocking: the model client calls `recorded` through asyncio.to_thread."""

from __future__ import annotations

import logging
from typing import TypeVar

from pydantic import BaseModel, ValidationError
from temporalio.exceptions import ApplicationError

from activities.model.answers import Answers, Kept
from core.contracts import Failure
from core.feedback import ModelUsage
from core.role_io import RoleTask

T = TypeVar("T", bound=BaseModel)
log = logging.getLogger(__name__)


def recorded(
    store: Answers, task: RoleTask, request: str, schema: type[T]
) -> tuple[T, ModelUsage] | None:
    """The original's answer to this call, with the usage of a call that spent nothing (None:
    it made no such call, and the re-run may go live after a divergence); RecordingDiverged
    when it made none and the re-run may not."""
    replay = task.replay
    assert replay is not None and not replay.live and replay.original is not None
    original, role, state, attempt = (
        replay.original,
        task.role.value,
        task.state.value,
        task.attempt,
    )
    for kept in store.recorded(original, role, state, attempt):
        if (answer := _as(kept, schema)) is not None:
            return answer, _replayed(kept.usage)
    by_hash = store.by_request(original, request)  # read only when nothing matched
    if by_hash is not None and (answer := _as(by_hash, schema)) is not None:
        return answer, _replayed(by_hash.usage)
    called = store.attempts(original, role, state)
    if attempt <= len(called) and called[attempt - 1] != attempt:
        for kept in store.recorded(original, role, state, called[attempt - 1]):
            if (answer := _as(kept, schema)) is not None:
                return answer, _replayed(kept.usage)
    if replay.live_after_divergence:
        log.info("%s attempt %d at %s: build %s made no such call; asking the model",
                 role, attempt, state, replay.original)  # fmt: skip
        return None
    raise ApplicationError(
        f"the recording of build {replay.original} has no answer for {role}'s attempt "
        f"{attempt} at {state}: the re-run took a path the original did not; abort, or "
        "re-run with --live-after-divergence to ask the model from there",
        type=Failure.RECORDING_DIVERGED,
        non_retryable=True,
    )


def _as(kept: Kept, schema: type[T]) -> T | None:
    try:
        return schema.model_validate(kept.answer)
    except ValidationError:
        return None


def _replayed(usage: ModelUsage) -> ModelUsage:
    """The recorded call's model, prompt and mode, and nothing spent: the answer was paid for
    by the original build."""
    return ModelUsage(
        model=usage.model,
        prompt_version=usage.prompt_version,
        offline=usage.offline,
        output_mode=usage.output_mode,
        replayed=True,
    )
