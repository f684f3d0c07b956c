"""A project: the git repository builds start from and deliver into, and how they do it.

Pure: the registry (workflows/project.py), the client, the API and the activities share these
types, and the version arithmetic is unit-tested without git.
"""

from __future__ import annotations

import posixpath
import re
from pathlib import PurePosixPath
from typing import Annotated, Literal

from packaging.version import InvalidVersion, Version
from pydantic import BaseModel, ConfigDict, Field, field_validator

Delivery = Literal["merge", "branch"]
Bump = Literal["patch", "minor", "major"]
# How a project's releases are tagged: `auto` follows its own highest version tag.
VersionScheme = Literal["auto", "semver", "v-semver", "none"]
PROJECT_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
PROJECT_ID_RULE = "letters, digits, '.', '_' and '-', up to 128, the first a letter or digit"
ProjectId = Annotated[str, Field(pattern=PROJECT_ID_PATTERN)]
BRANCH_CHARS = re.compile(r"^[A-Za-z0-9._/-]{1,200}$")


# The registry: one ProjectWorkflow (workflows/project.py) per project; its registration is
# also in its memo under MEMO_KEY, and a build joins its release queue by the update ENQUEUE.
PROJECT_WORKFLOW = "ProjectWorkflow"
MEMO_KEY = "project"
ENQUEUE = "enqueue"


def project_workflow_id(project_id: str) -> str:
    return f"project-{project_id}"


class ProjectConfig(BaseModel):
    """What a person registers for a project (PUT /api/projects/{id}, `starter.py project add`)."""

    model_config = ConfigDict(extra="forbid")

    repository: str = Field(
        min_length=1,
        max_length=2000,
        description="A local path or any URL git can clone (file://, ssh, https).",
    )
    branch: str = "main"
    test_command: str = Field(default="python -m pytest", max_length=2000)
    smoke_command: str = Field(default="", max_length=2000)
    setup_command: str = Field(
        default="",
        max_length=2000,
        description="Makes the project's environment (`sh -c`, in the sandbox), once per "
        "content of the files that declare its dependencies; empty: what the project declares "
        "(pyproject.toml, requirements files); network only with SANDBOX_SETUP_NETWORK.",
    )
    delivery: Delivery = "merge"
    version_scheme: VersionScheme = Field(
        default="auto",
        description="How releases are tagged: auto (the project's own form: 8.5.0 -> 8.6.0, "
        "v1.4.0 -> v1.5.0; v0.1.0 first), semver (no v), v-semver, none (no tag).",
    )

    _repository = field_validator("repository")(lambda cls, v: check_repository(v))
    _branch = field_validator("branch")(lambda cls, v: check_branch(v))


def check_repository(value: str) -> str:
    """A repository git is given (a registration's, a suite case's): an absolute path or a URL,
    never anything git would read as an option."""
    value = value.strip()
    if value.startswith("-"):
        raise ValueError("a repository must not start with '-': git would read it as an option")
    if not (is_url(value) or value.startswith("/")):
        raise ValueError(f"{value!r}: give an absolute path or a URL git can clone")
    return value


def check_branch(value: str) -> str:
    """A branch name git accepts (git's own check-ref-format has the last word)."""
    bad = (
        not BRANCH_CHARS.match(value)
        or value.startswith(("-", "/"))
        or value.endswith(("/", ".", ".lock"))
        or ".." in value
        or "//" in value
    )
    if bad:
        raise ValueError(f"{value!r} is not a branch name")
    return value


# The user and password of a URL (scheme://user:password@host): what `redact` masks.
_CREDENTIALS = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/@\s'\"]+)@")
MASK = "***"


def redact(text: str) -> str:
    """`text` with the user and password of every URL in it masked, so a repository URL that
    carries a token shows as `https://***:***@host/...` in prompts, logs, events and answers."""
    return _CREDENTIALS.sub(
        lambda m: f"{m['scheme']}{MASK}{':' + MASK if ':' in m['userinfo'] else ''}@", text
    )


def split_credentials(repository: str) -> tuple[str, str | None]:
    """An http(s) URL with a user or password (a token) as the URL without them and the line
    git's credential store keeps for it (`https://user:token@host/path`); any other repository
    as it is, with None. The credentials then live only in the store
    (activities/repository/gitcmd.py), never in the project's registration, a build's history
    or what is shown of either."""
    match = _CREDENTIALS.match(repository)
    if match is None or match["scheme"].lower() not in ("http://", "https://"):
        return repository, None
    return repository.replace(f"{match['userinfo']}@", "", 1), repository


def outside_roots(repository: str, roots: tuple[str, ...]) -> str | None:
    """Why `repository` is not one `roots` allows (None: it is, or there are no roots): a URL
    must start with one of the roots that are URLs, a path must lie in one of the folders."""
    if not roots:
        return None
    repository = split_credentials(repository)[0]
    if is_url(repository):
        if any(is_url(root) and repository.startswith(root) for root in roots):
            return None
    else:
        path = PurePosixPath(posixpath.normpath(repository))
        if any(not is_url(root) and path.is_relative_to(root) for root in roots):
            return None
    return f"{redact(repository)} is outside PROJECT_REPOSITORY_ROOTS ({', '.join(roots)})"


def is_url(repository: str) -> bool:
    """A URL git clones (scheme://...), or git's scp-like user@host:path (a colon before any
    slash)."""
    if "://" in repository:
        return True
    head, colon, _ = repository.partition(":")
    return bool(colon) and "/" not in head and len(head) > 1


class ProjectView(BaseModel):
    """A registered project as the registry answers for it."""

    project_id: str
    config: ProjectConfig
    created_by_system: bool = False  # a greenfield project's repository, made by the system
    head: str | None = None  # the branch's commit when the registry last checked it
    release_queue: list[str] = Field(default_factory=list)  # build ids, the turn's holder first

    def shown(self) -> ProjectView:
        """The view as people see it (the API, the CLI): the repository's credentials masked."""
        config = self.config.model_copy(update={"repository": redact(self.config.repository)})
        return self.model_copy(update={"config": config})


class RepositoryCheck(BaseModel):
    """The registry's question to git: can this branch of this repository be cloned?"""

    project_id: str
    config: ProjectConfig


class RepositoryChecked(BaseModel):
    head: str  # the branch's commit


class NewRepository(BaseModel):
    """A greenfield project's repository, made by the system under PROJECTS_DIR."""

    project_id: str


class NewRepositoryMade(BaseModel):
    repository: str
    head: str


class QueueJoin(BaseModel):
    """A build asks for its turn to deliver into its project (the project's release queue)."""

    project_id: str
    workflow_id: str  # the build's workflow, which the registry signals when its turn comes
    build_id: str
    ticket: int  # the build's n-th join: a grant for an earlier one is stale
    check_seconds: float = 60  # how often the holder is asked whether it still runs


class QueuePlace(BaseModel):
    ahead: list[str]  # the builds before this one, the turn's holder first
    # First in the queue: the turn is the build's with this answer (no release_turn signal).
    granted: bool = False


class ReleaseTurn(BaseModel):
    """The registry's signal to a build: its ticket holds the turn."""

    ticket: int


class QueueLeave(BaseModel):
    workflow_id: str
    ticket: int


class ProjectStart(BaseModel):
    """The registry's input: its project's id, and its state when it continues as new."""

    project_id: ProjectId
    view: ProjectView | None = None
    queue: list[QueueJoin] = []
    granted: QueueJoin | None = None  # the last holder told it holds the turn


def parse_tag(tag: str) -> tuple[str, Version] | None:
    """A version tag's prefix (`v` or nothing) and its PEP 440 version (`8.5.0`, `v1.4.0`,
    `2.0rc1`, `5.1`); None for a tag that is no version."""
    prefix = tag[:1] if tag[:1] in ("v", "V") else ""
    try:
        return prefix, Version(tag[len(prefix) :])
    except InvalidVersion:
        return None


def version_of(tag: str) -> Version | None:
    parsed = parse_tag(tag)
    return parsed[1] if parsed else None


def is_final(version: Version) -> bool:
    return not (version.is_prerelease or version.is_devrelease or version.local)


def next_version(tags: list[str], bump: Bump = "minor", scheme: VersionScheme = "auto") -> str:
    """The tag after the highest final release among `tags`, in the project's own form: `8.5.0`
    is followed by `8.6.0`, `v1.4.0` by `v1.5.0`, `5.1` by `5.2`; a pre-release (`2.0rc1`) is
    never the base. No version tag yet: `v0.1.0` (`0.1.0` with `semver`). `semver` and
    `v-semver` choose the prefix whatever the tags use; `none`: no tag (the empty string)."""
    if scheme == "none":
        return ""
    finals = [p for p in (parse_tag(t) for t in tags) if p is not None and is_final(p[1])]
    prefix, base = max(finals, key=lambda found: found[1], default=("v", Version("0.0.0")))
    if scheme != "auto":
        prefix = "v" if scheme == "v-semver" else ""
    numbers = [*base.release, 0, 0][:3]
    if bump == "major":
        numbers = [numbers[0] + 1, 0, 0]
    elif bump == "minor":
        numbers = [numbers[0], numbers[1] + 1, 0]
    else:
        numbers[2] += 1
    # As many numbers as the project writes (two in `5.1`), and all three a patch needs.
    shown = max(len(base.release), 3 if bump == "patch" else 2) if finals else 3
    epoch = f"{base.epoch}!" if base.epoch else ""
    return f"{prefix}{epoch}{'.'.join(str(n) for n in numbers[: min(shown, 3)])}"
