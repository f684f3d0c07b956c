"""The formats a model's answer can be asked in, as objects: each builds its request, reads an
answer back into the schema, and words the re-ask of an answer it could not read. The one call
path (activities/model/llm.py) runs any of them: kept answer, replay, ask, step down to a
weaker format the endpoint takes, re-ask.

- `JsonFormat(mode)`: the schema as JSON, in one of the output modes an OpenAI-compatible
  endpoint may take (activities/model/output_modes.py), strongest first; the endpoint may
  refuse a mode, or ignore it, and the call steps down.
- `EDIT_BLOCKS`: the Code Writer's code as plain text in edit blocks
  (activities/model/edit_blocks.py); nothing for an endpoint to refuse.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from openai.types.chat import ChatCompletionMessage
from pydantic import BaseModel

from activities.model import edit_blocks, output_modes
from activities.model.output_modes import Mode, OutputInvalid
from core.role_io import ImplementationOutput

T = TypeVar("T", bound=BaseModel)
Messages = list[dict[str, str]]


class Format(Protocol):
    """How an answer is asked for and read."""

    @property
    def name(self) -> str:
        """As the call's usage records it (`output_mode`)."""
        ...

    @property
    def family(self) -> str:
        """What a kept answer was asked in: an answer kept in one JSON mode serves another."""
        ...

    @property
    def refusable(self) -> bool:
        """Whether an endpoint may refuse or ignore it (so the call steps down from it)."""
        ...

    @property
    def server_makes_json(self) -> bool:
        """Whether the endpoint is asked to answer JSON itself: an answer without any, every
        time, shows it ignores the format (one such answer may be a broken one)."""
        ...

    def instructions(self, schema: type[BaseModel]) -> str:
        """What the request adds to the system prompt at most (the context budget counts it)."""
        ...

    def prepared(self, messages: Messages) -> Messages:
        """The call's messages as every request and re-ask in this format starts from (what a
        kept answer is found by)."""
        ...

    def request(self, schema: type[BaseModel], messages: Messages) -> dict[str, Any]:
        """The keyword arguments of `chat.completions.create` that ask for `schema`."""
        ...

    def read(
        self, message: ChatCompletionMessage, finish: str | None, schema: type[T]
    ) -> tuple[T, bool]:
        """The answer as `schema`, and whether the endpoint kept to the format (False: read
        out of prose it wrote around it). OutputInvalid (NoJson) when it cannot be read,
        ModeRefused when the answer shows the endpoint ignored the format."""
        ...

    def answered(self, message: ChatCompletionMessage) -> str:
        """The answer's text, as the re-ask shows it back to the model."""
        ...

    def reask(self, problem: str) -> str:
        """The user message that asks again after an answer that could not be read."""
        ...


@dataclass(frozen=True)
class JsonFormat:
    mode: Mode
    family: str = "json"

    @property
    def name(self) -> str:
        return self.mode.value

    @property
    def refusable(self) -> bool:
        return self.mode is not Mode.TEXT

    @property
    def server_makes_json(self) -> bool:
        return self.mode in (Mode.JSON_SCHEMA, Mode.JSON_OBJECT)

    def instructions(self, schema: type[BaseModel]) -> str:
        return json.dumps(output_modes.schema_of(schema))

    def prepared(self, messages: Messages) -> Messages:
        return messages  # each mode adds its own instruction: a step down starts from these

    def request(self, schema: type[BaseModel], messages: Messages) -> dict[str, Any]:
        return output_modes.request(self.mode, schema, messages)

    def read(
        self, message: ChatCompletionMessage, finish: str | None, schema: type[T]
    ) -> tuple[T, bool]:
        answer = output_modes.read(self.mode, message, finish, schema)
        return answer, output_modes.enforced(self.mode, message)

    def answered(self, message: ChatCompletionMessage) -> str:
        return output_modes.answer_text(self.mode, message)

    def reask(self, problem: str) -> str:
        return (
            f"Your answer did not match the schema: {problem}. "
            "Answer again, only with JSON that matches it."
        )


@dataclass(frozen=True)
class EditBlocks:
    name: str = "blocks"
    family: str = "blocks"
    refusable: bool = False
    server_makes_json: bool = False

    def instructions(self, schema: type[BaseModel]) -> str:
        return edit_blocks.INSTRUCTIONS

    def prepared(self, messages: Messages) -> Messages:
        system, *rest = messages
        return [{**system, "content": system["content"] + edit_blocks.INSTRUCTIONS}, *rest]

    def request(self, schema: type[BaseModel], messages: Messages) -> dict[str, Any]:
        return {"messages": messages}  # plain text: no constraint on the answer

    def read(
        self, message: ChatCompletionMessage, finish: str | None, schema: type[T]
    ) -> tuple[T, bool]:
        if schema is not ImplementationOutput:
            raise TypeError(f"edit blocks answer an ImplementationOutput, not {schema.__name__}")
        if finish == "length":
            raise OutputInvalid("the answer was cut off at the token limit; answer briefly")
        try:
            answer = schema.model_validate(edit_blocks.parse(message.content or ""))
        except edit_blocks.BlocksInvalid as err:
            raise OutputInvalid(str(err)) from err
        return answer, True

    def answered(self, message: ChatCompletionMessage) -> str:
        return message.content or ""

    def reask(self, problem: str) -> str:
        return (
            f"Your answer could not be read: {problem}\n"
            "Answer again, in the format the instructions give."
        )


EDIT_BLOCKS = EditBlocks()
JSON_FORMATS = {mode: JsonFormat(mode) for mode in Mode}
