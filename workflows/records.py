"""A build's records: its numbered events and handoffs, the usage of its role calls, the Web
UI's view of it (search attributes, current details) and the mirror that copies them to SQL.

One object per build, composed into BuildWorkflow; deterministic like the rest of it.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy, SearchAttributeUpdate
from temporalio.exceptions import (
    ActivityError,
    ApplicationError,
    FailureError,
    is_cancelled_exception,
)

with workflow.unsafe.imports_passed_through():
    from core import views
    from core.attributes import (
        BUILD_ROLE,
        BUILD_STATE,
        COST,
        PROJECT_ID,
        TEST_ATTEMPTS,
        TOKENS,
        VERIFICATION_ATTEMPTS,
    )
    from core.build_data import BuildData
    from core.build_io import BuildRequest, BuildResult, BuildStatus, CallOptions
    from core.contracts import MIRROR_BUILD, Failure
    from core.events import (
        EventData,
        HandedOff,
        LoopedBack,
        MirrorRefused,
        RoleCalled,
        StateChanged,
    )
    from core.feedback import ModelUsage
    from core.mirror import BuildEvent, Handoff, HandoffContext, MirrorBatch
    from core.outcomes import Actor
    from core.reports import TestReport
    from core.role_io import RoleOutput
    from core.rules import Verdict
    from core.states import TERMINAL, BuildState, Role, role_of
    from workflows import metrics
    from workflows.calls import execute_local

S = BuildState

# Search attributes are upserted once per workflow task, the changes of a task coalesced: each
# upsert is a visibility write on the server. A deprecated patch: no run takes the old path
# (an upsert per change), and kept histories carry its marker.
COALESCED_ATTRIBUTES_PATCH = "coalesced-search-attributes"

# The mirror's batch rides with the next role call, which writes it before its role works: one
# workflow activation and one local activity less per role call. The workflow writes through a
# local activity itself when it waits or ends, and after a person's command. A deprecated
# patch: no run takes the old path (a local activity before every call).
CARRIED_MIRROR_PATCH = "mirror-carried-by-role-calls"

# Before each role call the workflow writes what the mirror lacks through a local activity of
# its own, tried once: no role call carries the mirror or says what it wrote, and a mirror that
# cannot be written holds no build back (the next write sends the batch again; a wait and the
# end retry until it is written). Asked once, as the build starts: a build that started before
# it keeps carrying its batches with its role calls (CARRIED_MIRROR_PATCH's path) to its end.
MIRROR_FED_PATCH = "mirror-fed-before-role-calls"

# The workflow's own mirror writes are local activities (no round trip to the server), retried
# until the database answers: a build waits rather than lose a record.
MIRROR = CallOptions(
    timedelta(seconds=10),
    RetryPolicy(
        initial_interval=timedelta(milliseconds=200), maximum_interval=timedelta(seconds=10)
    ),
)
# Within the workflow task's own time (its heartbeat comes at 8 s): a write takes milliseconds.
MIRROR_ONCE = CallOptions(timedelta(seconds=5), RetryPolicy(maximum_attempts=1))


class BuildRecords:
    """Events, handoffs, usage, the Web UI's view and the mirror of one build."""

    def __init__(self, request: BuildRequest, data: BuildData) -> None:
        self.request = request
        self.data = data  # the workflow's state, read to describe the build
        self.events: list[BuildEvent] = []
        self.handoffs: list[Handoff] = []
        self.mirrored_seq = 0  # the last event the mirror confirmed
        self.unmirrored_outputs: set[BuildState] = set()  # phases whose output the mirror lacks
        self.pending_attributes: dict[str, SearchAttributeUpdate[Any]] = {}
        self.steered = False  # a command was accepted since the workflow last wrote the mirror
        self.fed = False  # the mirror is written before role calls, not carried by them
        self.entered_at = datetime.min  # when the build entered its current state
        self.model_now: str | None = None  # the progress of the model call in flight

    # --- what happened ----------------------------------------------------------------

    def started(self) -> None:
        self.fed = workflow.patched(MIRROR_FED_PATCH)
        self.upsert(
            [
                BUILD_STATE.value_set(S.DISCOVERY.value),
                BUILD_ROLE.value_set(Role.Q_ASSISTANT.value),
                PROJECT_ID.value_set(self.request.project_id),
            ]
        )
        self.entered_at = workflow.now()
        metrics.build_started()
        self.emit(StateChanged(to=S.DISCOVERY, edge="start"), Actor.SYSTEM)
        self.show()

    def emit(self, data: EventData, by: str) -> None:
        """An event of the build in its current state, made to happen by `by`: a role, an
        `Actor`, or the person who asked."""
        self.events.append(
            BuildEvent(
                seq=len(self.events) + 1,
                state=self.data.state,
                triggered_by=str(by),
                data=data,
                timestamp=workflow.now(),
            )
        )

    def moved(self, source: BuildState, target: BuildState, by: str) -> None:
        """A transition the workflow made: its event, search attributes, metrics and log."""
        self.emit(StateChanged(from_=source, to=target, commit=self.data.code.head), by)
        # New keys may join this upsert freely; a new upsert (a new command) needs a patch.
        role = role_of(target)
        self.upsert(
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
        self.show()

    def handoff(
        self, from_role: Role, to_role: Role, to_state: BuildState, context: HandoffContext
    ) -> None:
        """A handoff at the current state, with the context handed to the next role."""
        self.handoffs.append(
            Handoff(
                seq=len(self.events) + 1,
                from_role=from_role,
                to_role=to_role,
                from_state=self.data.state,
                to_state=to_state,
                timestamp=workflow.now(),
                **dict(context),
            )
        )
        instructions = context.instructions
        handed = HandedOff(
            from_role=from_role, to_role=to_role, to_state=to_state, instructions=instructions
        )
        self.emit(handed, from_role)

    def role_call(
        self,
        role: str,
        attempt: int,
        usage: ModelUsage,
        output: RoleOutput | None = None,
        failed: bool = False,
    ) -> None:
        """A role call's usage (and of a test run: its sandbox, its environment and its
        counts): its event, the build's totals, metrics, search attributes. A `failed` call's
        answer was not usable; its spend counts all the same."""
        called = RoleCalled(attempt=attempt, failed=failed, **usage.model_dump())
        if isinstance(output, TestReport):
            called.sandbox, called.environment = output.sandbox or None, output.setup or None
            called.tests = None if output.setup_failed else output.counts
        self.emit(called, role)
        self.data.budget.add(role, usage)
        metrics.model_call(
            role, usage.model, usage.prompt_tokens, usage.completion_tokens, usage.cost_usd
        )
        attempts = self.data.attempts
        self.upsert(
            [
                TOKENS.value_set(self.data.budget.tokens()),
                COST.value_set(self.data.budget.cost()),
                TEST_ATTEMPTS.value_set(attempts.get(S.TESTING, 0)),
                VERIFICATION_ATTEMPTS.value_set(attempts.get(S.VERIFICATION, 0)),
            ]
        )

    def looped_back(self, state: BuildState, verdict: Verdict) -> None:
        assert verdict.why is not None  # a verdict that sends the build back says why
        metrics.loop_back(state.value, verdict.why)
        # The feedback the Code Writer is given: the verdict's, and the state it came from.
        looped = LoopedBack(
            reason=verdict.why, loop_back=self.data.loop_backs, feedback=self.data.feedback
        )
        self.emit(looped, role_of(state) or Actor.SYSTEM)

    def output_changed(self, state: BuildState) -> None:
        self.unmirrored_outputs.add(state)

    # --- the Web UI's view --------------------------------------------------------------

    def upsert(self, updates: list[SearchAttributeUpdate[Any]]) -> None:
        """Search attribute changes: held until the workflow next waits (`flush_attributes`)."""
        workflow.deprecate_patch(COALESCED_ATTRIBUTES_PATCH)
        for update in updates:
            self.pending_attributes[update.key.name] = update

    def flush_attributes(self) -> None:
        """One upsert with every change since the last one; called before each wait."""
        if self.pending_attributes:
            workflow.upsert_search_attributes(list(self.pending_attributes.values()))
            self.pending_attributes.clear()

    def show(self) -> None:
        """The Web UI's current details: the status query's answer, as Markdown."""
        workflow.set_current_details(
            views.current_details(self.status(), workflow.info().namespace)
        )

    def status(self) -> BuildStatus:
        return views.status(
            self.request, self.data, events=len(self.events), model_now=self.model_now
        )

    def result(self) -> BuildResult:
        took = workflow.now() - workflow.info().start_time
        return views.result(self.request, self.data, wall_seconds=took.total_seconds())

    def model_progress(self, progress: str | None) -> None:
        """The model call in flight, as its output stream last told (None: done)."""
        if progress != self.model_now:
            self.model_now = progress
            # Live only: a replay (a query on an evicted build) passes hundreds of stream
            # signals, and drawing the details for each held a starved worker past the SDK's
            # 2 s deadlock limit. Current details are no command, so replay needs none of them.
            if not workflow.unsafe.is_replaying():
                self.show()

    # --- the mirror ---------------------------------------------------------------------

    def unmirrored(self) -> bool:
        return len(self.events) > self.mirrored_seq

    def batch(self) -> MirrorBatch | None:
        """The events and handoffs the mirror has not confirmed, and the build's snapshot."""
        if not self.unmirrored():
            return None
        last_seq = len(self.events)
        info = workflow.info()
        snapshot = views.snapshot(
            self.request,
            self.data,
            workflow_id=info.workflow_id,
            started=info.start_time,
            now=workflow.now(),
            last_seq=last_seq,
            outputs=self.unmirrored_outputs,
            run_id=info.run_id,
        )
        return MirrorBatch(
            snapshot=snapshot,
            events=self.events[self.mirrored_seq : last_seq],
            handoffs=[h for h in self.handoffs if self.mirrored_seq < h.seq <= last_seq],
        )

    def confirm(self, batch: MirrorBatch | None, written_seq: int) -> None:
        """The mirror holds `batch` if it was written up to its last event."""
        if batch is None or written_seq != batch.snapshot.last_seq:
            return
        self.mirrored_seq = max(self.mirrored_seq, written_seq)
        self.unmirrored_outputs -= set(batch.snapshot.outputs)

    async def mirror(self, once: bool = False) -> None:
        """Write what the mirror has not confirmed, before the workflow waits or ends (retried
        until the database answers), or `once` before a role call (a failure is left for the
        next write). A batch the database refuses for its data is not sent again (it would be
        refused again, and the build would wait without end): the refusal is an event of its
        own, written with the build's row in one more batch, and the build goes on."""
        self.flush_attributes()  # every wait of the workflow passes through here first
        for _ in range(2):  # the batch, and after a refusal the batch that records it
            batch = self.batch()
            if batch is None:
                return
            last_seq = batch.snapshot.last_seq
            try:
                refused = await self._write(batch, MIRROR_ONCE if once else MIRROR)
            except FailureError as err:
                # Any way the one try ended (failed, timed out), as the SDK hands it over: live
                # and in replay alike; a cancel of the build is the build's to handle.
                if not once or is_cancelled_exception(err):
                    raise
                workflow.logger.warning(
                    "mirror not written up to event %d; the next write sends it again: %s",
                    *(last_seq, err.cause if isinstance(err, ActivityError) else err),
                )
                return
            self.confirm(batch, last_seq)
            if refused is None:
                return
            workflow.logger.error("mirror refused events up to %d: %s", last_seq, refused)
            self.emit(MirrorRefused(up_to=last_seq, reason=refused), Actor.SYSTEM)

    async def _write(self, batch: MirrorBatch, options: CallOptions) -> str | None:
        """Write `batch` through the local activity; the database's reason if it refused it."""
        try:
            await execute_local(
                MIRROR_BUILD,
                batch,
                options,
                summary=f"mirror up to event {batch.snapshot.last_seq}",
            )
        except (ActivityError, ApplicationError) as err:
            # A local activity's failure arrives as its ApplicationError itself.
            cause = err.cause if isinstance(err, ActivityError) else err
            if isinstance(cause, ApplicationError) and cause.type == Failure.MIRROR_REFUSED:
                return cause.message
            raise
        return None

    async def before_call(self) -> MirrorBatch | None:
        """Before a role call: the workflow writes the mirror itself, and the call carries
        nothing (None). A build that started carrying batches: the batch its call is to carry
        and write, or None once the workflow has written it itself, which it does after a
        person's command, so the command's answer leaves only once the mirror shows its effect
        (a local activity holds the workflow task) and a status read right after it is
        current."""
        if self.fed:
            await self.mirror(once=True)
            return None
        workflow.deprecate_patch(CARRIED_MIRROR_PATCH)
        if self.steered:
            self.steered = False
            await self.mirror()
            return None
        self.flush_attributes()
        return self.batch()
