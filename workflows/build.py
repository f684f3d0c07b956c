"""BuildWorkflow: carries one feature request from DISCOVERY to COMPLETE.

`run` walks the states of core/states.py's table: a working state calls its role (`_work`) and
the verdict on its output (core/rules.py) moves the build on or back; a handoff state records
the handoff and may wait at a gate (`_handoff`). Commands the handlers (workflows/messages.py)
hold apply at the next boundary (`_apply_pending`). Activities are called by the names of their
contracts (core/contracts.py); the records are a composed object (workflows/records.py).
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError, is_cancelled_exception

# Passed through: imported once per worker, not again for every build the sandbox starts.
with workflow.unsafe.imports_passed_through():
    from core import rules
    from core.budget import BudgetLedger
    from core.build_data import BuildData, Command
    from core.build_io import BuildRequest, BuildResult
    from core.contracts import REFUSED_ATTEMPTS, ROLE_CALLS, Failure
    from core.events import (
        Aborted,
        ApprovalRequested,
        BranchMoved,
        BudgetExhausted,
        Cancelled,
        Completed,
        Failed,
        NeedsAttention,
        RetryRequested,
        RolledBack,
    )
    from core.feedback import Feedback
    from core.mirror import RoleCall
    from core.outcomes import Actor, Ending, Setback
    from core.releases import Released
    from core.role_io import RoleResult, RoleTask
    from core.rules import Verdict
    from core.states import TABLE, TERMINAL, BuildState, is_valid, order, role_of
    from workflows.calls import execute
    from workflows.code import BuildCode
    from workflows.deadline import Deadline
    from workflows.errors import BuildFailed, RevertConflicted, cause_of, kind_of, spend_of
    from workflows.messages import BuildMessages
    from workflows.records import BuildRecords
    from workflows.stream import ModelOutput
    from workflows.turn import BuildTurn

S = BuildState
# Builds start from their project's repository (the open_workspace activity first).
PROJECT_REPOSITORIES_PATCH = "project-repositories"
# A build delivers when its project's release queue gives it the turn (workflows/turn.py).
RELEASE_QUEUE_PATCH = "release-queue"
# A revert of the build's release that conflicts waits for a person, not FAILED.
REVERT_ATTENTION_PATCH = "revert-conflict-attention"
# An approval gate waits APPROVAL_WAIT_SECONDS, then the build ends FAILED (no silent end).
APPROVAL_TIMER_PATCH = "approval-timer"


@workflow.defn(name="BuildWorkflow")
class BuildWorkflow(BuildMessages):
    @workflow.init
    def __init__(self, request: BuildRequest) -> None:
        self.request = request
        limits = request.options.budget
        self.data = BuildData(budget=BudgetLedger(limits.max_tokens, limits.max_cost_usd))
        self.records = BuildRecords(request, self.data)
        self.stream = ModelOutput(self.records.model_progress)
        self.code = BuildCode(request, self.data, self.records)
        self.turn = BuildTurn(request, self.data, self.records)

    @workflow.run
    async def run(self, request: BuildRequest) -> BuildResult:
        self.records.started()
        deadline = Deadline()
        try:
            async with deadline:
                await self._walk()
        except BuildFailed as failure:
            self._fail(str(failure), failure.ending, failure.detail)
        except BaseException as err:
            # A cancel arrives as asyncio.CancelledError, or as an ActivityError when a role
            # was working; the build's own deadline cancels the same way.
            if deadline.expired():
                self._fail(deadline.reason(self.data.state.value), Ending.EXECUTION_TIMEOUT)
            elif not is_cancelled_exception(err):
                raise
            else:
                await self._cancelled()
                raise
        await self.turn.leave()
        await self.stream.close()
        if self.data.state is S.FAILED:
            await self.records.mirror()
            raise ApplicationError(
                self.data.last_error or "build failed",
                self.records.result(),  # how it ended, for whoever started it
                type=Failure.BUILD_FAILED,
                non_retryable=True,
            )
        self.records.emit(Completed(release=self.data.code.release), Actor.SYSTEM)
        await self.records.mirror()
        return self.records.result()

    async def _walk(self) -> None:
        """The states of the table, from the first to a terminal one."""
        if self._opens_repository():
            await self.code.open()
        while self.data.state not in TERMINAL:
            if role_of(self.data.state) is not None:
                await self._work()
            else:
                await self._handoff()
        await self.code.accept()  # an evaluation case, scored on what it delivered

    async def _cancelled(self) -> None:
        delivered = self.data.state is S.COMPLETE  # cancelled while scored: it stays COMPLETE
        if not delivered:
            self._move(S.CANCELLED, Actor.PERSON)
        self.stream.detach_pollers()
        if not delivered:
            self.records.emit(Cancelled(reason="workflow cancelled"), Actor.PERSON)
        await self.turn.leave()
        await self.records.mirror()

    def _opens_repository(self) -> bool:
        """Whether the build works on its project's repository: every build that recorded the
        patch (bench/variants.py's says no, to measure what the repository costs the engine)."""
        return workflow.patched(PROJECT_REPOSITORIES_PATCH)

    # --- working states -----------------------------------------------------------------

    async def _work(self) -> None:
        """One role call in the current working state, then its verdict."""
        if problem := self.data.budget.problem():
            await self._pause_for_budget(problem)
        state = self.data.state
        # `patched` records its marker where it is first called: it is asked at DEPLOYMENT only,
        # where recorded histories have the marker.
        # A re-run or an evaluation delivers to its own branch: it takes no turn in the queue.
        project = self.data.code.project and not self.request.options.fixed_start()
        if state is S.DEPLOYMENT and project and workflow.patched(RELEASE_QUEUE_PATCH):
            await self.turn.take()
            if await self._apply_pending():
                return
        attempt = self.data.attempts[state] = self.data.attempts.get(state, 0) + 1
        task = rules.role_task(self.request, self.data, state, attempt)
        call = RoleCall.of(task, await self.records.before_call())
        self.data.phase_running = True
        self.records.show()
        try:
            result = await execute(
                ROLE_CALLS[state],
                call,
                self.request.options.policy.call_options(),
                summary=f"attempt {attempt} ({state.value})",  # the UI shows "<role> • "
            )
        except ActivityError as err:
            if is_cancelled_exception(err):
                raise
            await self._call_failed(task, err)
            return
        finally:
            self.data.phase_running = False
        self.records.confirm(call.mirror, result.mirrored_seq)
        self._keep(state, result)
        if isinstance(result.output, Released):
            await self.turn.leave()
        self.records.role_call(task.role, task.attempt, result.usage, result.output)
        if await self._apply_pending():
            return
        verdict = rules.verdict(state, result.output)
        if verdict.next_state is not None:
            if order(verdict.next_state) < order(state):  # a moved project: test again
                self._reopen(verdict.next_state)
                moved = BranchMoved(branch_head=self.data.code.base, merged=self.data.code.head)
                self.records.emit(moved, task.role)
            self._move(verdict.next_state, task.role)
        elif verdict.signature is not None:
            await self._failed(state, verdict)
        else:
            self._loop_back(state, verdict)

    async def _call_failed(self, task: RoleTask, err: ActivityError) -> None:
        """A role call that failed: a refused Code Writer attempt loops back; a re-run's call
        the original never made asks a person; anything else fails the build."""
        state, role = task.state, task.role
        cause, kind = cause_of(err), kind_of(err)
        if (spent := spend_of(err)) is not None:  # what its model call spent before failing
            self.records.role_call(role, task.attempt, spent, failed=True)
        if kind in REFUSED_ATTEMPTS:  # the attempt failed; the Code Writer tries again
            why = Setback.UNSAFE_PATHS if kind == Failure.UNSAFE_PATH else Setback.EDITS_REFUSED
            self._loop_back(state, Verdict(None, why, Feedback(error=cause), cause))
        elif kind == Failure.RECORDING_DIVERGED:
            await self._ask_a_person(cause, NeedsAttention(reason=kind, ending=Ending.UNANSWERED))
        else:
            failure = f"{role} failed in {state.value}: {cause}"
            raise BuildFailed(failure, Ending.ROLE_ERROR, f"{role}: {kind}") from err

    def _keep(self, state: BuildState, result: RoleResult) -> None:
        """A phase's output: handed to later roles; the code it made; the release it made."""
        output = result.output
        self.data.outputs[state] = output
        self.records.output_changed(state)
        self.code.kept(output)

    async def _failed(self, state: BuildState, verdict: Verdict) -> None:
        """Loop back, unless this is the same failure as last time, or one that is not the
        code's (a person's): then ask a person rather than spend the remaining retries on it."""
        assert verdict.signature is not None
        repeated = self.data.signatures.get(state) == verdict.signature
        self.data.signatures[state] = verdict.signature
        if verdict.person or (repeated and self.data.loop_backs < self.request.options.max_retries):
            await self._needs_attention(state, verdict)
        else:
            self._loop_back(state, verdict)

    def _loop_back(self, state: BuildState, verdict: Verdict) -> None:
        """Back to IMPLEMENTATION with feedback (IMPLEMENTATION itself runs again)."""
        why, limit = verdict.why, self.request.options.max_retries
        attempts = self.data.attempts[state]
        self.data.last_error = f"{why} at {state.value} attempt {attempts}: {verdict.summary}"
        if self.data.loop_backs >= limit:
            raise BuildFailed(
                f"retries exhausted: {why} after {self.data.loop_backs} loop-backs "
                f"(max_retries={limit}); last: {verdict.summary}",
                Ending.RETRIES_EXHAUSTED,
                why,
            )
        self.data.loop_backs += 1
        self.data.feedback = verdict.feedback.model_copy(update={"loop_back_from": state})
        self.records.looped_back(state, verdict)
        if state is not S.IMPLEMENTATION:
            self._move(rules.retry_target(state), role_of(state) or Actor.SYSTEM)

    # --- handoff states -----------------------------------------------------------------

    async def _handoff(self) -> None:
        state = self.data.state
        from_role, to_role, next_state, context = rules.handoff_parts(
            self.data, state, self.request.build_id
        )
        self.records.handoff(from_role, to_role, next_state, context)
        if state in self.request.options.approval_gates:
            await self._wait_for_approval(state)
        if await self._apply_pending():
            return
        self._move(next_state, Actor.SYSTEM)

    async def _wait_for_approval(self, gate: BuildState) -> None:
        self._wait_at(gate)
        self.records.emit(ApprovalRequested(gate=gate), Actor.SYSTEM)
        self.records.show()

        def decided() -> bool:
            return self._approved(gate) or self.data.steering.pending is not None

        wait = self.request.options.approval_wait_seconds
        timed = workflow.patched(APPROVAL_TIMER_PATCH)
        deadline = workflow.now() + timedelta(seconds=wait)
        # Mirror what happens while the build waits (e.g. rejected signals) as it happens.
        while True:
            await self.records.mirror()
            left = (deadline - workflow.now()) if timed else None
            try:
                await workflow.wait_condition(
                    lambda: decided() or self.records.unmirrored(), timeout=left
                )
            except TimeoutError as err:
                raise BuildFailed(
                    f"nobody approved {gate.value} within {wait:g}s", Ending.APPROVAL_TIMEOUT
                ) from err
            if decided():
                break
        self._wait_at(None)

    # --- transitions --------------------------------------------------------------------

    def _move(self, target: BuildState, by: str) -> None:
        source = self.data.state
        if not is_valid(source, target):
            raise ApplicationError(
                f"invalid transition {source.value} -> {target.value}",
                type=Failure.INVALID_TRANSITION,
            )
        finished_phase = role_of(source) is not None and TABLE[source].next == target
        if finished_phase and source not in self.data.completed_phases:
            self.data.completed_phases.append(source)
        self.data.state = target
        self.code.entered(target)
        self.records.moved(source, target, by)

    def _reopen(self, target: BuildState) -> None:
        """Phases at or after `target` are no longer complete once the build goes back to it."""
        self.data.completed_phases = rules.reopened(self.data.completed_phases, target)

    def _fail(self, reason: str, ending: Ending, detail: str | None = None) -> None:
        self.data.last_error = reason
        self.data.failed_state = self.data.state
        self.data.ending, self.data.ending_detail = ending, detail
        self._move(S.FAILED, Actor.SYSTEM)
        self.records.emit(Failed(reason=reason, ending=ending, detail=detail), Actor.SYSTEM)

    async def _apply_pending(self) -> bool:
        """Apply a held retry, rollback or abort; whether there was one."""
        pending = self._take_pending()
        if pending is None:
            return False
        await self.turn.leave()
        by = pending.requested_by
        if pending.command is Command.ABORT:
            self.records.emit(Aborted(reason=pending.reason), by)
            raise BuildFailed(f"aborted by {by}: {pending.reason}", Ending.ABORTED)
        asked = RetryRequested if pending.command is Command.RETRY else RolledBack
        self.records.emit(asked(target=pending.target, reason=pending.reason), by)
        self._guide(pending.reason)
        self.data.feedback = Feedback(requested_by=by, reason=pending.reason)
        self._reopen(pending.target)
        release = self.data.code.release
        if pending.command is Command.ROLLBACK or release is not None:
            try:
                await self.code.restore(pending.target, code=pending.command is Command.ROLLBACK)
            except RevertConflicted as conflict:
                if not workflow.patched(REVERT_ATTENTION_PATCH):
                    raise
                await self._ask_a_person(
                    f"{conflict}; revert it by hand, then abort, or roll back to try again",
                    NeedsAttention(
                        reason=conflict.ending.value,
                        ending=Ending.UNANSWERED,
                        paused_in=self.data.state,
                        release=release.version if release else None,
                    ),
                )
                return True
        self._move(pending.target, by)
        return True

    # --- pauses: the budget, and a failure that repeats ----------------------------------

    async def _pause_for_budget(self, problem: str) -> None:
        """Stop spending: wait in BUDGET_EXHAUSTED for a top-up, then go on where it paused."""
        state = self.data.state
        await self.turn.leave()
        self.data.paused_from = state
        self._move(S.BUDGET_EXHAUSTED, Actor.SYSTEM)
        self.records.emit(BudgetExhausted(reason=problem, paused_in=state), Actor.SYSTEM)
        await self.records.mirror()
        wait = self.request.options.budget.wait_seconds
        try:
            await workflow.wait_condition(
                lambda: self.data.budget.problem() is None or rules.aborting(self.data),
                timeout=timedelta(seconds=wait),
            )
        except TimeoutError as err:
            raise BuildFailed(
                f"budget exhausted ({problem}) and not topped up within {wait:g}s",
                Ending.BUDGET_EXHAUSTED,
            ) from err
        if rules.aborting(self.data):
            await self._apply_pending()
        self.data.paused_from = None
        self._move(state, Actor.SYSTEM)

    async def _needs_attention(self, state: BuildState, verdict: Verdict) -> None:
        attention, asked = rules.attention(verdict, state, self.request.build_id)
        self.data.feedback = verdict.feedback.model_copy(update={"loop_back_from": state})
        await self._ask_a_person(attention, asked)

    async def _ask_a_person(self, attention: str, asked: NeedsAttention) -> None:
        """Wait in NEEDS_ATTENTION for a retry, rollback or abort (FAILED as `asked.ending`
        when nobody answers in time), then apply it."""
        await self.turn.leave()
        self.data.attention = self.data.last_error = attention
        self.data.paused_from = self.data.state
        self._move(S.NEEDS_ATTENTION, Actor.SYSTEM)
        self.records.emit(asked, Actor.SYSTEM)
        await self.records.mirror()
        wait = self.request.options.attention_wait_seconds
        try:
            await workflow.wait_condition(
                lambda: self.data.steering.pending is not None, timeout=timedelta(seconds=wait)
            )
        except TimeoutError as err:
            raise BuildFailed(
                f"{attention}; nobody answered within {wait:g}s", asked.ending, asked.reason
            ) from err
        self.data.paused_from = None
        self.data.attention = None
        await self._apply_pending()
