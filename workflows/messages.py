"""Messages into a running build: signals, validated updates and queries.

A mixin of BuildWorkflow, kept apart so the workflow file reads as the pipeline. Signals and
updates share the pure checks of core.rules: an invalid signal is recorded and ignored, an
invalid update is refused with the same reason before it enters history.
"""

from __future__ import annotations

from temporalio import workflow
from temporalio.exceptions import ApplicationError

from workflows.records import BuildRecords

with workflow.unsafe.imports_passed_through():
    from core import rules
    from core.models import (
        AbortRequest,
        ApproveRequest,
        BuildEvent,
        BuildStatus,
        CommandAccepted,
        EventType,
        Handoff,
        RetryRequest,
        RollbackRequest,
        TopUpAccepted,
        TopUpRequest,
    )
    from core.rules import Pending
    from core.states import PAUSES, TABLE, BuildState


class BuildMessages(BuildRecords):
    """Handlers of BuildWorkflow; the state they read and write lives on the workflow."""

    def _accept(self, command: str, target: BuildState, reason: str, by: str) -> CommandAccepted:
        source = self.data.state
        self.data.pending = Pending(command, target, reason, by)
        self.steered = True
        self._show()
        applies = "after_current_phase" if self.data.phase_running else "now"
        return CommandAccepted(
            command=command,
            from_state=source,
            target_state=target,
            applies=applies,
        )

    def _reject(self, command: str, reason: str, by: str) -> None:
        self._emit(EventType.SIGNAL_REJECTED, by, command=command, reason=reason)
        workflow.logger.warning("build %s: %s rejected: %s", self.request.build_id, command, reason)

    def _approve(self, request: ApproveRequest) -> CommandAccepted:
        gate = self.data.waiting_at_gate
        assert gate is not None
        self.data.approved_gate = gate
        self.steered = True
        extra = {"phase_result": request.phase_result} if request.phase_result else {}
        self._emit(
            EventType.APPROVED, request.approved_by, gate=gate.value, note=request.note, **extra
        )
        if request.phase_result:
            self.data.guidance.append(f"{request.approved_by} adds: {request.phase_result}")
        next_state = TABLE[gate].next
        assert next_state is not None
        return CommandAccepted(
            command="approve", from_state=gate, target_state=next_state, applies="now"
        )

    @workflow.signal
    def retry(self, request: RetryRequest) -> None:
        problem = rules.check_retry(self.data)
        if problem:
            self._reject("retry", problem, request.requested_by)
        else:
            target = rules.retry_target(self.data.state)
            self._accept("retry", target, request.reason, request.requested_by)

    @workflow.signal
    def rollback(self, request: RollbackRequest) -> None:
        problem = rules.check_rollback(self.data, request.target_state)
        if problem:
            self._reject("rollback", problem, request.requested_by)
        else:
            self._accept("rollback", request.target_state, request.reason, request.requested_by)

    @workflow.signal
    def approve(self, request: ApproveRequest) -> None:
        problem = rules.check_approve(self.data)
        if problem:
            self._reject("approve", problem, request.approved_by)
        else:
            self._approve(request)

    def _top_up(self, request: TopUpRequest) -> TopUpAccepted:
        resumes = self.data.state is BuildState.BUDGET_EXHAUSTED
        rules.apply_top_up(self.data, request.tokens, request.cost_usd)
        self.steered = True
        self._emit(
            EventType.TOPPED_UP,
            request.requested_by,
            tokens=request.tokens,
            cost_usd=request.cost_usd,
            note=request.note,
            max_tokens=self.data.max_tokens,
            max_cost_usd=self.data.max_cost_usd,
        )
        self._show()
        return TopUpAccepted(
            max_tokens=self.data.max_tokens,
            max_cost_usd=self.data.max_cost_usd,
            tokens_used=rules.tokens_of(self.data),
            cost_used_usd=rules.cost_of(self.data),
            resumes=resumes and rules.budget_problem(self.data) is None,
        )

    def _abort(self, request: AbortRequest) -> CommandAccepted:
        source = self.data.state
        # An abort replaces a pending retry or rollback: ending the build is the last word.
        self.data.pending = Pending(
            "abort", BuildState.FAILED, request.reason, request.requested_by
        )
        self.steered = True
        self._show()
        waiting = self.data.waiting_at_gate is not None or source in PAUSES
        return CommandAccepted(
            command="abort",
            from_state=source,
            target_state=BuildState.FAILED,
            applies="after_current_phase" if self.data.phase_running and not waiting else "now",
        )

    @workflow.signal
    def abort(self, request: AbortRequest) -> None:
        problem = rules.check_abort(self.data)
        if problem:
            self._reject("abort", problem, request.requested_by)
        else:
            self._abort(request)

    @workflow.update
    def update_abort(self, request: AbortRequest) -> CommandAccepted:
        return self._abort(request)

    @update_abort.validator
    def _validate_abort(self, request: AbortRequest) -> None:
        _refuse(rules.check_abort(self.data))

    @workflow.signal
    def top_up(self, request: TopUpRequest) -> None:
        problem = rules.check_top_up(self.data)
        if problem:
            self._reject("top_up", problem, request.requested_by)
        else:
            self._top_up(request)

    @workflow.update
    def update_top_up(self, request: TopUpRequest) -> TopUpAccepted:
        return self._top_up(request)

    @update_top_up.validator
    def _validate_top_up(self, request: TopUpRequest) -> None:
        _refuse(rules.check_top_up(self.data))

    @workflow.update
    def update_retry(self, request: RetryRequest) -> CommandAccepted:
        target = rules.retry_target(self.data.state)
        return self._accept("retry", target, request.reason, request.requested_by)

    @update_retry.validator
    def _validate_retry(self, request: RetryRequest) -> None:
        _refuse(rules.check_retry(self.data))

    @workflow.update
    def update_rollback(self, request: RollbackRequest) -> CommandAccepted:
        return self._accept("rollback", request.target_state, request.reason, request.requested_by)

    @update_rollback.validator
    def _validate_rollback(self, request: RollbackRequest) -> None:
        _refuse(rules.check_rollback(self.data, request.target_state))

    @workflow.update
    def update_approve(self, request: ApproveRequest) -> CommandAccepted:
        return self._approve(request)

    @update_approve.validator
    def _validate_approve(self, request: ApproveRequest) -> None:
        _refuse(rules.check_approve(self.data))

    @workflow.query
    def status(self) -> BuildStatus:
        return rules.status(self.request, self.data, events=len(self.events))

    @workflow.query
    def event_log(self, after_seq: int = 0) -> list[BuildEvent]:
        return [e for e in self.events if e.seq > after_seq]

    @workflow.query
    def handoff_log(self) -> list[Handoff]:
        return list(self.handoffs)


def _refuse(problem: str | None) -> None:
    if problem:
        raise ApplicationError(problem, type="CommandRejected", non_retryable=True)
