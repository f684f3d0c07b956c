"""The build's code in its project's repository, as the workflow drives it: the workspace
opened on the project's branch (the base, recorded), and the compensation of a rollback (the
code of an earlier state, a release reverted). A composed part of BuildWorkflow."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, is_cancelled_exception

with workflow.unsafe.imports_passed_through():
    from core import rules
    from core.build_data import BuildData
    from core.build_io import BuildRequest, CallOptions
    from core.contracts import OPEN_WORKSPACE, RESTORE_WORKSPACE, RUN_ACCEPTANCE, Failure
    from core.eval_build import Acceptance
    from core.events import AcceptanceTested, Restored, WorkspaceOpened
    from core.outcomes import Actor, Ending
    from core.projects import redact
    from core.releases import Conflict, Released, Retest
    from core.role_io import (
        AcceptanceTask,
        ImplementationSummary,
        OpenTask,
        RoleOutput,
    )
    from core.states import BuildState
    from workflows.calls import execute
    from workflows.errors import BuildFailed, RevertConflicted, cause_of
    from workflows.records import BuildRecords

RESTORE = CallOptions(timedelta(seconds=120), RetryPolicy(maximum_attempts=5))
CANCELLED = "not run: the build was cancelled while its hidden tests ran"


class BuildCode:
    def __init__(self, request: BuildRequest, data: BuildData, records: BuildRecords) -> None:
        self.request = request
        self.data = data
        self.records = records

    async def open(self) -> None:
        """The workspace on the project's branch head (a re-run's or an evaluation's: on its
        fixed start): the build's base, recorded. A repository git cannot reach is retried as
        an outage, then fails the build."""
        request = self.request
        task = OpenTask(
            build_id=request.build_id,
            project_id=request.project_id,
            project=request.project,
            start_at=request.options.fixed_start(),
        )
        try:
            opened = await execute(
                OPEN_WORKSPACE,
                task,
                request.options.policy.call_options(),
                summary=f"open {request.project_id}",
            )
        except ActivityError as err:
            if is_cancelled_exception(err):
                raise
            reason = f"the project's repository: {cause_of(err)}"
            raise BuildFailed(reason, Ending.REPOSITORY_ERROR) from err
        built = self.data.code
        built.project, built.branch = opened.project, opened.branch
        # The build's base, and the commit every earlier state (a rollback to DISCOVERY) goes
        # back to.
        built.project_base = built.base = built.head = opened.base
        built.commit_at[self.data.state] = opened.base
        workspace = WorkspaceOpened(
            repository=redact(opened.project.repository),
            branch=opened.project.branch,
            base=opened.base,
            build_branch=opened.branch,
        )
        self.records.emit(workspace, Actor.SYSTEM)

    def kept(self, output: RoleOutput) -> None:
        """What a phase's output does to the code: the commit the Code Writer made; a project
        branch that moved (the build is measured from it, and a clean merge is its code);
        the release made."""
        built = self.data.code
        match output:
            case ImplementationSummary():
                built.head = output.commit
            case Retest() | Conflict():
                built.base = output.branch_head
                if isinstance(output, Retest):
                    built.head = output.commit
            case Released():
                built.release = output
                built.base_before_release = built.base
                built.base = output.commit

    async def accept(self) -> None:
        """An evaluation case's hidden tests on the commit the build delivered, after delivery
        (core/eval_build.py), recorded for its score card. A run that could not be made is
        recorded as not passed, with why: the build itself delivered."""
        evaluation, built = self.request.options.evaluation, self.data.code
        release = built.release
        if self.data.state is not BuildState.COMPLETE or built.project is None:
            return
        if evaluation is None or evaluation.hidden is None:
            return
        if release is None or release.commit is None:
            return
        task = AcceptanceTask(
            build_id=self.request.build_id,
            project=built.project,
            commit=release.commit,
            hidden=evaluation.hidden,
            project_id=self.request.project_id,
            base=built.project_base,
        )
        try:
            accepted = await execute(
                RUN_ACCEPTANCE,
                task,
                self.request.options.policy.call_options(),
                summary=f"hidden tests on {release.commit[:12]}",
            )
        except ActivityError as err:
            if is_cancelled_exception(err):
                self._scored(Acceptance(passed=False, commit=release.commit, summary=CANCELLED))
                raise
            accepted = Acceptance(
                passed=False, commit=release.commit, summary=f"not run: {cause_of(err)}"
            )
        except asyncio.CancelledError:
            self._scored(Acceptance(passed=False, commit=release.commit, summary=CANCELLED))
            raise
        self._scored(accepted)

    def _scored(self, accepted: Acceptance) -> None:
        self.data.code.accepted = accepted
        self.records.emit(AcceptanceTested(**dict(accepted)), Actor.SYSTEM)

    def entered(self, state: BuildState) -> None:
        """The build enters `state` with its code at `head` (where a rollback there goes)."""
        self.data.code.commit_at[state] = self.data.code.head

    async def restore(self, target: BuildState, *, code: bool) -> None:
        """Compensation: the code as it was at `target` (a rollback), and this build's release
        undone if it made one (reverted on the project's branch when it was merged there);
        both recorded as a `restored` event."""
        built = self.data.code
        release = built.release
        self.records.flush_attributes()
        try:
            result = await execute(
                RESTORE_WORKSPACE,
                rules.restore_task(self.request, self.data, target, code=code),
                RESTORE,
                summary=f"restore {target.value}",
            )
        except ActivityError as err:
            if is_cancelled_exception(err):
                raise
            reason = f"rollback to {target.value}: {cause_of(err)}"
            if getattr(err.cause, "type", None) == Failure.REVERT_CONFLICT:
                raise RevertConflicted(reason) from err
            raise BuildFailed(reason, Ending.RESTORE_FAILED) from err
        built.head = result.commit
        if release:
            built.base = result.base or built.base_before_release
            built.release = None
        restored = Restored(
            target=target,
            commit=result.commit,
            release_undone=release.version if release and result.release_restored else None,
            release_current=result.release_current,
            reverted_by=result.reverted_by,
        )
        self.records.emit(restored, Actor.SYSTEM)
