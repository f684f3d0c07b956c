"""BuildWorkflow: carries one feature request from DISCOVERY to COMPLETE.

Deterministic: no clock, environment, randomness or I/O here. Every decision comes from the
state table (core.states) and the pure rules (core.rules); all work is in activities.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, is_cancelled_exception

from workflows.messages import BuildMessages
from workflows.records import BUILD_STATE, PROJECT_ID

with workflow.unsafe.imports_passed_through():
    from activities.roles import RoleActivities
    from core import rules
    from core.models import (
        BuildEvent,
        BuildRequest,
        BuildResult,
        EventType,
        Handoff,
        RestoreTask,
        RoleTask,
    )
    from core.rules import BuildData
    from core.states import (
        TABLE,
        TERMINAL,
        BuildState,
        is_valid,
        order,
        role_of,
    )

S = BuildState

RESTORE_TIMEOUT = timedelta(seconds=120)
RESTORE_RETRY = RetryPolicy(maximum_attempts=5)

ROLE_ACTIVITY: dict[BuildState, Any] = {
    S.DISCOVERY: RoleActivities.q_assistant,
    S.PLANNING: RoleActivities.q_assistant,
    S.IMPLEMENTATION: RoleActivities.code_writer,
    S.TESTING: RoleActivities.test_auditor,
    S.VERIFICATION: RoleActivities.verification_overseer,
    S.DEPLOYMENT: RoleActivities.release_manager,
}


class BuildFailed(Exception):
    """Raised inside the workflow to end the build FAILED with a reason and its short kind."""

    def __init__(self, reason: str, kind: str) -> None:
        super().__init__(reason)
        self.kind = kind


@workflow.defn(name="BuildWorkflow")
class BuildWorkflow(BuildMessages):
    @workflow.init
    def __init__(self, request: BuildRequest) -> None:
        self.request = request
        self.data = BuildData(
            max_tokens=request.options.budget.max_tokens,
            max_cost_usd=request.options.budget.max_cost_usd,
        )
        self.events: list[BuildEvent] = []
        self.handoffs: list[Handoff] = []
        self.mirrored_seq = 0
        self.unmirrored_outputs: set[str] = set()

    @workflow.run
    async def run(self, request: BuildRequest) -> BuildResult:
        workflow.upsert_search_attributes(
            [BUILD_STATE.value_set(S.DISCOVERY.value), PROJECT_ID.value_set(request.project_id)]
        )
        self._emit(EventType.STATE_CHANGED, "system", to=S.DISCOVERY.value, edge="start")
        self._show()
        try:
            while self.data.state not in TERMINAL:
                if role_of(self.data.state) is not None:
                    await self._work()
                else:
                    await self._handoff()
        except BuildFailed as failure:
            self._fail(str(failure), failure.kind)
        except BaseException as err:
            # A cancel arrives as asyncio.CancelledError, or as an ActivityError when a role
            # was working; either way the build ends CANCELLED, not FAILED.
            if not is_cancelled_exception(err):
                raise
            self._move(S.CANCELLED, "person")
            self._emit(EventType.CANCELLED, "person", reason="workflow cancelled")
            await self._mirror()
            raise
        if self.data.state is S.FAILED:
            await self._mirror()
            raise ApplicationError(
                self.data.last_error or "build failed", type="BuildFailed", non_retryable=True
            )
        release = {k: v for k, v in self.data.release.items() if k != "previous_base"}
        self._emit(EventType.COMPLETED, "system", release=release)
        await self._mirror()
        return BuildResult(
            build_id=request.build_id,
            state=self.data.state,
            attempts=dict(self.data.attempts),
            loop_backs=self.data.loop_backs,
            release=release,
        )

    # --- phases -----------------------------------------------------------------------

    async def _work(self) -> None:
        if problem := rules.budget_problem(self.data):
            await self._pause_for_budget(problem)
        state = self.data.state
        role = role_of(state)
        assert role is not None
        attempt = self.data.attempts.get(state.value, 0) + 1
        self.data.attempts[state.value] = attempt
        task = RoleTask(
            build_id=self.request.build_id,
            project_id=self.request.project_id,
            role=role,
            state=state,
            attempt=attempt,
            requirements=self.request.requirements,
            context=rules.context_for(self.data, state),
            guidance=list(self.data.guidance),
            simulate=self.request.options.simulate,
            head=self.data.head,
            base=self.data.base,
        )
        policy = self.request.options.policy
        await self._mirror()
        self.data.phase_running = True
        self._show()
        try:
            result = await workflow.execute_activity_method(
                ROLE_ACTIVITY[state],
                task,
                start_to_close_timeout=timedelta(seconds=policy.start_to_close_seconds),
                retry_policy=RetryPolicy(
                    initial_interval=timedelta(seconds=policy.initial_interval_seconds),
                    maximum_interval=timedelta(seconds=policy.maximum_interval_seconds),
                    maximum_attempts=policy.max_attempts,
                ),
                summary=f"{state.value} attempt {attempt}",
            )
        except ActivityError as err:
            if is_cancelled_exception(err):
                raise
            cause = getattr(err.cause, "message", None) or str(err)
            kind = getattr(err.cause, "type", None) or type(err.cause).__name__
            if kind == "UnsafePath":  # the attempt failed; the Code Writer tries again
                self._loop_back(state, "unsafe file paths", {"error": cause}, cause)
                return
            raise BuildFailed(
                f"{role.value} failed in {state.value}: {cause}", f"{role.value} error: {kind}"
            ) from err
        finally:
            self.data.phase_running = False
        output = result.output.model_dump(mode="json")
        self.data.outputs[state.value] = output
        self.unmirrored_outputs.add(state.value)
        self._record_call(role.value, state, attempt, result.usage)
        if state is S.IMPLEMENTATION:
            self.data.head = output["commit"]
        elif state is S.DEPLOYMENT and output["released"]:
            self.data.release = {**output, "previous_base": self.data.base}
            self.data.base = output["commit"]
        if await self._apply_pending():
            return
        await self._decide(state, output)

    async def _decide(self, state: BuildState, output: dict[str, Any]) -> None:
        summary = output.get("summary", "")
        if state is S.TESTING and not output["passed"]:
            feedback = {"failures": output["failures"]}
            await self._failed(state, output, "tests failed", feedback, summary)
        elif state is S.VERIFICATION and not output["approved"]:
            feedback = {"reasons": output["reasons"]}
            await self._failed(state, output, "verification requested changes", feedback, summary)
        elif state is S.DEPLOYMENT and not output["released"]:
            self._loop_back(state, "release failed", {"release": output}, summary)
        else:
            next_state = TABLE[state].next
            assert next_state is not None
            self._move(next_state, role_of(state) or "system")

    async def _failed(
        self,
        state: BuildState,
        output: dict[str, Any],
        why: str,
        feedback: dict[str, Any],
        summary: str,
    ) -> None:
        """Loop back, unless this is the same failure as last time: then ask a person rather
        than spend the remaining retries on it."""
        signature = rules.failure_signature(state, output)
        repeated = self.data.signatures.get(state.value) == signature
        self.data.signatures[state.value] = signature
        if repeated and self.data.loop_backs < self.request.options.max_retries:
            await self._needs_attention(state, why, feedback, summary, signature)
        else:
            self._loop_back(state, why, feedback, summary)

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

    def _loop_back(
        self, state: BuildState, why: str, feedback: dict[str, Any], summary: str
    ) -> None:
        """Back to IMPLEMENTATION with feedback (IMPLEMENTATION itself runs again)."""
        limit = self.request.options.max_retries
        attempts = self.data.attempts[state.value]
        self.data.last_error = f"{why} at {state.value} attempt {attempts}: {summary}"
        if self.data.loop_backs >= limit:
            raise BuildFailed(
                f"retries exhausted: {why} after {self.data.loop_backs} loop-backs "
                f"(max_retries={limit}); last: {summary}",
                f"retries exhausted: {why}",
            )
        self.data.loop_backs += 1
        self.data.feedback = {"loop_back_from": state.value, **feedback}
        self._emit(
            EventType.LOOP_BACK,
            role_of(state) or "system",
            reason=why,
            loop_back=self.data.loop_backs,
            **feedback,
        )
        if state is not S.IMPLEMENTATION:
            self._move(rules.retry_target(state), role_of(state) or "system")

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

    async def _handoff(self) -> None:
        state = self.data.state
        from_role, to_role, next_state, ctx = rules.handoff_parts(
            self.data, state, self.request.build_id
        )
        seq = len(self.events) + 1
        handoff = Handoff(
            seq=seq,
            from_role=from_role,
            to_role=to_role,
            from_state=state,
            to_state=next_state,
            timestamp=workflow.now(),
            **ctx,
        )
        self.handoffs.append(handoff)
        self._emit(
            EventType.HANDOFF,
            from_role.value,
            from_role=from_role.value,
            to_role=to_role.value,
            to_state=next_state.value,
            instructions=ctx["instructions"],
        )
        if state in self.request.options.approval_gates:
            await self._wait_for_approval(state)
        if await self._apply_pending():
            return
        self._move(next_state, "system")

    async def _wait_for_approval(self, gate: BuildState) -> None:
        self.data.waiting_at_gate = gate
        self._emit(EventType.APPROVAL_REQUESTED, "system", gate=gate.value)
        self._show()

        def decided() -> bool:
            return self.data.approved_gate == gate or self.data.pending is not None

        # Mirror what happens while the build waits (e.g. rejected signals) as it happens.
        while True:
            await self._mirror()
            await workflow.wait_condition(lambda: decided() or self._unmirrored())
            if decided():
                break
        self.data.waiting_at_gate = None
        self.data.approved_gate = None

    # --- transitions and events ---------------------------------------------------------

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
        workflow.upsert_search_attributes([BUILD_STATE.value_set(target.value)])
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
