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

# Passed through: imported once per worker, not again for every build the sandbox starts. The
# workflow's own mixins too: they hold no state, and re-importing them cost a third of a
# build's worker time.
with workflow.unsafe.imports_passed_through():
    from activities.roles import RoleActivities
    from core import rules
    from core.models import (
        BuildEvent,
        BuildRequest,
        BuildResult,
        EventType,
        Handoff,
        RoleTask,
    )
    from core.rules import BuildData
    from core.states import (
        TABLE,
        TERMINAL,
        BuildState,
        Role,
        role_of,
    )
    from workflows import metrics
    from workflows.records import BUILD_ROLE, BUILD_STATE, PROJECT_ID
    from workflows.steering import BuildFailed, BuildSteering

S = BuildState

ROLE_ACTIVITY: dict[BuildState, Any] = {
    S.DISCOVERY: RoleActivities.q_assistant,
    S.PLANNING: RoleActivities.q_assistant,
    S.IMPLEMENTATION: RoleActivities.code_writer,
    S.TESTING: RoleActivities.test_auditor,
    S.VERIFICATION: RoleActivities.verification_overseer,
    S.DEPLOYMENT: RoleActivities.release_manager,
}


@workflow.defn(name="BuildWorkflow")
class BuildWorkflow(BuildSteering):
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
        self.pending_attributes = {}
        self.steered = False

    @workflow.run
    async def run(self, request: BuildRequest) -> BuildResult:
        self._upsert(
            [
                BUILD_STATE.value_set(S.DISCOVERY.value),
                BUILD_ROLE.value_set(Role.Q_ASSISTANT.value),
                PROJECT_ID.value_set(request.project_id),
            ]
        )
        self.entered_at = workflow.now()
        metrics.build_started()
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
        task.mirror = await self._before_call()
        self.data.phase_running = True
        self._show()
        try:
            result = await workflow.execute_activity_method(
                ROLE_ACTIVITY[state],
                task,
                start_to_close_timeout=timedelta(seconds=policy.start_to_close_seconds),
                # A worker that dies mid-call is noticed in seconds, not at start-to-close.
                heartbeat_timeout=timedelta(seconds=policy.heartbeat_seconds),
                retry_policy=RetryPolicy(
                    initial_interval=timedelta(seconds=policy.initial_interval_seconds),
                    maximum_interval=timedelta(seconds=policy.maximum_interval_seconds),
                    maximum_attempts=policy.max_attempts,
                ),
                summary=f"attempt {attempt} ({state.value})",  # the UI shows "<role> • " first
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
        self._confirm(task.mirror, result.mirrored_seq)
        output = result.output.model_dump(mode="json")
        self.data.outputs[state.value] = output
        self.unmirrored_outputs.add(state.value)
        self._record_call(role.value, attempt, result.usage)
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
        metrics.loop_back(state.value, why)
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
