"""The build's workflow stream (temporalio.contrib.workflow_streams): what the roles' models
write, published by the model layer (activities/model/streaming.py) in batches, read by
`starter.py start --show-model-output` and the API's server-sent events, resumable by offset.
The latest progress it carries ("code_writer: 1,240 tokens so far, 38 tok/s") goes to the
`status` query and the Web UI's current details.

Publishing is a signal and reading an update; neither makes a command, so histories recorded
before the stream existed replay unchanged."""

from __future__ import annotations

from collections.abc import Callable

from temporalio import workflow
from temporalio.contrib.workflow_streams import PublishInput, WorkflowStream

with workflow.unsafe.imports_passed_through():
    from core.role_io import MODEL_OUTPUT_TOPIC, ModelStreamItem


class ModelOutput(WorkflowStream):
    """The build's stream, telling `on_progress` the latest progress of a model call (None
    when the call is done). Construct it in the workflow's `__init__`."""

    def __init__(self, on_progress: Callable[[str | None], None]) -> None:
        super().__init__()
        self._on_progress = on_progress

    def _on_publish(self, payload: PublishInput) -> None:
        before = len(self._log)  # the SDK's log: a batch it takes is appended whole
        super()._on_publish(payload)
        converter = workflow.payload_converter()
        for item in self._log[before:]:
            if item.topic == MODEL_OUTPUT_TOPIC:
                seen = converter.from_payload(item.data, ModelStreamItem)
                self._on_progress(None if seen.kind == "done" else seen.progress())

    async def close(self) -> None:
        """Release the readers waiting for more before the build ends (they read what is left
        by query, from the closed run)."""
        self.detach_pollers()
        await workflow.wait_condition(workflow.all_handlers_finished)
