"""Variants of BuildWorkflow for the replay test: a change someone forgot to guard, and the same
change guarded by a patch. Kept apart from the tests: the sandbox re-imports this module."""

from __future__ import annotations

from temporalio import workflow
from temporalio.common import SearchAttributeKey

from workflows.build import BuildWorkflow

with workflow.unsafe.imports_passed_through():
    from core.build_io import BuildRequest, BuildResult
    from core.states import BuildState

# Stands for any new command in the pipeline: here, the state upserted again, on its own.
NOTE = SearchAttributeKey.for_keyword("BuildState")


@workflow.defn(name="BuildWorkflow")
class UnguardedChange(BuildWorkflow):
    """Today's workflow plus a change someone forgot to guard: a new command at every move."""

    @workflow.init
    def __init__(self, request: BuildRequest) -> None:
        super().__init__(request)

    @workflow.run
    async def run(self, request: BuildRequest) -> BuildResult:
        return await super().run(request)

    def _move(self, target: BuildState, by: str) -> None:
        super()._move(target, by)
        if self._changed():
            workflow.upsert_search_attributes([NOTE.value_set(target.value)])

    def _changed(self) -> bool:
        return True


@workflow.defn(name="BuildWorkflow")
class GuardedChange(UnguardedChange):
    """The same change, guarded: builds started before it keep their old path."""

    @workflow.init
    def __init__(self, request: BuildRequest) -> None:
        super().__init__(request)

    @workflow.run
    async def run(self, request: BuildRequest) -> BuildResult:
        return await super().run(request)

    def _changed(self) -> bool:
        return workflow.patched("move-note")
