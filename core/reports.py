"""What a real test run of a project reports: each failure, the counts that add up to its
JUnit report, and what the Test Auditor's model is shown of it."""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, Field, computed_field

# Why a build waits for a person when a test run's environment could not be made.
# Why a build that changes nothing goes back to its Code Writer, and then to a person.
EMPTY_CHANGE = (
    "the change is empty: the build's tree is the same as the project's; write the change the "
    "requirements ask for"
)
# The name of a failure of a test run itself (it hung, crashed, ran out of memory), not of a test.
RUN = "(test run)"


class TestAudit(BaseModel):
    """The Test Auditor's model's judgement of a real test run."""

    __test__: ClassVar[bool] = False  # not a pytest class

    summary: str
    requirements_covered: bool
    concerns: list[str] = Field(default_factory=list)


class TestFailure(BaseModel):
    __test__: ClassVar[bool] = False  # not a pytest class

    test: str
    message: str
    # True: the test errored (collection, a fixture), not failed. Left out of a prompt's JSON
    # when it did not.
    error: bool | None = Field(default=None, exclude_if=lambda value: value is None)


class TestCounts(BaseModel):
    """A test run's cases, each counted once: `run` is passed + failed + errors +
    pre_existing, and with `skipped` they are every case of the report."""

    __test__: ClassVar[bool] = False  # not a pytest class

    passed: int = 0
    failed: int = 0  # failed, and not on the base already
    errors: int = 0  # errored (collection, a fixture), and not on the base already
    pre_existing: int = 0  # failed or errored on the base too: not the build's doing
    skipped: int = 0

    @computed_field  # type: ignore[prop-decorator]
    @property
    def run(self) -> int:
        return self.passed + self.failed + self.errors + self.pre_existing

    def line(self) -> str:
        """`1,993 run: 1,991 passed, 0 failed, 2 pre-existing, 0 errors, 12 skipped`."""
        return (
            f"{self.run:,} run: {self.passed:,} passed, {self.failed:,} failed, "
            f"{self.pre_existing:,} pre-existing, {self.errors:,} errors, "
            f"{self.skipped:,} skipped"
        )


class TestReport(BaseModel):
    """A real pytest run of the workspace, and the model's audit of it."""

    __test__: ClassVar[bool] = False  # not a pytest class

    passed: bool
    summary: str
    tests_run: int
    failures: list[TestFailure] = Field(default_factory=list)
    timed_out: bool = False
    commit: str | None = None
    junit: str | None = None  # path of the JUnit XML report
    log: str | None = None  # path of the full pytest output
    audit: TestAudit | None = None
    command: str = ""  # the project's test command that ran
    # Against a run on the build's base: failures that were there already (they do not fail
    # the build), and the failing tests that passed there.
    pre_existing: list[TestFailure] = Field(default_factory=list)
    regressions: list[str] = Field(default_factory=list)
    baseline: str | None = None  # the base commit and its run's summary (None: no baseline)
    sandbox: str = ""  # how the run was confined (activities/sandbox/isolation.py), and its limits
    # The project's environment the run used: what made it, and whether it was made now or
    # reused (activities/testing/environment.py).
    setup: str = ""
    # The environment could not be made, so no test ran: not the code's failure, a person's
    # to fix (the network, the setup command, the index).
    setup_failed: bool = False
    empty: bool = False  # the build's tree is its base's: nothing to test or to release
    counts: TestCounts = Field(default_factory=TestCounts)


class TestRun(BaseModel):
    """The real test run, as the Test Auditor's model is shown it."""

    __test__: ClassVar[bool] = False  # not a pytest class

    passed: bool
    tests_run: int
    failures: list[TestFailure] = Field(default_factory=list)
    pre_existing: list[TestFailure] = Field(default_factory=list)
    regressions: list[str] = Field(default_factory=list)
