"""What a build that is one case of an evaluation suite (core/eval_suites.py) carries in its
options: where it starts, the models and prompts of its config, and the hidden tests it is
scored with after delivery. No role task carries any of it (core/rules.py builds those from
the request's other parts); the hidden tests are written only into a fresh checkout of the
delivered commit (activities/evals.py), as SWE-bench does."""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field, field_validator

from core.reruns import PromptText, Replay
from core.states import Role

NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,23}$"
MAX_HIDDEN_CHARS = 100_000  # hidden tests travel in the child's history: they stay small
_UNSAFE_PART = re.compile(r"^(|\.|\.\.|\.git)$")


class HiddenTests(BaseModel):
    """Acceptance tests the roles never see: `files` (path in the repository -> text) are
    written into a fresh checkout of the delivered commit, then `command` runs there in the
    sandbox, as the project's tests do."""

    model_config = ConfigDict(extra="forbid")

    files: dict[str, str] = Field(min_length=1)
    command: str = Field(default="python -m pytest -q", min_length=1, max_length=2000)
    # A mined case's (client/mining.py): the tests that failed at its base and passed at its
    # commit, and those that passed at both. Every hidden test must pass either way.
    fail_to_pass: list[str] = Field(default_factory=list, max_length=1000)
    pass_to_pass: list[str] = Field(default_factory=list, max_length=1000)

    @field_validator("files")
    @classmethod
    def _files(cls, files: dict[str, str]) -> dict[str, str]:
        for path in files:
            parts = path.split("/")
            if path.startswith("/") or any(_UNSAFE_PART.match(p) for p in parts):
                raise ValueError(f"{path!r}: a hidden test's path is relative, in the repository")
        size = sum(len(text) for text in files.values())
        if size > MAX_HIDDEN_CHARS:
            raise ValueError(f"hidden tests are {size} characters; at most {MAX_HIDDEN_CHARS}")
        return files


class ModelChoices(BaseModel):
    """A config's models and system prompts per role (a role not named keeps its setting)."""

    model_config = ConfigDict(extra="forbid")

    models: dict[Role, str] = Field(default_factory=dict)
    prompts: dict[Role, PromptText] = Field(default_factory=dict)

    def replay(self, role: Role) -> Replay | None:
        """What `role`'s calls carry: the model and prompt chosen for it (None: its own)."""
        model, prompt = self.models.get(role), self.prompts.get(role)
        if model is None and prompt is None:
            return None
        return Replay(live=True, model=model, prompt=prompt)


class Evaluation(BaseModel):
    """What makes a build one case of a suite run under one config (in its options): where it
    starts (its base commit; delivered to its own branch, as a re-run is) and the tests it is
    scored with after delivery."""

    model_config = ConfigDict(extra="forbid")

    run: str = Field(min_length=1, max_length=64)  # the suite run (its parent workflow's id)
    case: str = Field(pattern=NAME_PATTERN)
    config: str = Field(pattern=NAME_PATTERN)
    sample: int = Field(default=0, ge=0)  # which of the run's samples of its case and config
    base: str = Field(pattern=r"^[0-9a-f]{7,64}$")
    hidden: HiddenTests | None = None
    choices: ModelChoices = Field(default_factory=ModelChoices)


class Acceptance(BaseModel):
    """The hidden tests' run on the delivered commit."""

    passed: bool
    tests_run: int = 0
    failed: int = 0
    commit: str = ""
    summary: str = ""
    sandbox: str = ""
    # Test infrastructure the build changed (conftest.py, pytest's configuration, files Python
    # runs at start-up): the base's ran in their place (activities/testing/sealed.py).
    integrity: list[str] = Field(default_factory=list)
