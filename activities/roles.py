"""One activity per role. Each asks the role's model, and the roles that touch code do real
work in the build's workspace: write and commit files, run the tests, check and review the
diff, release. What they return is a summary with references (commit, report paths); file
contents and logs stay in the workspace, so workflow history stays small."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.beat import in_thread
from activities.delivery import landing, pushes
from activities.delivery.targets import LocalReleases, ReleaseTarget
from activities.mirror import MirrorActivities
from activities.model.llm import ModelClient
from activities.projects import greenfield
from activities.repository import repomap
from activities.repository.gitcmd import GitError, create_bare
from activities.repository.workspace import AttemptRefused, CommitMissing, Remote, Workspace
from activities.sandbox.runs import Limits
from activities.testing import environment
from activities.testing.checks import introduced_since, static_checks
from activities.testing.results import compare
from activities.testing.testrun import DEFAULT_COMMAND, baseline, is_pytest, run_tests
from core.build_io import Simulation
from core.contracts import (
    CODE_WRITER,
    OPEN_WORKSPACE,
    Q_ASSISTANT,
    RELEASE_MANAGER,
    RESTORE_WORKSPACE,
    TEST_AUDITOR,
    VERIFICATION_OVERSEER,
    Failure,
)
from core.feedback import ModelUsage
from core.mirror import RoleCall
from core.projects import ProjectConfig
from core.releases import Released, RestoreResult, RestoreTask
from core.reports import EMPTY_CHANGE, RUN, TestAudit, TestFailure, TestReport, TestRun
from core.reruns import scratch_project
from core.role_io import (
    CodeWriterResult,
    DiscoveryOutput,
    ImplementationSummary,
    OpenResult,
    OpenTask,
    PlanOutput,
    QAssistantResult,
    ReleaseNotes,
    ReleaseResult,
    RoleContext,
    RoleResult,
    RoleTask,
    TestAuditorResult,
    VerificationOutcome,
    VerificationReport,
    VerificationResult,
)
from core.settings import Settings
from core.states import BuildState

SMOKE_SECONDS = 60
CHECK_SECONDS = 120
R = TypeVar("R", bound=RoleResult)


def _beat(detail: str) -> None:
    activity.heartbeat(detail)


def carrying_mirror(
    role: Callable[[RoleActivities, RoleTask], Awaitable[R]],
) -> Callable[[RoleActivities, RoleCall], Awaitable[R]]:
    """A role call first writes the mirror batch it carries, then its role works on the task
    alone, and it reports what it wrote so the workflow does not send it again."""

    @functools.wraps(role)
    async def carried(self: RoleActivities, task: RoleCall) -> R:
        mirrored = await self.mirror.carried(task.mirror) if self.mirror else 0
        result = await role(self, task.task())
        result.mirrored_seq = mirrored
        return result

    # What the SDK decodes the input as: the call, not the task `wraps` copied from the role.
    carried.__annotations__ = {"task": RoleCall, "return": role.__annotations__["return"]}
    return carried


class RoleActivities:
    """The five roles; clients are built once in serving/main.py and shared."""

    def __init__(
        self,
        llm: ModelClient,
        settings: Settings | None = None,
        releases: ReleaseTarget | None = None,
        mirror: MirrorActivities | None = None,
    ) -> None:
        self.llm = llm
        self.mirror = mirror  # None: carried batches are not written (the workflow resends)
        self.settings = settings or llm.settings
        self.releases = releases or LocalReleases(self.settings.releases)

    def workspace(self, build_id: str, project: ProjectConfig | None = None) -> Workspace:
        remote = Remote(project.repository, project.branch, build_id) if project else None
        return Workspace(self.settings.workspaces / build_id, remote)

    @activity.defn(name=OPEN_WORKSPACE.name)
    async def open_workspace(self, task: OpenTask) -> OpenResult:
        """The build's workspace on its project's branch head, which becomes its base. A
        repository git cannot reach fails the attempt, and the retry policy tries again."""
        project = task.project or greenfield(self.settings, task.project_id)
        if (
            task.start_at is not None
        ):  # the one place a re-run's or evaluation's delivery is decided
            project = scratch_project(project)
        try:
            if task.project is None:
                path = Path(project.repository)
                await in_thread("git init --bare", create_bare, path, project.branch)
            ws = self.workspace(task.build_id, project)
            base = await in_thread("git clone", ws.open, task.start_at)
        except CommitMissing as err:
            raise ApplicationError(
                f"cannot start from {task.start_at}: {project.repository} no longer has it",
                type=Failure.REPOSITORY_REFUSED,
                non_retryable=True,
            ) from err
        except GitError as err:
            raise ApplicationError(
                f"cannot open {project.repository} (branch {project.branch}): {err.reason}",
                type=Failure.REPOSITORY_UNAVAILABLE,
            ) from err
        return OpenResult(base=base, branch=f"build/{task.build_id}", project=project)

    @property
    def limits(self) -> Limits:
        return Limits(self.settings.test_timeout_seconds, self.settings.test_memory_mb)

    @activity.defn(name=Q_ASSISTANT.name)
    @carrying_mirror
    async def q_assistant(self, task: RoleTask) -> QAssistantResult:
        schema = DiscoveryOutput if task.state is BuildState.DISCOVERY else PlanOutput
        if task.project is not None:
            ws = self.workspace(task.build_id, task.project)
            task = await in_thread("repository map", self._with_repository, task, ws, False)
        output, usage = await self.llm.structured(task, schema)
        return QAssistantResult(output=output, usage=usage)

    @activity.defn(name=CODE_WRITER.name)
    @carrying_mirror
    async def code_writer(self, task: RoleTask) -> CodeWriterResult:
        ws = self.workspace(task.build_id, task.project)
        merge = task.context.merge
        merge_with = merge.branch_head if merge else None
        if merge and merge_with:  # the project moved and conflicted: both sides of each conflict
            sides = await in_thread("merge", pushes.conflict_sides, ws, task.head, merge)
            task = _with(task, merge=sides)
        if task.project is not None:
            task = await in_thread("repository context", self._with_repository, task, ws, True)
        output, usage = await self.llm.implementation(task)
        title = output.summary.strip().splitlines()[0][:120] if output.summary.strip() else ""
        message = f"implementation attempt {task.attempt}: {title}".strip(": ")

        def write() -> tuple[str, Any]:
            ws.checkout(task.head)  # a retry or a rollback starts from what the workflow holds
            if merge_with:
                ws.start_merge(merge_with)
            return ws.write(output.files, message, output.edits)

        try:
            commit, refs = await in_thread("writing files", write)
        except AttemptRefused as err:
            raise ApplicationError(
                f"the Code Writer's files were refused, nothing was written: {err}",
                type=err.kind,
                non_retryable=True,
            ) from err
        summary = ImplementationSummary(
            summary=output.summary[:2000], files=refs, commit=commit, workspace=str(ws.repo)
        )
        return CodeWriterResult(output=summary, usage=usage)

    def _with_repository(self, task: RoleTask, ws: Workspace, files: bool) -> RoleTask:
        """The task with what its model sees of the repository at its commit: the map, and
        (`files`) the full text of the files it works on, within REPO_CONTEXT_MAX_TOKENS."""
        commit = ws.checkout(task.head)
        budget = self.settings.repo_context_max_tokens
        shown: dict[str, str] = {}
        used = 0
        mentioned = repomap.mentioned_paths(task.context)
        if files:
            shown, used = repomap.file_texts(ws.repo, mentioned, budget * 2 // 3)
        cache = self.settings.workspaces / ".repomaps" / task.project_id
        found = repomap.entries(ws.repo, commit, cache)
        repo_map = repomap.render(found, budget - used, mentioned)
        return _with(
            task,
            repository_map=repo_map.text,
            repository_files=repo_map.files,
            files=shown if files else None,
        )

    @activity.defn(name=TEST_AUDITOR.name)
    @carrying_mirror
    async def test_auditor(self, task: RoleTask) -> TestAuditorResult:
        ws = self.workspace(task.build_id, task.project)
        commit = await in_thread("checkout", ws.checkout, task.head)
        command = task.project.test_command if task.project else DEFAULT_COMMAND
        if task.project is not None and not await in_thread(
            "diff", ws.changes, task.base, commit
        ):  # nothing to test, nothing to release: the Code Writer is told, then a person
            empty = TestReport(
                passed=False, summary=EMPTY_CHANGE, tests_run=0, commit=commit, empty=True,
                command=command, failures=[TestFailure(test=RUN, message=EMPTY_CHANGE)],
            )  # fmt: skip
            return TestAuditorResult(output=empty, usage=self._no_call(task))
        request = self.environment_request(task)
        report = await run_tests(ws, task.attempt, self.limits, _beat, command, request)
        measured = task.project is not None and task.base not in (None, commit)
        if not report.passed and not report.setup_failed and measured and is_pytest(command):
            assert task.base is not None  # which failures are its own?
            cache = self.settings.workspaces / ".baselines" / task.project_id
            base = await baseline(ws, task.base, cache, command, self.limits, _beat, request)
            report = await asyncio.to_thread(compare, report, base)
        report.commit = commit
        run = TestRun.model_validate(report, from_attributes=True)
        audit, usage = await self.llm.structured(_with(task, test_run=run), TestAudit)
        report.audit = audit
        report.summary = f"{report.summary} Audit: {audit.summary}"
        return TestAuditorResult(output=report, usage=usage)

    @activity.defn(name=VERIFICATION_OVERSEER.name)
    @carrying_mirror
    async def verification_overseer(self, task: RoleTask) -> VerificationResult:
        ws = self.workspace(task.build_id, task.project)
        head = await in_thread("checkout", ws.checkout, task.head)
        limits = Limits(CHECK_SECONDS, self.settings.test_memory_mb)
        checks = await static_checks(ws.repo, ws.runs, limits)
        measured = task.project is not None and task.base not in (None, head)
        if measured and any(result != "ok" for result in checks.values()):
            assert task.base is not None  # count only what the build introduced
            checks = await introduced_since(ws, task.base, checks, limits)
        diff, stat = await in_thread(
            "diff", ws.diff, task.base, head, self.settings.review_diff_max_chars
        )
        problems = [f"{name}: {result}" for name, result in checks.items() if result != "ok"]
        if problems:  # no review of code that does not pass its checks
            outcome = VerificationOutcome(
                approved=False,
                summary="Static checks failed; changes requested.",
                reasons=problems,
                checks=checks,
                diff_base=task.base,
                diff_stat=stat,
            )
            return VerificationResult(output=outcome, usage=self._no_call(task))
        review, usage = await self.llm.structured(
            _with(task, diff=diff, diff_stat=stat, checks=checks), VerificationReport
        )
        outcome = VerificationOutcome(
            approved=review.approved,
            summary=review.summary,
            reasons=review.reasons,
            checks=checks,
            diff_base=task.base,
            diff_stat=stat,
        )
        return VerificationResult(output=outcome, usage=usage)

    @activity.defn(name=RELEASE_MANAGER.name)
    @carrying_mirror
    async def release_manager(self, task: RoleTask) -> ReleaseResult:
        if task.project is not None:
            return await self._deliver(task, task.project)
        ws = self.workspace(task.build_id)
        outcome = await landing.release_here(
            ws, self.releases, task, task.context.smoke_command(), Limits(SMOKE_SECONDS, 512)
        )
        if not isinstance(outcome, Released):
            return ReleaseResult(output=outcome, usage=self._no_call(task))
        notes, usage = await self.llm.structured(_with(task, version=outcome.version), ReleaseNotes)
        outcome.summary, outcome.notes = notes.summary, notes.notes
        return ReleaseResult(output=outcome, usage=usage)

    async def _deliver(self, task: RoleTask, project: ProjectConfig) -> ReleaseResult:
        """Land the tested commit on the project's branch with its version tag, then deploy
        it; or say why it cannot land yet (the branch moved: re-test; a conflict)."""
        ws = self.workspace(task.build_id, project)
        head = await in_thread("checkout", ws.checkout, task.head)
        if project.delivery == "branch":
            return await self._push_branch(task, ws, head)
        if Simulation.CONFLICT in task.simulate and self.settings.offline_model:
            await in_thread(
                "teammate", pushes.simulate_teammate, ws, task.base, head, task.build_id
            )
        made = await self._environment(ws, task)
        env = made.environment if made.ok else None
        outcome = await landing.land(
            ws, self.releases, task.project_id, head, task.bump,
            project.smoke_command or task.context.smoke_command(),
            env.root if env else None, project.version_scheme, env.roots if env else (),
        )  # fmt: skip
        if not isinstance(outcome, Released):
            return ReleaseResult(output=outcome, usage=self._no_call(task))
        asked = _with(task, version=outcome.version)
        notes, usage = await self.llm.structured(asked, ReleaseNotes)
        outcome.summary, outcome.notes = notes.summary, notes.notes
        if outcome.declared:  # said beside the model's words, not left to them
            outcome.summary = f"{outcome.summary} Note: {outcome.declared}."
        return ReleaseResult(output=outcome, usage=usage)

    def environment_request(self, task: RoleTask) -> environment.Request:
        """What a build's runs ask of its project's environment (activities/testing/
        environment.py): shared with the project's other builds when made from its base."""
        return environment.Request(
            store=self.settings.environments,
            project=task.project_id,
            setup_command=task.project.setup_command if task.project else "",
            network=self.settings.sandbox_setup_network,
            wheels=self.settings.runner_wheels,
            base=task.base,
            build=task.build_id,
        )

    async def _environment(self, ws: Workspace, task: RoleTask) -> environment.Made:
        """The project's environment for the smoke check (found made by its test runs, or made
        again on a worker that has none)."""
        return await environment.prepare(
            ws.repo, self.environment_request(task), limits=self.limits, beat=_beat,
            scratch=ws.runs,
        )  # fmt: skip

    async def _push_branch(self, task: RoleTask, ws: Workspace, head: str) -> ReleaseResult:
        """`branch` delivery: the build's branch in the project's repository, for a person."""
        branch = f"build/{task.build_id}"
        await in_thread("push", ws.git, "push", "-q", "origin", f"+{head}:refs/heads/{branch}")
        notes, usage = await self.llm.structured(_with(task, version=branch), ReleaseNotes)
        outcome = Released(
            version=branch,
            summary=notes.summary,
            notes=notes.notes,
            commit=head,
            delivery="branch",
            smoke="not run: branch delivery deploys nothing",
        )
        return ReleaseResult(output=outcome, usage=usage)

    @activity.defn(name=RESTORE_WORKSPACE.name)
    async def restore(self, task: RestoreTask) -> RestoreResult:
        """Compensation of a rollback: code back to `commit`, and the release undone."""
        ws = self.workspace(task.build_id, task.project)
        if task.undo_release is not None and task.landed and task.landed_from:
            return await landing.revert(ws, self.releases, task, task.landed_from, task.landed)
        commit = await in_thread("checkout", ws.checkout, task.commit)
        restored = False
        current = await asyncio.to_thread(self.releases.current, task.project_id)
        if task.undo_release is not None and current == task.undo_release:
            current = await asyncio.to_thread(
                self.releases.restore, task.project_id, task.release_to
            )
            restored = True
        return RestoreResult(commit=commit, release_current=current, release_restored=restored)

    def _no_call(self, task: RoleTask) -> ModelUsage:
        """Usage of a role call that did not reach the model (its checks decided)."""
        prompt = self.llm.prompts[task.role.value]
        return ModelUsage(
            model=self.settings.model_for(task.role).model,
            prompt_version=prompt.version,
            offline=self.settings.offline_model,
        )

    def all(self) -> list[Callable[..., Any]]:
        return [
            self.open_workspace,
            self.q_assistant,
            self.code_writer,
            self.test_auditor,
            self.verification_overseer,
            self.release_manager,
            self.restore,
        ]


def _with(task: RoleTask, **given: Any) -> RoleTask:
    """The task with more for its model to see (typed by RoleContext's fields)."""
    context = RoleContext.model_validate({**dict(task.context), **given})
    return task.model_copy(update={"context": context})
