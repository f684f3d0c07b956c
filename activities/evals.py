"""The activities of evaluation suites (core/eval_suites.py): a case's hidden tests run on the
commit its build delivered, and the suite's table read from its builds' score cards.

The hidden tests are written only here, into a fresh checkout of the delivered commit under
the worker's `acceptance/` folder: never into the build's workspace, never into anything a
role reads (the commit is fetched from the project's repository, where every commit of a
build is pushed under `refs/builds/<id>/<commit>`). They run sealed from the build they judge:
the base's test infrastructure, the tree read-only, their own cases counted
(activities/testing/sealed.py)."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import Engine
from sqlmodel import Session
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities import paths
from activities.beat import in_thread
from activities.repository.gitcmd import GitError, git
from activities.sandbox.runs import Limits
from activities.testing import environment
from activities.testing.results import cases
from activities.testing.sealed import Sealed, Verdict, seal, verdict
from activities.testing.testrun import is_pytest, run_command
from core.contracts import EVAL_REPORT, RUN_ACCEPTANCE, Failure
from core.eval_build import Acceptance
from core.eval_suites import CaseResult, EvalReport, EvalReportTask, case_result, report
from core.reports import RUN, TestFailure
from core.role_io import AcceptanceTask
from core.settings import Settings
from db.scores import score_of


def _beat(detail: str) -> None:
    activity.heartbeat(detail)


def checkout(task: AcceptanceTask, base: str, root: Path) -> tuple[Path, Sealed, list[str]]:
    """A fresh checkout of the delivered commit at `root/repo` with the base's test
    infrastructure and the hidden tests in it; how they run, and what infrastructure the build
    changed."""
    shutil.rmtree(root, ignore_errors=True)  # an earlier attempt's
    repo = root / "repo"
    root.mkdir(parents=True)
    git(None, "init", "-q", str(repo))
    ref = f"refs/builds/{task.build_id}/{task.commit}"
    git(repo, "fetch", "-q", "--tags", task.project.repository, ref)  # tags: versions
    git(repo, "checkout", "-q", "--detach", task.commit)
    sealed, changed = seal(repo, base)
    for name, text in task.hidden.files.items():
        paths.write_beneath(repo, name, text.encode())  # no link the build planted is followed
    return repo, sealed, changed


class EvalActivities:
    def __init__(self, settings: Settings, engine: Engine) -> None:
        self.settings = settings
        self.engine = engine

    @activity.defn(name=RUN_ACCEPTANCE.name)
    async def run_acceptance(self, task: AcceptanceTask) -> Acceptance:
        """The hidden tests on the delivered commit, in the sandbox, as the project's own run."""
        root = self.settings.data_dir / "acceptance" / task.build_id
        if not task.base:
            why = "not run: no base commit to take the test infrastructure from"
            return Acceptance(passed=False, commit=task.commit, summary=why)
        try:
            repo, sealed, changed = await in_thread("checkout", checkout, task, task.base, root)
        except paths.PathRefused as err:  # the build planted a link where a hidden test goes
            return Acceptance(passed=False, commit=task.commit, summary=f"not run: {err}")
        except (GitError, OSError) as err:
            raise ApplicationError(
                f"cannot check out {task.commit} of {task.project.repository}: {err}",
                type=Failure.REPOSITORY_UNAVAILABLE,
            ) from err
        request = environment.Request(
            store=self.settings.environments,
            project=task.project_id or task.build_id,
            setup_command=task.project.setup_command,
            network=self.settings.sandbox_setup_network,
            wheels=self.settings.runner_wheels,
            base=task.base or "",  # none given: the delivered code's environment is its own
            build=task.build_id,
        )
        limits = Limits(self.settings.test_timeout_seconds, self.settings.test_memory_mb)
        ran = await run_command(
            repo, root / "runs", "acceptance", task.hidden.command, limits, _beat, request, sealed
        )
        await asyncio.to_thread(paths.remove_tree, repo)
        if is_pytest(task.hidden.command) and not ran.setup_failed and not ran.timed_out:
            found = await asyncio.to_thread(cases, Path(ran.junit)) if ran.junit else []
            judged = verdict(found, list(task.hidden.files))
        else:  # a command other than pytest, or a run that never got to its tests
            failed = sum(1 for failure in ran.failures if failure.test != RUN)
            said = ran.summary if ran.passed else f"{ran.summary} {_first(ran.failures)}"
            judged = Verdict(ran.passed, ran.tests_run, failed, said)
        return Acceptance(
            passed=judged.passed,
            tests_run=judged.run,
            failed=judged.failed,
            commit=task.commit,
            summary=judged.summary,
            sandbox=ran.sandbox,
            integrity=changed,
        )

    @activity.defn(name=EVAL_REPORT.name)
    async def eval_report(self, task: EvalReportTask) -> EvalReport:
        """The suite's table from its builds' score cards; retried until the mirror has every
        build's end (it is written as each build ends, and may lag behind an outage)."""
        return await asyncio.to_thread(self._report, task)

    def _report(self, task: EvalReportTask) -> EvalReport:
        results: list[CaseResult] = []
        with Session(self.engine) as session:
            for child in task.children:
                card = score_of(session, workflow_id=child.workflow_id)
                if card is None or not card.finished:
                    raise ApplicationError(
                        f"the mirror has not yet the end of build {child.build_id}",
                        type=Failure.EVAL_NOT_MIRRORED,
                    )
                results.append(case_result(child.case, child.config, card))
        return report(task.run_id, task.suite, task.configs, results)

    def all(self) -> list[Callable[..., Any]]:
        return [self.run_acceptance, self.eval_report]


def _first(failures: list[TestFailure]) -> str:
    return f"First: {failures[0].test}: {failures[0].message}"[:400] if failures else ""
