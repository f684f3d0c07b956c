"""What the role activities take and return: the task, the models' structured answers, and
the summaries with references (commits, report paths) that go back to the workflow. File
contents and logs stay in the workspace, so history payloads stay small.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AliasChoices,
    BaseModel,
    Field,
)

from core.build_io import Requirements, Simulation
from core.eval_build import HiddenTests
from core.feedback import Feedback, ModelUsage
from core.projects import Bump, ProjectConfig
from core.releases import ReleaseOutcome
from core.reports import TestReport, TestRun
from core.reruns import Replay
from core.states import BuildState, Role

MODEL_OUTPUT_TOPIC = "model"


class ModelStreamItem(BaseModel):
    """What a role's model call publishes on the build's workflow stream (topic `model`) while
    it answers: `start` of a request, `text` as it arrives, `retry` before a new activity
    attempt's first request (the marker that what came before was abandoned), `done`."""

    role: str
    attempt: int  # the activity's attempt
    kind: Literal["start", "text", "retry", "done"]
    text: str = ""
    tokens: int = 0  # completion tokens of this call so far (all its requests)
    tokens_per_second: float = 0.0

    def progress(self) -> str:
        """One line for `status` and the Web UI: "code_writer: 1,240 tokens so far, 38 tok/s"."""
        rate = f", {self.tokens_per_second:.0f} tok/s" if self.tokens_per_second else ""
        return f"{self.role}: {self.tokens:,} tokens so far{rate}"


class DiscoveryOutput(BaseModel):
    kind: Literal["discovery"] = "discovery"
    summary: str
    requirements: list[str]
    acceptance_criteria: list[str]
    open_questions: list[str] = Field(default_factory=list)


class PlanOutput(BaseModel):
    kind: Literal["plan"] = "plan"
    summary: str
    steps: list[str]
    files: list[str]
    test_strategy: str
    smoke_command: str = Field(
        default="",
        description="A command that proves a release works, run in the release folder, "
        "e.g. 'python -m mymodule'. Empty: every module must import.",
    )


class SourceFile(BaseModel):
    path: str
    content: str


class FileEdit(BaseModel):
    """One change to the workspace: a whole file written, an exact text replaced (it must
    occur exactly once in the file), a file deleted, or a file renamed."""

    kind: Literal["write", "replace", "delete", "rename"]
    path: str = Field(description="The file, relative to the repository root.")
    content: str = Field(default="", description="write: the whole new content of the file.")
    search: str = Field(
        default="", description="replace: text of the file as it is, occurring exactly once."
    )
    replace: str = Field(default="", description="replace: the text that takes its place.")
    to: str = Field(default="", description="rename: the file's new path.")


class ImplementationOutput(BaseModel):
    """The Code Writer's answer: whole files and edits, relative to the repository root."""

    summary: str
    files: list[SourceFile] = Field(
        default_factory=list, description="Whole files to write (new files, small files)."
    )
    edits: list[FileEdit] = Field(
        default_factory=list,
        description="Edits, applied in order after `files`: exact-text replacements of "
        "existing files, deletions, renames.",
    )


class VerificationReport(BaseModel):
    """The Verification Overseer's model's review of the diff."""

    approved: bool
    summary: str
    reasons: list[str] = Field(default_factory=list)


class ReleaseNotes(BaseModel):
    """The Release Manager's model's notes for the release."""

    summary: str
    notes: list[str] = Field(default_factory=list)


# What role activities hand back to the workflow: summaries and references, never file
# contents or logs (those stay in the workspace), so history payloads stay small.


class FileRef(BaseModel):
    path: str
    bytes: int
    sha256: str


class ImplementationSummary(BaseModel):
    summary: str
    files: list[FileRef]
    commit: str
    workspace: str


class AcceptanceTask(BaseModel):
    """Run an evaluation case's hidden tests (core/eval_build.py) on the commit a build
    delivered, in a fresh checkout of it that no role touched."""

    build_id: str
    project: ProjectConfig
    commit: str
    hidden: HiddenTests
    project_id: str = ""  # whose environments the run uses ("": the build's own)
    base: str | None = None  # the case's base: a shared environment is made from it


class VerificationOutcome(BaseModel):
    approved: bool
    summary: str
    reasons: list[str] = Field(default_factory=list)
    checks: dict[str, str] = Field(default_factory=dict)  # check name -> "ok" or the problem
    diff_base: str | None = None
    diff_stat: str = ""


RoleOutput = (
    DiscoveryOutput
    | PlanOutput
    | ImplementationSummary
    | TestReport
    | VerificationOutcome
    | ReleaseOutcome
)


class RoleContext(Feedback):
    """What a role is given beyond the request, one JSON object in its prompt: the outputs of
    the earlier phases its state needs (core/rules.CONTEXT_INPUTS), the feedback (at
    IMPLEMENTATION), and what the activity adds from the workspace and its own work."""

    discovery: DiscoveryOutput | None = None
    planning: PlanOutput | None = None
    implementation: ImplementationSummary | None = None
    testing: TestReport | None = None
    verification: VerificationOutcome | None = None
    # Added by the activity for its model; the workflow never sends them.
    repository_map: str | None = None
    repository_files: int | None = None  # files in the map
    files: dict[str, str] | None = None  # path -> full text of the files the role works on
    test_run: TestRun | None = None
    diff: str | None = None
    diff_stat: str | None = None
    checks: dict[str, str] | None = None
    version: str | None = None  # what the Release Manager released

    def smoke_command(self) -> str:
        """The plan's smoke command ("": none planned)."""
        return self.planning.smoke_command if self.planning else ""


class RoleTask(BaseModel):
    """The one input of every role activity: what its model is shown (`for_model`), and the
    call's metadata, which no prompt holds (`CALL_METADATA`)."""

    # How the call is made, not what it is about: the offline model's simulated faults and a
    # re-run's replay. The same task with other metadata is the same prompt.
    CALL_METADATA: ClassVar[frozenset[str]] = frozenset({"simulate", "replay"})

    build_id: str
    project_id: str
    role: Role
    state: BuildState
    attempt: int
    requirements: Requirements
    context: RoleContext = Field(default_factory=RoleContext)
    guidance: list[str] = Field(default_factory=list)
    simulate: list[Simulation] = Field(default_factory=list)
    head: str | None = None  # the workspace commit this role works on (None: a new workspace)
    # The commit the build's change is measured from: the project branch it started from (or
    # merged in), then its own last release (None: an empty workspace).
    base: str | None = None
    project: ProjectConfig | None = None  # None: a workspace without a project repository
    bump: Bump = "minor"
    # A re-run's call: answered from the original's kept answers unless live. Never part of
    # a prompt.
    replay: Replay | None = None

    def for_model(self) -> dict[str, Any]:
        """What the role's model is shown of the task, as JSON: all but the call's metadata."""
        return self.model_dump(mode="json", exclude=set(self.CALL_METADATA))


class OpenTask(BaseModel):
    """Open a build's workspace on its project's repository."""

    build_id: str
    project_id: str
    project: ProjectConfig | None = None  # None: the project's greenfield repository
    # A fixed start (a re-run's original base, an evaluation case's base): the project is then
    # delivered to the build's own branch. None: the project branch's head.
    start_at: str | None = Field(
        default=None, validation_alias=AliasChoices("start_at", "rerun_at")
    )


class OpenResult(BaseModel):
    base: str  # the project branch's commit the build starts from
    branch: str  # the build's branch in its workspace
    project: ProjectConfig  # what the build works with (a greenfield one filled in)


class RoleResult(BaseModel):
    """What every role call returns: its output (each role's result narrows the type), the
    call's usage."""

    output: RoleOutput
    usage: ModelUsage
    # The last event of the call's mirror batch it wrote (0: none; core/mirror.RoleCall).
    mirrored_seq: int = 0


class QAssistantResult(RoleResult):
    output: Annotated[DiscoveryOutput | PlanOutput, Field(discriminator="kind")]


class CodeWriterResult(RoleResult):
    output: ImplementationSummary


class TestAuditorResult(RoleResult):
    output: TestReport


class VerificationResult(RoleResult):
    output: VerificationOutcome


class ReleaseResult(RoleResult):
    output: ReleaseOutcome
