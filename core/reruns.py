"""Re-runs: a new build of an earlier one's project, base commit and requirements, whose roles
not marked live answer from the earlier build's kept answers (activities/model/answers.py),
call by call, while the real work (edits, tests, checks, delivery) runs again for real.

A re-run delivers to a branch of its own (`build/<id>`, `branch` delivery): it never moves the
project's branch, never tags and never switches the project's current release, whatever the
original did. What the workflow carries is `Rerun` (in the build's options); what each role
call carries is its `Replay`."""

from __future__ import annotations

import hashlib

from pydantic import BaseModel, ConfigDict, Field, field_validator

from core.projects import ProjectConfig
from core.states import Role

MAX_PROMPT_CHARS = 20_000  # a prompt travels in the build's history: it stays small


class PromptText(BaseModel):
    """A role's system prompt given for a re-run (`--prompt ROLE=FILE`): its text, and the
    version the score card shows (the file's name and the text's hash)."""

    model_config = ConfigDict(extra="forbid")

    text: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    version: str = Field(min_length=1, max_length=200)

    @classmethod
    def of(cls, name: str, text: str) -> PromptText:
        digest = hashlib.sha256(text.encode()).hexdigest()[:8]
        return cls(text=text, version=f"{name}@{digest}")


class RerunChoices(BaseModel):
    """What a person chooses of a re-run: which roles call their models, with which model and
    prompt (a role given either is live), and what a divergence does."""

    model_config = ConfigDict(extra="forbid")

    live: list[Role] = Field(
        default_factory=list, description="Roles that call their models; the others answer "
        "from the original's kept answers.",
    )  # fmt: skip
    live_after_divergence: bool = Field(
        default=False,
        description="Where a live role leads the build to a call the original never made, "
        "call that role's model (else the build stops in needs_attention).",
    )
    models: dict[Role, str] = Field(default_factory=dict, description="A live role's model.")
    prompts: dict[Role, PromptText] = Field(
        default_factory=dict, description="A live role's system prompt."
    )

    @field_validator("live")
    @classmethod
    def _once(cls, live: list[Role]) -> list[Role]:
        return sorted(set(live), key=list(Role).index)


class Rerun(RerunChoices):
    """What makes a build a re-run of `original`: the choices, and where it starts."""

    original: str = Field(min_length=1, max_length=64, description="The build re-run.")
    base: str = Field(
        pattern=r"^[0-9a-f]{7,64}$", description="The commit the original build started from."
    )

    def live_roles(self) -> list[Role]:
        """The roles that call their models: marked live, or given a model or a prompt."""
        return [role for role in Role if self.replay(role).live]

    def replay(self, role: Role) -> Replay:
        """What `role`'s calls carry: live or answered from the recording; the model and the
        prompt given for it."""
        prompt = self.prompts.get(role)
        return Replay(
            original=self.original,
            live=role in self.live or role in self.models or prompt is not None,
            live_after_divergence=self.live_after_divergence,
            model=self.models.get(role),
            prompt=prompt,
        )


class Replay(BaseModel):
    """How a role call is answered: from `original`'s kept answers unless `live` (a re-run),
    and by which model and prompt when they are not the role's own (a re-run's live role, an
    evaluation's config)."""

    original: str | None = None
    live: bool = False
    live_after_divergence: bool = False
    model: str | None = None  # the live role's model, in place of its setting
    prompt: PromptText | None = None  # the live role's system prompt, in place of its own


def scratch_project(project: ProjectConfig) -> ProjectConfig:
    """The project as a re-run works on it: delivered to the build's own branch (no merge into
    the project's branch, no tag, no release switched)."""
    return project.model_copy(update={"delivery": "branch", "version_scheme": "none"})
