"""The ways an OpenAI-compatible endpoint can be asked for an answer in a pydantic schema, and
how each answer is read back. Servers differ: OpenAI takes a strict `json_schema`; llama.cpp's
server refuses it (HTTP 500) but takes JSON mode with a schema and a forced tool call; others
accept `json_schema` and ignore it. So a role's call starts at the strongest mode and steps
down when the endpoint refuses the mode or shows it ignored it (activities/model/llm.py); every mode
ends in the same pydantic validation, and a validation error is re-asked the same way.

- `json_schema`: `response_format` of type json_schema, strict.
- `tools`: the schema as the parameters of the one tool the call must use (`tool_choice`).
- `json_object`: JSON mode; the schema in `response_format` (servers that constrain to it take
  it from there) and in the system prompt.
- `text`: no constraint; the schema in the system prompt, the first JSON object of the answer
  read out of it (code fences and prose around it allowed).
"""

from __future__ import annotations

import json
import re
from enum import StrEnum
from typing import Any, TypeVar

import openai
from openai.types.chat import ChatCompletionMessage
from pydantic import BaseModel, ValidationError

T = TypeVar("T", bound=BaseModel)


class Mode(StrEnum):
    JSON_SCHEMA = "json_schema"
    TOOLS = "tools"
    JSON_OBJECT = "json_object"
    TEXT = "text"


STRONGEST_FIRST = tuple(Mode)  # the order `auto` tries them in


class ModeRefused(Exception):
    """The endpoint refused this mode, or answered in a way that shows it ignored it."""


class OutputInvalid(Exception):
    """The answer is there but is not the schema: why (a model can act on it)."""


class NoJson(OutputInvalid):
    """No JSON object at all in the answer. Where the mode has the server enforce JSON, one such
    answer may be a broken one; every answer of a call so is the server ignoring the mode."""


# A 500 that names the request's form is a refusal of it (llama.cpp: "Input should be 'text'
# or 'json_object'"), not an outage; a 400 is one unless it is about the prompt's size.
_MODE_WORDS = re.compile(r"response_format|json_schema|json_object|tool|function|strict", re.I)
_SIZE_WORDS = re.compile(r"context|too long|maximum.*tokens|max_tokens", re.I)


def refuses_mode(err: openai.APIStatusError) -> bool:
    """Whether an error answer refuses the mode of the request (so another mode may work)."""
    body = f"{err.message} {err.body}"
    if err.status_code in (400, 422):
        return not _SIZE_WORDS.search(body)
    return err.status_code >= 500 and bool(_MODE_WORDS.search(body))


def schema_of(schema: type[BaseModel]) -> dict[str, Any]:
    """The schema as strict structured outputs take it (what the SDK sends for `parse`)."""
    parameters: dict[str, Any] = openai.pydantic_function_tool(schema)["function"]["parameters"]
    return parameters


def request(mode: Mode, schema: type[BaseModel], messages: list[dict[str, str]]) -> dict[str, Any]:
    """The keyword arguments of `chat.completions.create` that ask for `schema` in `mode`."""
    name = schema.__name__
    if mode is Mode.JSON_SCHEMA:
        spec = {"name": name, "schema": schema_of(schema), "strict": True}
        return {
            "messages": messages,
            "response_format": {"type": "json_schema", "json_schema": spec},
        }
    if mode is Mode.TOOLS:
        return {
            "messages": messages,
            "tools": [openai.pydantic_function_tool(schema, name=name)],
            "tool_choice": {"type": "function", "function": {"name": name}},
        }
    shown = json.dumps({"title": name, **schema_of(schema)})
    instruction = (
        f"\n\nAnswer with one JSON object, and nothing else, that matches this JSON schema "
        f"({name}):\n{shown}"
    )
    system, *rest = messages
    instructed = [{**system, "content": system["content"] + instruction}, *rest]
    if mode is Mode.JSON_OBJECT:
        fmt = {"type": "json_object", "schema": schema_of(schema)}
        return {"messages": instructed, "response_format": fmt}
    return {"messages": instructed}


def answer_text(mode: Mode, message: ChatCompletionMessage) -> str:
    """What the model answered: the forced tool call's arguments, or the message's text."""
    if mode is Mode.TOOLS and message.tool_calls:
        call = message.tool_calls[0]
        return str(getattr(getattr(call, "function", None), "arguments", "") or "")
    return message.content or ""


def read(mode: Mode, message: ChatCompletionMessage, finish: str | None, schema: type[T]) -> T:
    """The answer of `message` as `schema`. ModeRefused when it shows the endpoint ignored the
    mode (no tool call where one was forced); NoJson when it holds no JSON object;
    OutputInvalid when the answer is there but is not the schema, or was cut off."""
    if mode is Mode.TOOLS and not message.tool_calls:
        raise ModeRefused("asked for a forced tool call, the endpoint answered without one")
    text = answer_text(mode, message)
    if finish == "length":
        raise OutputInvalid("the answer was cut off at the token limit; answer more briefly")
    if message.refusal:
        raise OutputInvalid(f"the model refused: {message.refusal}")
    try:
        data = first_json_object(text)
    except ValueError as err:
        raise NoJson(str(err)) from err
    try:
        return schema.model_validate(data)
    except ValidationError as err:
        raise OutputInvalid(str(err)) from err


def enforced(mode: Mode, message: ChatCompletionMessage) -> bool:
    """Whether the answer looks as the mode makes a server answer: nothing but a JSON object
    (JSON modes), or a tool call (tools). Prose around the JSON shows the server ignored it."""
    if mode is Mode.TOOLS:
        return bool(message.tool_calls)
    if mode is Mode.TEXT:
        return True
    text = (message.content or "").strip()
    return text.startswith("{") and text.endswith("}")


def first_json_object(text: str) -> dict[str, Any]:
    """The first JSON object in `text`: the whole text, or inside a code fence or prose.
    Control characters inside strings are taken (small models write raw newlines in them);
    where nothing parses, the error says where the first candidate broke, for the re-ask."""
    decoder = json.JSONDecoder(strict=False)
    first: json.JSONDecodeError | None = None
    for start in (m.start() for m in re.finditer(r"\{", text)):
        try:
            value, _ = decoder.raw_decode(text, start)
        except json.JSONDecodeError as err:
            first = first or err
            continue
        if isinstance(value, dict):
            return value
    if first is None:
        raise ValueError(f"no JSON object in the answer: {_start(text)}")
    near = " ".join(text[max(first.pos - 40, 0) : first.pos + 20].split())
    raise ValueError(
        f"no JSON object in the answer: {_start(text)}; the first one breaks at character "
        f"{first.pos} ({first.msg}), near {near!r}"
    )


def _start(text: str) -> str:
    text = " ".join(text.split())
    return repr(text[:120] + ("..." if len(text) > 120 else "")) if text else "nothing"
