"""Prompts that fit the model: a role's task is cut to the model's context window, with room
for the answer, before it is sent; the window is a setting, or what the server says of itself
(vLLM's `max_model_len` in /v1/models, llama.cpp's `n_ctx` in /props).

Cutting is generic: the longest text of the task (the repository map, a file shown, a test
log) is shortened first, each cut marked where it was made, until the whole fits. A server
that still refuses the prompt's size gets it once more at half the size (activities/model/llm.py).
"""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import httpx2
import openai

CHARS_PER_TOKEN = 3  # budgeting: code and JSON run denser than prose's four characters a token
MIN_KEPT = 200  # characters a cut text keeps at least
ANSWER_SHARE = 4  # without max_tokens, a quarter of the window is kept for the answer
MAX_ANSWER_RESERVE = 4096
MAX_CUTS = 200
CUT = "\n[... {n} characters cut to fit the model's context window ...]\n"

# How servers say a prompt is too long: OpenAI and vLLM ("maximum context length"),
# llama.cpp ("exceed context window", "context size"), others ("too long", "context length").
_TOO_LONG = re.compile(
    r"context[ _](length|window|size)|maximum context|too long|exceeds? (the )?context|"
    r"prompt is too large|n_ctx",
    re.I,
)


def too_long(err: openai.APIStatusError) -> bool:
    """Whether an error answer refuses the prompt for its size."""
    return err.status_code in (400, 413, 422, 500) and bool(
        _TOO_LONG.search(f"{err.message} {err.body}")
    )


def budget(window: int, system: str, max_tokens: int | None) -> int:
    """Characters the task may take in a window of `window` tokens, after the system prompt
    and the answer's reserve."""
    reserve = max_tokens or min(window // ANSWER_SHARE, MAX_ANSWER_RESERVE)
    return max(0, (window - reserve) * CHARS_PER_TOKEN - len(system))


def fit(payload: dict[str, Any], limit: int) -> tuple[dict[str, Any], int]:
    """`payload` with its longest texts cut until its JSON takes at most `limit` characters
    (or nothing is left to cut), and how many characters were cut."""
    size = len(json.dumps(payload, sort_keys=True))
    if size <= limit:
        return payload, 0
    fitted = copy.deepcopy(payload)
    cut_total = 0
    for _ in range(MAX_CUTS):
        excess = len(json.dumps(fitted, sort_keys=True)) - limit
        if excess <= 0:
            break
        place = _longest(fitted)
        if place is None:
            break
        holder, key, text = place
        keep = max(MIN_KEPT, len(text) - excess - len(CUT) - 16)
        if keep >= len(text) - len(CUT):
            break  # nothing longer than what a cut keeps: it fits as well as it can
        removed = len(text) - keep
        head = keep * 2 // 3
        holder[key] = text[:head] + CUT.format(n=removed) + text[len(text) - (keep - head) :]
        cut_total += removed
    return fitted, cut_total


def _longest(node: Any) -> tuple[Any, Any, str] | None:
    """The longest string in `node` (nested dicts and lists), with its holder and key; cut
    texts count by what is left to cut."""
    best: tuple[Any, Any, str] | None = None
    stack: list[Any] = [node]
    while stack:
        current = stack.pop()
        items = current.items() if isinstance(current, dict) else enumerate(current)
        for key, value in items:
            if isinstance(value, str):
                if len(value) > MIN_KEPT + len(CUT) and (best is None or len(value) > len(best[2])):
                    best = (current, key, value)
            elif isinstance(value, (dict, list)):
                stack.append(value)
    return best


async def server_window(client: openai.AsyncOpenAI, model: str) -> int | None:
    """What the server says of its context: vLLM's `max_model_len` (and others' context length)
    in /v1/models, llama.cpp's `n_ctx` in /props. Asked through the openai client's own
    connection, with its key; None where it says nothing."""
    base = str(client.base_url).rstrip("/")
    for url, find in ((f"{base}/models", _from_models), (f"{base.removesuffix('/v1')}/props",
                                                         _from_props)):  # fmt: skip
        try:
            answer = await client.get(url, cast_to=httpx2.Response)
            if size := find(answer.json(), model):
                return size
        except (openai.APIError, httpx2.HTTPError, ValueError):
            continue
    return None


def _from_models(body: Any, model: str) -> int | None:
    data = body.get("data", []) if isinstance(body, dict) else []
    for entry in data:
        if isinstance(entry, dict) and (entry.get("id") == model or len(data) == 1):
            for key in ("max_model_len", "context_length", "context_window", "n_ctx"):
                if isinstance(entry.get(key), int):
                    return int(entry[key])
            meta = entry.get("meta") or {}
            if isinstance(meta.get("n_ctx_train"), int):
                return int(meta["n_ctx_train"])
    return None


def _from_props(body: Any, _model: str) -> int | None:
    if not isinstance(body, dict):
        return None
    size = (body.get("default_generation_settings") or {}).get("n_ctx") or body.get("n_ctx")
    return int(size) if isinstance(size, int) else None
