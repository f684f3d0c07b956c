"""Every format an answer can be asked in, as the one call path uses it: it builds its request
from the call's messages, reads a good answer into the schema, refuses an unreadable one with a
reason its re-ask repeats, and says whether the endpoint kept to it."""

from __future__ import annotations

import json

import pytest
from openai.types.chat import ChatCompletionMessage

from activities.model import edit_blocks
from activities.model.formats import EDIT_BLOCKS, JSON_FORMATS, Format
from activities.model.output_modes import Mode, ModeRefused, OutputInvalid
from core.role_io import ImplementationOutput, PlanOutput, SourceFile

PLAN = PlanOutput(summary="s", steps=["a"], files=["x.py"], test_strategy="t")
CODE = ImplementationOutput(summary="add x", files=[SourceFile(path="x.py", content="x = 1\n")])
MESSAGES = [{"role": "system", "content": "You plan."}, {"role": "user", "content": "{}"}]


def answer_in(fmt: Format, text: str) -> ChatCompletionMessage:
    """How an endpoint that kept to `fmt` answers `text`."""
    if fmt.name == Mode.TOOLS:
        call = {"id": "c", "type": "function", "function": {"name": "x", "arguments": text}}
        return ChatCompletionMessage(role="assistant", content=None, tool_calls=[call])  # type: ignore[list-item]
    return ChatCompletionMessage(role="assistant", content=text)


@pytest.mark.parametrize("mode", list(Mode))
def test_each_json_mode_asks_reads_and_re_asks(mode: Mode) -> None:
    fmt = JSON_FORMATS[mode]
    assert fmt.family == "json" and fmt.prepared(MESSAGES) == MESSAGES  # a step down: the same
    request = fmt.request(PlanOutput, fmt.prepared(MESSAGES))
    assert request["messages"][1] == MESSAGES[1]
    asks_for_schema = {
        Mode.JSON_SCHEMA: "response_format" in request,
        Mode.TOOLS: request.get("tool_choice", {}).get("function", {}).get("name") == "PlanOutput",
        Mode.JSON_OBJECT: request.get("response_format", {}).get("type") == "json_object",
        Mode.TEXT: "PlanOutput" in request["messages"][0]["content"],
    }
    assert asks_for_schema[mode]
    answer, kept_to = fmt.read(answer_in(fmt, PLAN.model_dump_json()), "stop", PlanOutput)
    assert answer == PLAN and kept_to
    with pytest.raises(OutputInvalid) as err:
        fmt.read(answer_in(fmt, json.dumps({"summary": 1})), "stop", PlanOutput)
    assert "steps" in fmt.reask(str(err.value))
    assert fmt.refusable is (mode is not Mode.TEXT)


def test_prose_around_json_is_read_but_shows_the_mode_was_ignored() -> None:
    fmt = JSON_FORMATS[Mode.JSON_SCHEMA]
    answer, kept_to = fmt.read(answer_in(fmt, f"Here: {PLAN.model_dump_json()}"), None, PlanOutput)
    assert answer == PLAN and not kept_to
    with pytest.raises(ModeRefused):  # a forced tool call the endpoint did not make
        JSON_FORMATS[Mode.TOOLS].read(answer_in(fmt, PLAN.model_dump_json()), None, PlanOutput)


def test_edit_blocks_carry_their_rules_in_every_request_and_read_code_as_written() -> None:
    fmt: Format = EDIT_BLOCKS
    prepared = fmt.prepared(MESSAGES)
    assert prepared[0]["content"].endswith(edit_blocks.INSTRUCTIONS) and fmt.family == "blocks"
    assert fmt.request(ImplementationOutput, prepared) == {"messages": prepared}
    answer, kept_to = fmt.read(
        answer_in(fmt, edit_blocks.render(CODE)), "stop", ImplementationOutput
    )
    assert answer.files == CODE.files and kept_to and not fmt.refusable
    with pytest.raises(OutputInvalid) as err:
        fmt.read(
            answer_in(fmt, "x.py\n```python\n<<<<<<< SEARCH\nx\n"), "stop", ImplementationOutput
        )
    assert "could not be read" in fmt.reask(str(err.value))
    with pytest.raises(OutputInvalid, match="cut off"):
        fmt.read(answer_in(fmt, edit_blocks.render(CODE)), "length", ImplementationOutput)
