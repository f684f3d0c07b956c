"""What a test run's JUnit report says, and what a build's run says beside its base's: each
case once (passed, failed, errored, skipped), the failures that were there on the base
already set apart and counted as pre-existing, never as passed."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from xml.etree import ElementTree

from pydantic import BaseModel

from core.reports import RUN, TestCounts, TestFailure, TestReport

MAX_FAILURES = 20
MESSAGE_CHARS = 500


class Baseline(BaseModel):
    """A run of the test command on a build's base: its report, and the tests that passed and
    those that failed or errored there (all of them, not only the report's first few)."""

    commit: str
    report: TestReport
    passed: list[str]
    failed: list[str] = []


def _meaning(failure: TestFailure) -> str:
    """What a failure of the run itself was (its message up to the first colon)."""
    return failure.message.split(":", 1)[0]


def compare(report: TestReport, base: Baseline) -> TestReport:
    """The build's report with the failures that were there on the base already set apart
    (they do not fail the build, and they are counted as pre-existing, not as passed), and
    each test that passed on the base and fails now named a regression. A failure of the run
    itself (collection interrupted, pytest's usage) that the base's run had too is
    pre-existing as well. Blocking: it reads the run's whole report."""
    if base.report.setup_failed:
        why = "no baseline: the base's environment could not be made"
        return report.model_copy(update={"baseline": f"{base.commit[:10]}: {why}"})
    failed_before = set(base.failed) or {f.test for f in base.report.failures if f.test != RUN}
    run_before = {_meaning(f) for f in base.report.failures if f.test == RUN}
    passed_before = set(base.passed)
    everything = all_failures(Path(report.junit)) if report.junit else []
    if not everything:
        everything = [f for f in report.failures if f.test != RUN]
    everything += [f for f in report.failures if f.test == RUN]

    def earlier(failure: TestFailure) -> bool:
        if failure.test == RUN:
            return _meaning(failure) in run_before
        return failure.test in failed_before

    pre = [f for f in everything if earlier(f)]
    own = [f for f in everything if not earlier(f)]
    regressions = []
    for failure in own:
        if failure.test in passed_before:
            failure.message = f"regression (it passed on the base): {failure.message}"
            regressions.append(failure.test)
    counted = [f for f in pre if f.test != RUN]
    counts = report.counts.model_copy(
        update={
            "failed": sum(1 for f in own if f.test != RUN and not f.error),
            "errors": sum(1 for f in own if f.test != RUN and f.error),
            "pre_existing": len(counted),
        }
    )
    summary = report.summary
    if pre:
        summary += f" {len(counted)} failed on the base already (pre-existing, not counted)."
    if regressions:
        summary += f" {len(regressions)} regressed: {', '.join(regressions[:5])}."
    return report.model_copy(
        update={
            "passed": not own and report.tests_run > 0 and not report.timed_out,
            "failures": own[:MAX_FAILURES],
            "pre_existing": pre[:MAX_FAILURES],
            "regressions": regressions,
            "summary": summary,
            "baseline": f"{base.commit[:10]}: {base.report.summary}",
            "counts": counts,
        }
    )


@dataclass(frozen=True)
class Case:
    """One test case of a JUnit report: its node id, how it ended, and why (None: passed or
    skipped)."""

    name: str
    status: str  # passed, failure, error, skipped
    message: str | None = None


def failures_of(found: list[Case]) -> list[TestFailure]:
    """One TestFailure per failed or erroring case."""
    return [
        TestFailure(test=c.name, message=c.message, error=c.status == "error" or None)
        for c in found
        if c.message is not None
    ]


def counted(found: list[Case]) -> TestCounts:
    """The cases by how they ended (none pre-existing: only a base's run tells those)."""
    statuses = [c.status for c in found]
    return TestCounts(
        passed=statuses.count("passed"),
        failed=statuses.count("failure"),
        errors=statuses.count("error"),
        skipped=statuses.count("skipped"),
    )


def all_failures(path: Path) -> list[TestFailure]:
    """One TestFailure per failed or erroring test case of the report at `path`."""
    return failures_of(cases(path))


def passed_tests(path: Path) -> set[str]:
    return {c.name for c in cases(path) if c.status == "passed"}


def failed_tests(path: Path) -> set[str]:
    return {c.name for c in cases(path) if c.message is not None}


def cases(path: Path) -> list[Case]:
    """Each test case of the report."""
    if not path.exists():
        return []
    try:
        root = ElementTree.parse(path).getroot()
    except ElementTree.ParseError:
        return []
    cases: list[Case] = []
    for case in root.iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name', '')}".strip(":")
        if case.find("skipped") is not None:
            cases.append(Case(name, "skipped"))
            continue
        problem, status = case.find("failure"), "failure"
        if problem is None:
            problem, status = case.find("error"), "error"
        if problem is None:
            cases.append(Case(name, "passed"))
            continue
        text = (problem.text or "").strip()
        message = problem.get("message") or text or "failed"
        if message == "collection failure":  # pytest's words alone: say why
            errors = [line[1:].strip() for line in text.splitlines() if line.startswith("E ")]
            message = f"{message}: {errors[-1] if errors else last_lines(text, 1)}"
        cases.append(Case(name, status, message[:MESSAGE_CHARS]))
    return cases


def last_lines(output: str, lines: int = 5) -> str:
    return " | ".join(line for line in output.strip().splitlines()[-lines:])[:MESSAGE_CHARS]
