"""The activities the workflow calls, by name and types: the contract between workflows/ and
activities/.

The workflow schedules them by these names, so workflow code (and the client side, which
imports it for typed handles) never imports the activities' implementations, their openai
client or their sandbox. activities/ declares each implementation with the same name, and a
test checks every implementation against its contract.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Generic, TypeVar

from core.eval_build import Acceptance
from core.eval_suites import EvalReport, EvalReportTask
from core.mirror import MirrorBatch, MirrorReceipt, RoleCall
from core.projects import (
    NewRepository,
    NewRepositoryMade,
    QueueJoin,
    QueuePlace,
    RepositoryCheck,
    RepositoryChecked,
)
from core.releases import RestoreResult, RestoreTask
from core.role_io import (
    AcceptanceTask,
    CodeWriterResult,
    OpenResult,
    OpenTask,
    QAssistantResult,
    ReleaseResult,
    RoleResult,
    TestAuditorResult,
    VerificationResult,
)
from core.states import BuildState

ArgT = TypeVar("ArgT")
ResultT = TypeVar("ResultT", covariant=True)


@dataclass(frozen=True)
class Contract(Generic[ArgT, ResultT]):
    """An activity's name, its one input type and its result type."""

    name: str
    arg: type[ArgT]
    result: type[ResultT]


Q_ASSISTANT = Contract("q_assistant", RoleCall, QAssistantResult)
CODE_WRITER = Contract("code_writer", RoleCall, CodeWriterResult)
TEST_AUDITOR = Contract("test_auditor", RoleCall, TestAuditorResult)
VERIFICATION_OVERSEER = Contract("verification_overseer", RoleCall, VerificationResult)
RELEASE_MANAGER = Contract("release_manager", RoleCall, ReleaseResult)
RESTORE_WORKSPACE = Contract("restore_workspace", RestoreTask, RestoreResult)
MIRROR_BUILD = Contract("mirror_build", MirrorBatch, MirrorReceipt)  # a local activity
OPEN_WORKSPACE = Contract("open_workspace", OpenTask, OpenResult)
# The project registry's (workflows/project.py) questions to git.
CHECK_REPOSITORY = Contract("check_repository", RepositoryCheck, RepositoryChecked)
CREATE_REPOSITORY = Contract("create_repository", NewRepository, NewRepositoryMade)
# A build's place in its project's release queue (the registry started if it is not running).
JOIN_RELEASE_QUEUE = Contract("join_release_queue", QueueJoin, QueuePlace)
# An evaluation case's hidden tests on what its build delivered, and a suite run's table.
RUN_ACCEPTANCE = Contract("run_acceptance", AcceptanceTask, Acceptance)
EVAL_REPORT = Contract("eval_report", EvalReportTask, EvalReport)


class Failure(StrEnum):
    """The kinds of failure the activities and workflows raise (an ApplicationError's `type`),
    by which the workflow branches and callers tell failures apart. Every raise and every
    branch names a member, never a string or a class name (tests/core/test_failure_kinds.py), so
    renaming an exception class cannot change what a build does. The values are what
    recorded histories carry: a value never changes."""

    # A Code Writer attempt refused before anything was written: the Code Writer tries again.
    ATTEMPT_REFUSED = "AttemptRefused"
    UNSAFE_PATH = "UnsafePath"  # a path outside the repository, in .git, through a link
    EDIT_REFUSED = "EditRefused"  # a search text absent or ambiguous, a file missing
    MERGE_UNRESOLVED = "MergeUnresolved"  # conflicts left after the Code Writer's files
    # A mirror write the database refused for its data (not for being down): not retried,
    # recorded as an event, and the build goes on.
    MIRROR_REFUSED = "MirrorRefused"
    REVERT_CONFLICT = "RevertConflict"  # undoing a release conflicts: a person must look
    REPOSITORY_REFUSED = "RepositoryRefused"  # a registration git cannot use
    REPOSITORY_UNAVAILABLE = "RepositoryUnavailable"  # a workspace git cannot open now
    # The model layer's, retried or not by the retry policy.
    MODEL_MODE_REFUSED = "ModelModeRefused"
    MODEL_OUTPUT_INVALID = "ModelOutputInvalid"
    MODEL_CONTEXT_EXCEEDED = "ModelContextExceeded"
    MODEL_REQUEST_REJECTED = "ModelRequestRejected"
    MODEL_TIMEOUT = "ModelTimeout"
    MODEL_UNREACHABLE = "ModelUnreachable"
    MODEL_RATE_LIMITED = "ModelRateLimited"
    MODEL_UNAVAILABLE = "ModelUnavailable"
    # A re-run's role call the original build never made (core/reruns.py).
    RECORDING_DIVERGED = "RecordingDiverged"
    # An evaluation's table asked for before the mirror has every child's end: read again.
    EVAL_NOT_MIRRORED = "EvalNotMirrored"
    # The workflows' own.
    COMMAND_REJECTED = "CommandRejected"  # an update's validator refused the command
    BUILD_FAILED = "BuildFailed"
    INVALID_TRANSITION = "InvalidTransition"


# The failures that end one Code Writer attempt, not the build: it is asked again.
REFUSED_ATTEMPTS = frozenset(
    {Failure.ATTEMPT_REFUSED, Failure.UNSAFE_PATH, Failure.EDIT_REFUSED, Failure.MERGE_UNRESOLVED}
)

S = BuildState
# The role activity that works in each working state.
ROLE_CALLS: dict[BuildState, Contract[RoleCall, RoleResult]] = {
    S.DISCOVERY: Q_ASSISTANT,
    S.PLANNING: Q_ASSISTANT,
    S.IMPLEMENTATION: CODE_WRITER,
    S.TESTING: TEST_AUDITOR,
    S.VERIFICATION: VERIFICATION_OVERSEER,
    S.DEPLOYMENT: RELEASE_MANAGER,
}
CONTRACTS = (
    Q_ASSISTANT,
    CODE_WRITER,
    TEST_AUDITOR,
    VERIFICATION_OVERSEER,
    RELEASE_MANAGER,
    RESTORE_WORKSPACE,
    MIRROR_BUILD,
    OPEN_WORKSPACE,
    CHECK_REPOSITORY,
    CREATE_REPOSITORY,
    JOIN_RELEASE_QUEUE,
    RUN_ACCEPTANCE,
    EVAL_REPORT,
)
