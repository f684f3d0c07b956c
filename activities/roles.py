"""One activity per role. Each asks the role's model for a structured answer."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from temporalio import activity

from activities.llm import ModelClient
from core.models import (
    CodeWriterResult,
    DiscoveryOutput,
    ImplementationOutput,
    PlanOutput,
    QAssistantResult,
    ReleaseReport,
    ReleaseResult,
    RoleTask,
    TestAuditorResult,
    TestReport,
    VerificationReport,
    VerificationResult,
)
from core.states import BuildState


class RoleActivities:
    """The five roles; the model client is built once in worker.py and shared."""

    def __init__(self, llm: ModelClient) -> None:
        self.llm = llm

    @activity.defn(name="q_assistant")
    async def q_assistant(self, task: RoleTask) -> QAssistantResult:
        schema = DiscoveryOutput if task.state is BuildState.DISCOVERY else PlanOutput
        output, usage = await self.llm.structured(task, schema)
        return QAssistantResult(output=output, usage=usage)

    @activity.defn(name="code_writer")
    async def code_writer(self, task: RoleTask) -> CodeWriterResult:
        output, usage = await self.llm.structured(task, ImplementationOutput)
        return CodeWriterResult(output=output, usage=usage)

    @activity.defn(name="test_auditor")
    async def test_auditor(self, task: RoleTask) -> TestAuditorResult:
        output, usage = await self.llm.structured(task, TestReport)
        return TestAuditorResult(output=output, usage=usage)

    @activity.defn(name="verification_overseer")
    async def verification_overseer(self, task: RoleTask) -> VerificationResult:
        output, usage = await self.llm.structured(task, VerificationReport)
        return VerificationResult(output=output, usage=usage)

    @activity.defn(name="release_manager")
    async def release_manager(self, task: RoleTask) -> ReleaseResult:
        output, usage = await self.llm.structured(task, ReleaseReport)
        return ReleaseResult(output=output, usage=usage)

    def all(self) -> list[Callable[..., Any]]:
        return [
            self.q_assistant,
            self.code_writer,
            self.test_auditor,
            self.verification_overseer,
            self.release_manager,
        ]
