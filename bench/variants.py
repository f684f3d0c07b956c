"""The engine benchmark's baseline for what a repository costs: BuildWorkflow that opens no
repository. It runs the same role calls, but no `open_workspace`, no project (so no release
queue: no update-with-start on the registry, no turn to wait for, no `leave`); against it the
bench measures the engine overhead of a build with its project's repository. Kept apart from
bench/engine.py: the workflow sandbox re-imports this module."""

from __future__ import annotations

from temporalio import workflow

from workflows.build import BuildWorkflow

with workflow.unsafe.imports_passed_through():
    from core.build_io import BuildRequest, BuildResult

WITHOUT_REPOSITORY = "BuildWithoutRepository"


@workflow.defn(name=WITHOUT_REPOSITORY)
class BuildWithoutRepository(BuildWorkflow):
    @workflow.init
    def __init__(self, request: BuildRequest) -> None:
        super().__init__(request.model_copy(update={"project": None}))

    @workflow.run
    async def run(self, request: BuildRequest) -> BuildResult:
        return await super().run(request)

    def _opens_repository(self) -> bool:
        return False
