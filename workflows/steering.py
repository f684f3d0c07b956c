"""How a build is steered and paused: pending commands applied at boundaries (with the
compensation a rollback needs), and the two pauses, BUDGET_EXHAUSTED and NEEDS_ATTENTION.

A mixin of BuildWorkflow; deterministic like the rest of it.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ApplicationError

from workflows import metrics
from workflows.messages import BuildMessages
from workflows.records import BUILD_ROLE, BUILD_STATE

with workflow.unsafe.imports_passed_through():
    from activities.roles import RoleActivities
    from core import rules
    from core.models import EventType, RestoreTask
    from core.states import TABLE, TERMINAL, BuildState, is_valid, order, role_of

S = BuildState
RESTORE_TIMEOUT = timedelta(seconds=120)
RESTORE_RETRY = RetryPolicy(maximum_attempts=5)


class BuildFailed(Exception):
    """Raised inside the workflow to end the build FAILED with a reason and its short kind."""

    def __init__(self, reason: str, kind: str) -> None:
        super().__init__(reason)
        self.kind = kind


class BuildSteering(BuildMessages):
    """Transitions, pending commands, compensation and pauses; state lives on the workflow."""

    def _move(self, target: BuildState, by: str) -> None:
        source = self.data.state
        if not is_valid(source, target):
            raise ApplicationError(f"invalid transition {source.value} -> {target.value}")
        finished_phase = role_of(source) is not None and TABLE[source].next == target
        if finished_phase and source not in self.data.completed_phases:
            self.data.completed_phases.append(source)
        self.data.state = target
        self.data.commit_at[target.value] = self.data.head
        change = {"from": source.value, "to": target.value, "commit": self.data.head}
        self._emit(EventType.STATE_CHANGED, by, **change)
        # New keys may join this upsert freely; a new upsert (a new command) needs a patch.
        role = role_of(target)
        self._upsert(
            [
                BUILD_STATE.value_set(target.value),
                BUILD_ROLE.value_set(role.value) if role else BUILD_ROLE.value_unset(),
            ]
        )
        metrics.state_entered(source.value, target.value, self.entered_at)
        self.entered_at = workflow.now()
        if target in TERMINAL:
            metrics.build_finished(target.value)
        workflow.logger.info("build %s: %s -> %s", self.request.build_id, source, target)
        self._show()

    def _fail(self, reason: str, kind: str) -> None:
        self.data.last_error = reason
        self.data.failed_state = self.data.state
        self.data.failure_reason = kind
        self._move(S.FAILED, "system")
        self._emit(EventType.FAILED, "system", reason=reason, kind=kind)
        self._show()

    async def _apply_pending(self) -> bool:
        pending = self.data.pending
        if pending is None:
            return False
        self.data.pending = None
        if pending.command == "abort":
            self._emit(EventType.ABORTED, pending.requested_by, reason=pending.reason)
            raise BuildFailed(f"aborted by {pending.requested_by}: {pending.reason}", "aborted")
        event = EventType.RETRY_REQUESTED if pending.command == "retry" else EventType.ROLLBACK
        self._emit(event, pending.requested_by, target=pending.target.value, reason=pending.reason)
        self.data.guidance.append(pending.reason)
        self.data.feedback = {"requested_by": pending.requested_by, "reason": pending.reason}
        # Phases at or after the target are no longer complete once the build goes back.
        self.data.completed_phases = [
            s for s in self.data.completed_phases if order(s) < order(pending.target)
        ]
        if pending.command == "rollback" or self.data.release:
            await self._restore(pending.target, code=pending.command == "rollback")
        self._move(pending.target, pending.requested_by)
        return True

    async def _restore(self, target: BuildState, *, code: bool) -> None:
        """Compensation: the code as it was at `target` (a rollback), and this build's release
        undone if it made one; both recorded as a `restored` event."""
        release = self.data.release
        commit = self.data.commit_at.get(target.value) if code else self.data.head
        self._flush_attributes()
        result = await workflow.execute_activity_method(
            RoleActivities.restore,
            RestoreTask(
                build_id=self.request.build_id,
                project_id=self.request.project_id,
                commit=commit,
                undo_release=release.get("version"),
                release_to=release.get("previous"),
            ),
            start_to_close_timeout=RESTORE_TIMEOUT,
            retry_policy=RESTORE_RETRY,
            summary=f"restore {target.value}",
        )
        self.data.head = result.commit
        if release:
            self.data.base = release.get("previous_base")
            self.data.release = {}
        self._emit(
            EventType.RESTORED,
            "system",
            target=target.value,
            commit=result.commit,
            release_undone=release.get("version") if result.release_restored else None,
            release_current=result.release_current,
        )

    async def _pause_for_budget(self, problem: str) -> None:
        """Stop spending: wait in BUDGET_EXHAUSTED for a top-up, then go on where it paused."""
        state = self.data.state
        self.data.paused_from = state
        self._move(S.BUDGET_EXHAUSTED, "system")
        self._emit(EventType.BUDGET_EXHAUSTED, "system", reason=problem, paused_in=state.value)
        self._show()
        await self._mirror()
        wait = self.request.options.budget.wait_seconds
        try:
            await workflow.wait_condition(
                lambda: rules.budget_problem(self.data) is None or self._aborting(),
                timeout=timedelta(seconds=wait),
            )
        except TimeoutError as err:
            raise BuildFailed(
                f"budget exhausted ({problem}) and not topped up within {wait:g}s",
                "budget exhausted",
            ) from err
        if self._aborting():
            await self._apply_pending()
        self.data.paused_from = None
        self._move(state, "system")

    def _aborting(self) -> bool:
        return self.data.pending is not None and self.data.pending.command == "abort"

    async def _needs_attention(
        self,
        state: BuildState,
        why: str,
        feedback: dict[str, Any],
        summary: str,
        signature: str,
    ) -> None:
        first = rules.first_reason(feedback) or summary
        self.data.attention = f"{why} twice the same way at {state.value}: {first}"
        self.data.last_error = self.data.attention
        self.data.feedback = {"loop_back_from": state.value, **feedback}
        self.data.paused_from = state
        self._move(S.NEEDS_ATTENTION, "system")
        self._emit(EventType.NEEDS_ATTENTION, "system", reason=why, signature=signature, **feedback)
        self._show()
        await self._mirror()
        wait = self.request.options.attention_wait_seconds
        try:
            await workflow.wait_condition(
                lambda: self.data.pending is not None, timeout=timedelta(seconds=wait)
            )
        except TimeoutError as err:
            raise BuildFailed(
                f"{self.data.attention}; nobody answered within {wait:g}s",
                f"non-converging: {why}",
            ) from err
        self.data.paused_from = None
        self.data.attention = None
        await self._apply_pending()
