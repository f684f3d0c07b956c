"""A build's records: its numbered events, the usage of its role calls, the Web UI's view of
it (search attributes, current details), and the mirror that copies them to SQL.

A mixin of BuildWorkflow (through BuildMessages); deterministic like the rest of it.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy, SearchAttributeKey, SearchAttributeUpdate

from workflows import metrics

with workflow.unsafe.imports_passed_through():
    from activities.mirror import MirrorActivities
    from core import rules
    from core.models import (
        BUILD_ROLE_ATTRIBUTE,
        BUILD_STATE_ATTRIBUTE,
        COST_ATTRIBUTE,
        PROJECT_ID_ATTRIBUTE,
        TEST_ATTEMPTS_ATTRIBUTE,
        TOKENS_ATTRIBUTE,
        VERIFICATION_ATTEMPTS_ATTRIBUTE,
        BuildEvent,
        BuildRequest,
        EventType,
        Handoff,
        MirrorBatch,
        ModelUsage,
    )
    from core.rules import BuildData
    from core.states import BuildState

S = BuildState
BUILD_STATE = SearchAttributeKey.for_keyword(BUILD_STATE_ATTRIBUTE)
BUILD_ROLE = SearchAttributeKey.for_keyword(BUILD_ROLE_ATTRIBUTE)
PROJECT_ID = SearchAttributeKey.for_keyword(PROJECT_ID_ATTRIBUTE)
TOKENS = SearchAttributeKey.for_int(TOKENS_ATTRIBUTE)
COST = SearchAttributeKey.for_float(COST_ATTRIBUTE)
TEST_ATTEMPTS = SearchAttributeKey.for_int(TEST_ATTEMPTS_ATTRIBUTE)
VERIFICATION_ATTEMPTS = SearchAttributeKey.for_int(VERIFICATION_ATTEMPTS_ATTRIBUTE)

# Builds started after this change upsert their search attributes once per workflow task (the
# changes of a task coalesced), not once per change: 17 upserts in a happy build became 8, and
# each is a visibility write on the server. Builds started before it keep their old commands.
COALESCED_ATTRIBUTES_PATCH = "coalesced-search-attributes"

# Builds started after this change hand the mirror's batch to the next role call, which writes it
# before its role works: one workflow activation and one local activity less per role call. The
# workflow still writes through a local activity itself when it waits or ends.
CARRIED_MIRROR_PATCH = "mirror-carried-by-role-calls"

# The workflow's own mirror writes (when it waits or ends) are local activities: no extra round
# trip to the server. They retry until the database answers; a build waits rather than lose a
# record.
MIRROR_TIMEOUT = timedelta(seconds=10)
MIRROR_RETRY = RetryPolicy(
    initial_interval=timedelta(milliseconds=200), maximum_interval=timedelta(seconds=10)
)


class BuildRecords:
    """Events, usage, Web UI view and mirror of a build; the state lives on the workflow."""

    request: BuildRequest
    data: BuildData
    events: list[BuildEvent]
    handoffs: list[Handoff]
    mirrored_seq: int
    unmirrored_outputs: set[str]
    entered_at: datetime  # when the build entered its current state
    pending_attributes: dict[str, SearchAttributeUpdate[Any]]
    steered: bool  # a command was accepted since the mirror was last written by the workflow

    def _upsert(self, updates: list[SearchAttributeUpdate[Any]]) -> None:
        """Search attribute changes: held until the workflow next waits (`_flush_attributes`)."""
        if not workflow.patched(COALESCED_ATTRIBUTES_PATCH):
            workflow.upsert_search_attributes(updates)
            return
        for update in updates:
            self.pending_attributes[update.key.name] = update

    def _flush_attributes(self) -> None:
        """One upsert with every change since the last one; called before each wait."""
        if self.pending_attributes:
            workflow.upsert_search_attributes(list(self.pending_attributes.values()))
            self.pending_attributes.clear()

    def _emit(self, event_type: EventType, by: str, **data: Any) -> None:
        self.events.append(
            BuildEvent(
                seq=len(self.events) + 1,
                event_type=event_type,
                state=self.data.state,
                triggered_by=by,
                data=data,
                timestamp=workflow.now(),
            )
        )

    def _record_call(self, role: str, attempt: int, usage: ModelUsage) -> None:
        self._emit(EventType.ROLE_CALL, role, attempt=attempt, **usage.model_dump(mode="json"))
        rules.add_usage(self.data, role, usage)
        metrics.model_call(
            role, usage.model, usage.prompt_tokens, usage.completion_tokens, usage.cost_usd
        )
        attempts = self.data.attempts
        self._upsert(
            [
                TOKENS.value_set(rules.tokens_of(self.data)),
                COST.value_set(rules.cost_of(self.data)),
                TEST_ATTEMPTS.value_set(attempts.get(S.TESTING.value, 0)),
                VERIFICATION_ATTEMPTS.value_set(attempts.get(S.VERIFICATION.value, 0)),
            ]
        )

    def _unmirrored(self) -> bool:
        return len(self.events) > self.mirrored_seq

    def _batch(self) -> MirrorBatch | None:
        """The events and handoffs the mirror has not confirmed, and the build's snapshot."""
        if not self._unmirrored():
            return None
        last_seq = len(self.events)
        info = workflow.info()
        snapshot = rules.snapshot(
            self.request,
            self.data,
            workflow_id=info.workflow_id,
            started=info.start_time,
            now=workflow.now(),
            last_seq=last_seq,
            outputs=self.unmirrored_outputs,
        )
        return MirrorBatch(
            snapshot=snapshot,
            events=self.events[self.mirrored_seq : last_seq],
            handoffs=[h for h in self.handoffs if self.mirrored_seq < h.seq <= last_seq],
        )

    def _confirm(self, batch: MirrorBatch | None, written_seq: int) -> None:
        """The mirror holds `batch` if it was written up to its last event."""
        if batch is None or written_seq != batch.snapshot.last_seq:
            return
        self.mirrored_seq = max(self.mirrored_seq, written_seq)
        self.unmirrored_outputs -= set(batch.snapshot.outputs)

    async def _mirror(self) -> None:
        """Write what the mirror has not confirmed, before the workflow waits or ends."""
        self._flush_attributes()  # every wait of the workflow passes through here first
        batch = self._batch()
        if batch is None:
            return
        last_seq = batch.snapshot.last_seq
        await workflow.execute_local_activity_method(
            MirrorActivities.mirror_build,
            batch,
            start_to_close_timeout=MIRROR_TIMEOUT,
            retry_policy=MIRROR_RETRY,
            summary=f"mirror up to event {last_seq}",
        )
        self._confirm(batch, last_seq)

    async def _before_call(self) -> MirrorBatch | None:
        """Before a role call: the batch the call is to carry and write, or None once the
        workflow has written it itself. It does so for builds started before this change, and
        after a person's command: the command's answer then leaves only once the mirror shows
        its effect (a local activity holds the workflow task), so a status read right after
        it is current."""
        if not workflow.patched(CARRIED_MIRROR_PATCH) or self.steered:
            self.steered = False
            await self._mirror()
            return None
        self._flush_attributes()
        return self._batch()

    def _show(self) -> None:
        status = rules.status(self.request, self.data, events=len(self.events))
        workflow.set_current_details(rules.current_details(status))
