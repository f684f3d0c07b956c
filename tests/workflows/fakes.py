"""Every activity the build's workflow calls, faked by its contract's name (core/contracts.py):
answers a test scripts per state and attempt, the rest a good default. No git, no sandbox, no
model and no database: what the workflow decides is all that is tested here."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from temporalio import activity
from temporalio.exceptions import ApplicationError

from core.contracts import (
    JOIN_RELEASE_QUEUE,
    MIRROR_BUILD,
    OPEN_WORKSPACE,
    RESTORE_WORKSPACE,
    ROLE_CALLS,
    RUN_ACCEPTANCE,
    Contract,
)
from core.eval_build import Acceptance
from core.feedback import ModelUsage
from core.mirror import BuildEvent, MirrorBatch, MirrorReceipt, RoleCall
from core.projects import ProjectConfig, QueueJoin, QueuePlace
from core.releases import Released, RestoreResult, RestoreTask
from core.reports import TestCounts, TestFailure, TestReport
from core.role_io import (
    AcceptanceTask,
    DiscoveryOutput,
    ImplementationSummary,
    OpenResult,
    OpenTask,
    PlanOutput,
    RoleOutput,
    RoleResult,
    VerificationOutcome,
)
from core.states import BuildState
from workflows.records import MIRROR_ONCE

S = BuildState
# What a scripted call answers: an output, an error to raise, or a function of the call.
Answer = RoleOutput | ApplicationError | Callable[[RoleCall], RoleOutput]


def failing(test: str = "tests/test_app.py::test_it") -> TestReport:
    return TestReport(
        passed=False,
        summary="1 failed",
        tests_run=1,
        failures=[TestFailure(test=test, message="assert 1 == 2")],
        counts=TestCounts(failed=1),
    )


def default(call: RoleCall) -> RoleOutput:
    """A good answer for the call's state."""
    match call.state:
        case S.DISCOVERY:
            return DiscoveryOutput(summary="d", requirements=["r"], acceptance_criteria=["a"])
        case S.PLANNING:
            return PlanOutput(summary="p", steps=["s"], files=["app.py"], test_strategy="pytest")
        case S.IMPLEMENTATION:
            commit = f"c{call.attempt}"
            return ImplementationSummary(summary="i", files=[], commit=commit, workspace="/w")
        case S.TESTING:
            return TestReport(
                passed=True, summary="1 passed", tests_run=1, counts=TestCounts(passed=1)
            )
        case S.VERIFICATION:
            return VerificationOutcome(approved=True, summary="fine")
        case S.DEPLOYMENT:
            return Released(version="v0.1.0", summary="out", commit="m1", delivery="merge")
    raise AssertionError(f"no role works in {call.state}")


@dataclass
class Fakes:
    """The activities of one test's worker: scripted answers by (state, attempt), what each
    call was given, and the mirror's rows by event seq."""

    script: dict[tuple[BuildState, int], Answer] = field(default_factory=dict)
    tokens: int = 100  # what every model call spends (prompt + completion halves)
    calls: list[RoleCall] = field(default_factory=list)
    restored: list[RestoreTask] = field(default_factory=list)
    mirrored: dict[int, BuildEvent] = field(default_factory=dict)
    written: list[int] = field(default_factory=list)  # every event seq each write carried
    seen_at_call: list[int] = field(default_factory=list)  # the mirror's last seq at each call
    mirror_down: int = 0  # how many writes of the mirror fail before it takes one
    mirror_hangs: int = 0  # how many writes hang past their timeout before one is taken
    hidden_failing: str = "\0"  # builds whose id holds this fail their hidden tests

    def answer(self, call: RoleCall) -> RoleOutput:
        scripted = self.script.get((call.state, call.attempt), default)
        if isinstance(scripted, ApplicationError):
            raise scripted
        return scripted(call) if callable(scripted) else scripted

    def mirror(self, batch: MirrorBatch | None) -> int:
        if batch is None:
            return 0
        for event in batch.events:
            self.written.append(event.seq)
            self.mirrored.setdefault(event.seq, event)
        return batch.snapshot.last_seq

    def usage(self) -> ModelUsage:
        half = self.tokens // 2
        return ModelUsage(
            model="fake", prompt_version="fake/1", prompt_tokens=half, completion_tokens=half
        )

    def role(self, contract: Contract[RoleCall, RoleResult]) -> Callable[..., Any]:
        """The fake of one role's activity: it writes the batch the call carries, as the real
        one does, then answers from the script."""

        @activity.defn(name=contract.name)
        async def call_role(call: RoleCall) -> RoleResult:
            mirrored = self.mirror(call.mirror)
            self.seen_at_call.append(max(self.mirrored, default=0))
            self.calls.append(call)
            answered = self.answer(call)
            return contract.result(output=answered, usage=self.usage(), mirrored_seq=mirrored)

        return call_role

    def states_called(self) -> list[BuildState]:
        return [c.state for c in self.calls]

    def activities(self) -> list[Callable[..., Any]]:
        fakes = self

        @activity.defn(name=OPEN_WORKSPACE.name)
        async def open_workspace(task: OpenTask) -> OpenResult:
            project = task.project or ProjectConfig(repository=f"/repos/{task.project_id}")
            return OpenResult(base="b0", branch=f"build/{task.build_id}", project=project)

        @activity.defn(name=RESTORE_WORKSPACE.name)
        async def restore_workspace(task: RestoreTask) -> RestoreResult:
            fakes.restored.append(task)
            undone = task.undo_release is not None
            return RestoreResult(
                commit=task.commit, release_current=task.release_to, release_restored=undone
            )

        @activity.defn(name=MIRROR_BUILD.name)
        async def mirror_build(batch: MirrorBatch) -> MirrorReceipt:
            if fakes.mirror_down > 0:
                fakes.mirror_down -= 1
                raise ConnectionError("the mirror's database is down")
            if fakes.mirror_hangs > 0:
                fakes.mirror_hangs -= 1
                await asyncio.sleep(MIRROR_ONCE.start_to_close.total_seconds() + 1)
            fakes.mirror(batch)
            return MirrorReceipt(
                events_inserted=len(batch.events),
                handoffs_inserted=len(batch.handoffs),
                build_updated=True,
            )

        @activity.defn(name=JOIN_RELEASE_QUEUE.name)
        async def join_release_queue(join: QueueJoin) -> QueuePlace:
            return QueuePlace(ahead=[], granted=True)  # nobody else releases

        @activity.defn(name=RUN_ACCEPTANCE.name)
        async def run_acceptance(task: AcceptanceTask) -> Acceptance:
            if fakes.hidden_failing in task.build_id:
                return Acceptance(passed=False, tests_run=1, failed=1, summary="1 failed")
            return Acceptance(passed=True, tests_run=1, commit=task.commit, summary="1 passed")

        roles = {contract.name: contract for contract in ROLE_CALLS.values()}
        return [
            open_workspace,
            *(self.role(contract) for contract in roles.values()),
            restore_workspace,
            mirror_build,
            join_release_queue,
            run_acceptance,
        ]
