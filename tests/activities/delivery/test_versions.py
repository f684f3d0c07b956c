"""Releases continue the project's own version scheme: bare (`8.5.0`), `v`-prefixed, PEP 440
(`2.0rc1`, `5.1`), no tags at all, or a scheme a person chose; and a version the project's
files declare is never silently disagreed with. Against real git: a bare repository per
fixture project, delivered into by the real delivery code."""

from __future__ import annotations

from pathlib import Path

import pytest

from activities.delivery import pushes
from activities.repository.gitcmd import git
from activities.repository.workspace import Remote, Workspace
from core.projects import VersionScheme, next_version
from core.role_io import SourceFile
from tests.git_projects import make_project, tags_of

TABLE = [
    # tags, bump, scheme, next tag
    (["8.4.0", "8.5.0", "8.5.0rc1"], "minor", "auto", "8.6.0"),
    (["8.5.0"], "patch", "auto", "8.5.1"),
    (["8.5.0"], "major", "auto", "9.0.0"),
    (["v1.4.0", "v1.3.9"], "minor", "auto", "v1.5.0"),
    (["1.5.0", "2.0rc1", "2.0.0b2", "2.0.dev3"], "minor", "auto", "1.6.0"),  # no pre-release base
    (["5.1", "5.0"], "minor", "auto", "5.2"),
    (["5.1"], "patch", "auto", "5.1.1"),
    (["1.0", "1.0.post1"], "minor", "auto", "1.1"),
    (["release-7", "latest", "nightly"], "minor", "auto", "v0.1.0"),
    ([], "minor", "auto", "v0.1.0"),
    ([], "minor", "semver", "0.1.0"),
    (["8.5.0"], "minor", "v-semver", "v8.6.0"),
    (["v1.4.0"], "minor", "semver", "1.5.0"),
    (["8.5.0"], "minor", "none", ""),
]


@pytest.mark.parametrize(("tags", "bump", "scheme", "expected"), TABLE)
def test_the_next_tag_follows_the_projects_scheme(
    tags: list[str], bump: str, scheme: VersionScheme, expected: str
) -> None:
    assert next_version(tags, bump, scheme) == expected  # type: ignore[arg-type]


def released(tmp_path: Path, tags: list[str], scheme: VersionScheme, files: dict[str, str]) -> str:
    """Deliver one build into a project holding `tags` on its base; the tag it got."""
    remote = make_project(tmp_path, {"app.py": "X = 1\n", **files})
    seed = tmp_path / "seed"
    for tag in tags:
        git(seed, "tag", tag)
    if tags:
        git(seed, "push", "-q", "origin", "--tags")
    ws = Workspace(tmp_path / "ws", Remote(str(remote), "main", "b1"))
    ws.open()
    head, _ = ws.write([SourceFile(path="feature.py", content="Y = 2\n")], "attempt 1")
    landing = pushes.survey(ws, head, "minor", scheme)
    assert landing.kind == "ready" and pushes.push(ws, landing)
    assert git(remote, "rev-parse", "refs/heads/main") == head
    return landing.version


@pytest.mark.parametrize(
    ("tags", "scheme", "expected"),
    [(["8.4.0", "8.5.0"], "auto", "8.6.0"), (["v1.4.0"], "auto", "v1.5.0"),
     (["2.0rc1", "1.5"], "auto", "1.6"), ([], "auto", "v0.1.0"), (["8.5.0"], "none", "")],
)  # fmt: skip
def test_a_release_is_tagged_in_the_projects_own_form(
    tmp_path: Path, tags: list[str], scheme: VersionScheme, expected: str
) -> None:
    assert released(tmp_path, tags, scheme, {}) == expected
    remote = tmp_path / "remote.git"
    assert sorted(tags_of(remote)) == sorted([*tags, *([expected] if expected else [])])


@pytest.mark.parametrize(
    ("files", "declared"),
    [({"pyproject.toml": '[project]\nname = "cli"\nversion = "8.5.0"\n'}, "pyproject.toml"),
     ({"src/cli/__init__.py": '__version__ = "8.5.0"\n'}, "src/cli/__init__.py"),
     ({"pyproject.toml": '[project]\nname = "cli"\ndynamic = ["version"]\n',
       "cli/_version.py": "__version__: str = '8.5.0'\n"}, "cli/_version.py")],
)  # fmt: skip
def test_a_version_the_projects_files_declare_is_said_where_it_disagrees(
    tmp_path: Path, files: dict[str, str], declared: str
) -> None:
    version = released(tmp_path, ["8.5.0"], "auto", files)
    ws = Workspace(tmp_path / "ws", Remote(str(tmp_path / "remote.git"), "main", "b1"))
    said = pushes.disagreement(ws, ws.head(), version)
    assert said.startswith(f"{declared} declares version 8.5.0, the release is tagged 8.6.0")
    assert pushes.disagreement(ws, ws.head(), "8.5.0") == ""  # agreeing: nothing to say
