"""What the roles' models write, read live from a build's workflow stream (workflows/stream.py):
for `starter.py start --show-model-output`, `starter.py model-output`, and the API's
server-sent events. Resumable by offset; a closed build's stream is read to its end."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta

from temporalio.client import Client
from temporalio.contrib.workflow_streams import WorkflowStreamClient

from core.build_io import build_id_from, workflow_id_for
from core.role_io import MODEL_OUTPUT_TOPIC, ModelStreamItem

POLL_COOLDOWN = timedelta(milliseconds=200)


async def model_output(
    client: Client, build: str, from_offset: int = 0
) -> AsyncIterator[tuple[int, ModelStreamItem]]:
    """Each item of the build's model output from `from_offset` on, with its offset; ends
    when the build has ended and everything it published was read."""
    stream = WorkflowStreamClient.create(client, workflow_id_for(build_id_from(build)))
    items = stream.subscribe(
        [MODEL_OUTPUT_TOPIC], from_offset, result_type=ModelStreamItem,
        poll_cooldown=POLL_COOLDOWN,
    )  # fmt: skip
    async for item in items:
        yield item.offset, item.data


class Lines:
    """Model output as whole lines for a terminal: a header where a request starts or an
    attempt is retried, the text cut at its newlines, the rest when the call is done."""

    def __init__(self) -> None:
        self.partial: dict[str, str] = {}

    def take(self, item: ModelStreamItem) -> list[str]:
        role = item.role
        if item.kind == "text":
            text = self.partial.pop(role, "") + item.text
            *whole, rest = text.split("\n")
            if rest:
                self.partial[role] = rest
            return [f"{role} │ {line}" for line in whole]
        shown = [f"{role} │ {rest}" for rest in [self.partial.pop(role, "")] if rest]
        if item.kind == "start":
            return [*shown, f"── {item.text} ──"]
        if item.kind == "retry":
            return [*shown, f"── {role} {item.text} ──"]
        return [*shown, f"── {role}: {item.tokens:,} tokens ──"]
