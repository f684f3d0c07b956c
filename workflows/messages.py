"""Messages into a running build: signals, validated updates and queries, a facet of
BuildWorkflow.

Signals and updates share the pure checks of core.rules: an invalid signal is recorded as an
event and ignored, an invalid update is refused with the same reason before it enters history.
An accepted retry, rollback or abort is held as pending; the pipeline applies it at the next
boundary (workflows/build.py).
"""

from __future__ import annotations

from temporalio import workflow
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from core import rules
    from core.build_data import BuildData, Command, Pending
    from core.build_io import BuildRequest, BuildStatus
    from core.contracts import Failure
    from core.events import Approved, SignalRejected, ToppedUp
    from core.messages import (
        AbortRequest,
        ApproveRequest,
        CommandAccepted,
        RetryRequest,
        RollbackRequest,
        TopUpAccepted,
        TopUpRequest,
    )
    from core.mirror import BuildEvent, Handoff
    from core.projects import ReleaseTurn
    from core.states import PAUSES, TABLE, BuildState
    from workflows.records import BuildRecords
    from workflows.turn import BuildTurn


class BuildMessages:
    """The handlers of BuildWorkflow, which holds the state they read and write."""

    request: BuildRequest
    data: BuildData
    records: BuildRecords
    turn: BuildTurn

    # --- signals (the Web UI, `temporal workflow signal`) -------------------------------

    @workflow.signal
    def retry(self, request: RetryRequest) -> None:
        if problem := rules.check_retry(self.data):
            self._reject(Command.RETRY, problem, request.requested_by)
        else:
            self._accept_retry(request)

    @workflow.signal
    def rollback(self, request: RollbackRequest) -> None:
        if problem := rules.check_rollback(self.data, request.target_state):
            self._reject(Command.ROLLBACK, problem, request.requested_by)
        else:
            self._accept_rollback(request)

    @workflow.signal
    def approve(self, request: ApproveRequest) -> None:
        if problem := rules.check_approve(self.data):
            self._reject("approve", problem, request.approved_by)
        else:
            self._accept_approval(request)

    @workflow.signal
    def abort(self, request: AbortRequest) -> None:
        if problem := rules.check_abort(self.data):
            self._reject(Command.ABORT, problem, request.requested_by)
        else:
            self._accept_abort(request)

    @workflow.signal
    def top_up(self, request: TopUpRequest) -> None:
        if problem := rules.check_top_up(self.data):
            self._reject("top_up", problem, request.requested_by)
        else:
            self._accept_top_up(request)

    @workflow.signal
    def release_turn(self, turn: ReleaseTurn) -> None:
        """The project's release queue (workflows/project.py): this build's turn has come."""
        self.turn.granted(turn)

    # --- updates (the API, starter.py): the same checks, answered at once ---------------

    @workflow.update
    def update_retry(self, request: RetryRequest) -> CommandAccepted:
        return self._accept_retry(request)

    @update_retry.validator
    def validate_retry(self, request: RetryRequest) -> None:
        refuse(rules.check_retry(self.data))

    @workflow.update
    def update_rollback(self, request: RollbackRequest) -> CommandAccepted:
        return self._accept_rollback(request)

    @update_rollback.validator
    def validate_rollback(self, request: RollbackRequest) -> None:
        refuse(rules.check_rollback(self.data, request.target_state))

    @workflow.update
    def update_approve(self, request: ApproveRequest) -> CommandAccepted:
        return self._accept_approval(request)

    @update_approve.validator
    def validate_approve(self, request: ApproveRequest) -> None:
        refuse(rules.check_approve(self.data))

    @workflow.update
    def update_abort(self, request: AbortRequest) -> CommandAccepted:
        return self._accept_abort(request)

    @update_abort.validator
    def validate_abort(self, request: AbortRequest) -> None:
        refuse(rules.check_abort(self.data))

    @workflow.update
    def update_top_up(self, request: TopUpRequest) -> TopUpAccepted:
        return self._accept_top_up(request)

    @update_top_up.validator
    def validate_top_up(self, request: TopUpRequest) -> None:
        refuse(rules.check_top_up(self.data))

    # --- queries ------------------------------------------------------------------------

    @workflow.query
    def status(self) -> BuildStatus:
        return self.records.status()

    @workflow.query
    def event_log(self, after_seq: int = 0) -> list[BuildEvent]:
        return [e for e in self.records.events if e.seq > after_seq]

    @workflow.query
    def handoff_log(self) -> list[Handoff]:
        return list(self.records.handoffs)

    # --- what an accepted command does --------------------------------------------------

    def _accept_retry(self, request: RetryRequest) -> CommandAccepted:
        target = rules.retry_target(self.data.state)
        return self._hold(Command.RETRY, target, request.reason, request.requested_by)

    def _accept_rollback(self, request: RollbackRequest) -> CommandAccepted:
        target = request.target_state
        return self._hold(Command.ROLLBACK, target, request.reason, request.requested_by)

    def _hold(self, command: Command, target: BuildState, reason: str, by: str) -> CommandAccepted:
        """Hold a retry or rollback until the pipeline's next boundary."""
        source = self.data.state
        self.data.steering.pending = Pending(command, target, reason, by)
        self.records.steered = True
        self.records.show()
        applies = "after_current_phase" if self.data.phase_running else "now"
        return CommandAccepted(
            command=command, from_state=source, target_state=target, applies=applies
        )

    def _accept_abort(self, request: AbortRequest) -> CommandAccepted:
        source = self.data.state
        # An abort replaces a pending retry or rollback: ending the build is the last word.
        self.data.steering.pending = Pending(
            Command.ABORT, BuildState.FAILED, request.reason, request.requested_by
        )
        self.records.steered = True
        self.records.show()
        waiting = self.data.steering.waiting_at_gate is not None or source in PAUSES
        return CommandAccepted(
            command=Command.ABORT,
            from_state=source,
            target_state=BuildState.FAILED,
            applies="after_current_phase" if self.data.phase_running and not waiting else "now",
        )

    def _accept_approval(self, request: ApproveRequest) -> CommandAccepted:
        gate = self.data.steering.waiting_at_gate
        assert gate is not None
        self.data.steering.approved_gate = gate
        self.records.steered = True
        approved = Approved(gate=gate, note=request.note, phase_result=request.phase_result)
        self.records.emit(approved, request.approved_by)
        if request.phase_result:
            self._guide(f"{request.approved_by} adds: {request.phase_result}")
        next_state = TABLE[gate].next
        assert next_state is not None
        return CommandAccepted(
            command="approve", from_state=gate, target_state=next_state, applies="now"
        )

    def _accept_top_up(self, request: TopUpRequest) -> TopUpAccepted:
        resumes = self.data.state is BuildState.BUDGET_EXHAUSTED
        budget = self.data.budget
        budget.top_up(request.tokens, request.cost_usd)
        self.records.steered = True
        topped = ToppedUp(
            tokens=request.tokens,
            cost_usd=request.cost_usd,
            note=request.note,
            max_tokens=budget.max_tokens,
            max_cost_usd=budget.max_cost_usd,
        )
        self.records.emit(topped, request.requested_by)
        self.records.show()
        return TopUpAccepted(
            max_tokens=budget.max_tokens,
            max_cost_usd=budget.max_cost_usd,
            tokens_used=budget.tokens(),
            cost_used_usd=budget.cost(),
            resumes=resumes and budget.problem() is None,
        )

    # --- the steering part of the build's state: changed here only ---------------------

    def _take_pending(self) -> Pending | None:
        """The held command, no longer held (the pipeline applies it now)."""
        pending, self.data.steering.pending = self.data.steering.pending, None
        return pending

    def _guide(self, text: str) -> None:
        """Guidance every later role is given."""
        self.data.steering.guidance.append(text)

    def _wait_at(self, gate: BuildState | None) -> None:
        """The build waits for approval at `gate` (None: it waits no more)."""
        self.data.steering.waiting_at_gate = gate
        self.data.steering.approved_gate = None

    def _approved(self, gate: BuildState) -> bool:
        return self.data.steering.approved_gate == gate

    def _reject(self, command: str, reason: str, by: str) -> None:
        self.records.emit(SignalRejected(command=command, reason=reason), by)
        workflow.logger.warning("build %s: %s rejected: %s", self.request.build_id, command, reason)


def refuse(problem: str | None) -> None:
    """An update's validator refuses with the rule's reason."""
    if problem:
        raise ApplicationError(problem, type=Failure.COMMAND_REJECTED, non_retryable=True)
