"""Probe a model endpoint before trusting it (`starter.py model check`): one small question per
output mode, one streamed answer, and the context window where the server tells it. Says what
the endpoint takes and which mode `auto` will start with; a wrong URL, key or model is one line
(ProbeFailed), not a stack trace.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import openai
from pydantic import BaseModel

from activities.model import fitting, output_modes
from activities.model.llm import ModelClient
from activities.model.output_modes import STRONGEST_FIRST, Mode, ModeRefused, OutputInvalid
from activities.model.wire import STATUS_HINTS
from core.states import Role

log = logging.getLogger("model")

QUESTION = "What is 2 + 3? Put the number in `answer`."
PROBE_TOKENS = 64


class Sum(BaseModel):
    answer: int


class ProbeFailed(Exception):
    """The endpoint cannot be used at all: why, in one line."""


@dataclass
class ProbeReport:
    endpoint: str
    model: str
    modes: dict[str, str] = field(default_factory=dict)  # mode: works / ignored / refused ...
    streaming: str = "-"
    context_window: int | None = None
    seconds: float = 0.0

    @property
    def auto_mode(self) -> str | None:
        """The mode `auto` settles on: the strongest that works."""
        return next((m for m, said in self.modes.items() if said == "works"), None)


async def probe(llm: ModelClient, role: Role = Role.CODE_WRITER) -> ProbeReport:
    model = llm.settings.model_for(role).model
    report = ProbeReport(endpoint=str(llm.client.base_url), model=model)
    started = time.monotonic()
    messages = [
        {"role": "system", "content": "You answer in the format asked, briefly."},
        {"role": "user", "content": QUESTION},
    ]
    for mode in STRONGEST_FIRST:
        report.modes[mode.value] = await _ask(llm, model, mode, messages)
    report.streaming = await _stream(llm, model, messages)
    report.context_window = await fitting.server_window(llm.client, model)
    report.seconds = time.monotonic() - started
    return report


async def check_at_start(llm: ModelClient) -> list[ProbeReport]:
    """The worker's probe of each model its roles use, one log line each; the mode `auto`
    will use is asked first from then on. An endpoint that cannot be used is one error line
    (builds will fail until it is fixed), never a reason for the worker not to serve."""
    reports = []
    first_role: dict[str, Role] = {}  # each model once, asked as the first role using it
    for role in Role:
        first_role.setdefault(llm.settings.model_for(role).model, role)
    for model, role in first_role.items():
        try:
            report = await probe(llm, role)
        except ProbeFailed as err:
            log.error("model check: %s; builds will fail until it is fixed "
                      "(starter.py model check asks again)", err)  # fmt: skip
            continue
        except Exception as err:  # the worker serves whatever a probe meets
            log.warning("model check of %s could not finish: %s", model, err)
            continue
        if report.auto_mode is not None:
            llm.remember_mode(model, Mode(report.auto_mode))
        (log.info if report.auto_mode else log.error)("model check: %s", summary(report))
        reports.append(report)
    return reports


def summary(report: ProbeReport) -> str:
    """A probe's report in one line, for the log."""
    modes = ", ".join(f"{mode} {said}" for mode, said in report.modes.items())
    window = f"{report.context_window:,} tokens" if report.context_window else "not said"
    auto = f"auto uses {report.auto_mode}" if report.auto_mode else "NO output mode works"
    return (
        f"{report.model} at {report.endpoint}: {modes}; streaming {report.streaming}; "
        f"context window {window}; {auto} ({report.seconds:.1f} s)"
    )


async def _ask(llm: ModelClient, model: str, mode: Mode, messages: list[dict[str, str]]) -> str:
    try:
        done = await llm.client.chat.completions.create(
            model=model, max_tokens=PROBE_TOKENS, **output_modes.request(mode, Sum, messages)
        )
    except openai.APIStatusError as err:
        if err.status_code in (401, 403, 404):
            raise ProbeFailed(_why(err, model)) from err
        return f"refused (HTTP {err.status_code}: {_short(err.message)})"
    except openai.APIConnectionError as err:
        raise ProbeFailed(f"cannot reach {llm.client.base_url}: {err}") from err
    first = done.choices[0]
    try:
        output_modes.read(mode, first.message, first.finish_reason, Sum)
    except ModeRefused:
        return "ignored"
    except OutputInvalid as err:
        return f"answered, not the schema ({_short(str(err))})"
    return "works" if output_modes.enforced(mode, first.message) else "ignored"


async def _stream(llm: ModelClient, model: str, messages: list[dict[str, str]]) -> str:
    try:
        stream = await llm.client.chat.completions.create(  # type: ignore[call-overload]
            model=model, messages=messages, max_tokens=PROBE_TOKENS,
            stream=True, stream_options={"include_usage": True},
        )  # fmt: skip
        chunks, usage = 0, False
        async for chunk in stream:
            chunks += 1
            usage = usage or chunk.usage is not None
    except openai.APIStatusError as err:
        return f"refused (HTTP {err.status_code}: {_short(err.message)})"
    except (openai.APIError, ValueError) as err:
        return f"failed ({_short(str(err))})"
    return f"works, {chunks} chunks, " + ("usage included" if usage else "no usage in the stream")


def _why(err: openai.APIStatusError, model: str) -> str:
    hint = STATUS_HINTS[err.status_code]
    return f"{hint} (HTTP {err.status_code}, model {model}): {_short(err.message)}"


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= 100 else text[:97] + "..."
