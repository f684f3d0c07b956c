"""System prompts for the five roles, kept as versioned files beside this module."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from core.states import Role

PROMPT_DIR = Path(__file__).parent / "prompts"
_VERSION = re.compile(r"<!--\s*prompt-version:\s*(\S+)\s*-->")


@dataclass(frozen=True)
class Prompt:
    role: Role
    version: str
    text: str


def load_prompt(role: Role, directory: Path = PROMPT_DIR) -> Prompt:
    path = directory / f"{role.value}.md"
    raw = path.read_text(encoding="utf-8")
    match = _VERSION.search(raw)
    if match is None:
        raise ValueError(f"{path} has no '<!-- prompt-version: ... -->' line")
    return Prompt(role=role, version=match.group(1), text=_VERSION.sub("", raw).strip())


def load_prompts(directory: Path = PROMPT_DIR) -> dict[Role, Prompt]:
    return {role: load_prompt(role, directory) for role in Role}
