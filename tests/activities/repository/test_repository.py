"""A build's workspace on a project's repository, and delivery into it, against real git (a
bare repository as the remote); no Temporal."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from pydantic import ValidationError

from activities.delivery import pushes
from activities.repository.gitcmd import GitError, create_bare, git, remote_head
from activities.repository.workspace import AttemptRefused, MergeUnresolved, Remote, Workspace
from core.projects import ProjectConfig, next_version
from core.role_io import FileEdit, SourceFile
from tests.git_projects import make_project, push_change, tags_of, tree_of


def workspace(tmp_path: Path, remote: Path, build: str = "b1") -> Workspace:
    return Workspace(tmp_path / "workspaces" / build, Remote(str(remote), "main", build))


def test_a_workspace_starts_from_the_project_branch_on_a_build_branch(tmp_path: Path) -> None:
    remote = make_project(tmp_path)
    ws = workspace(tmp_path, remote)
    base = ws.open()
    assert base == remote_head(str(remote), "main")
    assert ws.git("rev-parse", "--abbrev-ref", "HEAD") == "build/b1"
    assert (ws.repo / "app.py").exists() and (ws.repo / "tests" / "test_app.py").exists()


def test_every_commit_is_kept_in_the_project_under_the_builds_refs(tmp_path: Path) -> None:
    remote = make_project(tmp_path)
    ws = workspace(tmp_path, remote)
    base = ws.open()
    commit, _ = ws.write([SourceFile(path="feature.py", content="X = 1\n")], "attempt 1")
    assert git(remote, "rev-parse", f"refs/builds/b1/{commit}") == commit
    assert git(remote, "rev-parse", "refs/heads/main") == base  # people's branches untouched
    assert "refs/heads/build/b1" not in git(remote, "for-each-ref", "--format=%(refname)")


def test_a_deleted_workspace_is_rebuilt_from_the_repository(tmp_path: Path) -> None:
    remote = make_project(tmp_path)
    ws = workspace(tmp_path, remote)
    ws.open()
    commit, _ = ws.write([SourceFile(path="feature.py", content="X = 1\n")], "attempt 1")
    shutil.rmtree(ws.root)  # another worker, a wiped disk
    again = workspace(tmp_path, remote)
    assert again.checkout(commit) == commit
    assert (again.repo / "feature.py").read_text() == "X = 1\n"
    assert (again.repo / "app.py").exists()


def test_a_ready_build_lands_as_a_fast_forward_with_the_next_tag(tmp_path: Path) -> None:
    remote = make_project(tmp_path)
    ws = workspace(tmp_path, remote)
    ws.open()
    head, _ = ws.write([SourceFile(path="feature.py", content="X = 1\n")], "attempt 1")
    landing = pushes.survey(ws, head, "minor")
    assert (landing.kind, landing.version) == ("ready", "v0.1.0")
    assert pushes.push(ws, landing)
    assert git(remote, "rev-parse", "refs/heads/main") == head
    assert tags_of(remote) == ["v0.1.0"]
    # Looked at again (a retry after a crash): landed, the same tag, nothing pushed twice.
    again = pushes.survey(ws, head, "minor")
    assert (again.kind, again.version) == ("landed", "v0.1.0")
    assert tags_of(remote) == ["v0.1.0"]


def test_a_moved_branch_is_merged_into_the_build_for_another_test(tmp_path: Path) -> None:
    remote = make_project(tmp_path)
    ws = workspace(tmp_path, remote)
    ws.open()
    head, _ = ws.write([SourceFile(path="feature.py", content="X = 1\n")], "attempt 1")
    theirs = push_change(remote, {"other.py": "Y = 2\n"}, "someone else's feature")
    landing = pushes.survey(ws, head, "minor")
    assert landing.kind == "moved" and landing.branch_head == theirs
    parents = git(remote, "rev-list", "--parents", "-n", "1", landing.commit).split()[1:]
    assert set(parents) == {head, theirs}  # pushed under the build's refs, both sides in it
    assert git(remote, "rev-parse", "refs/heads/main") == theirs  # nothing landed untested
    assert {"feature.py", "other.py"} <= tree_of(remote, landing.commit)


def test_a_conflicting_branch_names_the_files_and_leaves_no_merge_behind(tmp_path: Path) -> None:
    remote = make_project(tmp_path)
    ws = workspace(tmp_path, remote)
    ws.open()
    head, _ = ws.write([SourceFile(path="app.py", content="ours\n")], "attempt 1")
    push_change(remote, {"app.py": "theirs\n"}, "a change to the same lines")
    landing = pushes.survey(ws, head, "minor")
    assert (landing.kind, landing.conflicts) == ("conflict", ["app.py"])
    assert not (ws.repo / ".git" / "MERGE_HEAD").exists()
    assert ws.head() == head


def test_the_code_writer_resolves_a_conflicting_merge_by_writing_the_files(tmp_path: Path) -> None:
    remote = make_project(tmp_path)
    ws = workspace(tmp_path, remote)
    ws.open()
    head, _ = ws.write([SourceFile(path="app.py", content="ours\n")], "attempt 1")
    theirs = push_change(remote, {"app.py": "theirs\n", "other.py": "Y = 2\n"}, "same lines")
    ws.fetch()
    ws.checkout(head)
    assert ws.start_merge(theirs) == ["app.py"]
    with pytest.raises(MergeUnresolved, match=r"app\.py"):  # the conflicted file not written
        ws.write([SourceFile(path="new.py", content="")], "attempt 2")
    ws.checkout(head)
    ws.start_merge(theirs)
    with pytest.raises(MergeUnresolved, match=r"app\.py"):  # written with the markers left in
        ws.write([SourceFile(path="app.py", content="<<<<<<< HEAD\nours\n")], "attempt 2")
    ws.checkout(head)
    ws.start_merge(theirs)
    merged, _ = ws.write([SourceFile(path="app.py", content="ours and theirs\n")], "attempt 2")
    assert set(ws.git("rev-list", "--parents", "-n", "1", merged).split()[1:]) == {head, theirs}
    assert (ws.repo / "other.py").exists()
    assert pushes.survey(ws, merged, "minor").kind == "ready"


def test_a_version_is_never_taken_twice(tmp_path: Path) -> None:
    remote = make_project(tmp_path)
    first, second = workspace(tmp_path, remote, "b1"), workspace(tmp_path, remote, "b2")
    first.open()
    second.open()
    a, _ = first.write([SourceFile(path="a.py", content="")], "a")
    b, _ = second.write([SourceFile(path="b.py", content="")], "b")
    ready_a, ready_b = pushes.survey(first, a, "minor"), pushes.survey(second, b, "minor")
    assert ready_a.version == ready_b.version == "v0.1.0"
    assert pushes.push(first, ready_a)
    assert not pushes.push(second, ready_b)  # git refuses: the branch moved, the tag taken
    assert tags_of(remote) == ["v0.1.0"]
    moved = pushes.survey(second, b, "minor")
    assert moved.kind == "moved"
    ready = pushes.survey(second, moved.commit, "minor")
    assert (ready.kind, ready.version) == ("ready", "v0.2.0")
    assert pushes.push(second, ready)
    assert tags_of(remote) == ["v0.1.0", "v0.2.0"]
    assert {"a.py", "b.py", "app.py"} <= tree_of(remote)


@pytest.mark.parametrize(
    ("tags", "bump", "expected"),
    [
        ([], "minor", "v0.1.0"),
        ([], "patch", "v0.0.1"),
        ([], "major", "v1.0.0"),
        (["v1.2.3", "v1.10.0", "v1.9.9", "release-7", "v2.0rc1"], "minor", "v1.11.0"),
        (["v1.2.3"], "patch", "v1.2.4"),
        (["v1.2.3"], "major", "v2.0.0"),
    ],
)
def test_next_version(tags: list[str], bump: str, expected: str) -> None:
    assert next_version(tags, bump) == expected  # type: ignore[arg-type]


def test_a_greenfield_repository_is_made_once(tmp_path: Path) -> None:
    path = tmp_path / "projects" / "new.git"
    head = create_bare(path, "main")
    assert create_bare(path, "main") == head  # made already: left as it is
    assert git(path, "log", "--format=%s", "main") == "project created"


def test_git_refusals_carry_gits_reason(tmp_path: Path) -> None:
    remote = make_project(tmp_path)
    with pytest.raises(GitError, match="has no branch 'nope'"):
        remote_head(str(remote), "nope")
    with pytest.raises(GitError, match=r"does not appear to be a git repository|not found"):
        remote_head(str(tmp_path / "missing.git"), "main")


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"repository": "relative/path"}, "absolute path or a URL"),
        ({"repository": "--upload-pack=evil"}, "must not start with '-'"),
        ({"repository": "/r.git", "branch": "a..b"}, "not a branch name"),
        ({"repository": "/r.git", "branch": "-x"}, "not a branch name"),
        ({"repository": "/r.git", "delivery": "push"}, "'merge' or 'branch'"),
        ({"repository": "/r.git", "setup_command": "x" * 2001}, "at most 2000 characters"),
    ],
)
def test_a_registration_that_cannot_work_is_refused(fields: dict[str, str], problem: str) -> None:
    with pytest.raises(ValidationError, match=problem):
        ProjectConfig.model_validate(fields)


@pytest.mark.parametrize(
    "repository",
    ["/srv/git/app.git", "file:///srv/git/app.git", "https://h/x.git", "git@host:team/app.git"],
)
def test_paths_and_urls_git_clones_are_accepted(repository: str) -> None:
    assert ProjectConfig(repository=repository).repository == repository


def _land(ws: Workspace, files: dict[str, str], message: str) -> tuple[str, str]:
    """Write, then land on the project's branch; (the branch head before, the landed commit)."""
    ws.open()
    head, _ = ws.write([SourceFile(path=k, content=v) for k, v in files.items()], message)
    landing = pushes.survey(ws, head, "minor")
    assert landing.kind == "ready" and pushes.push(ws, landing)
    return landing.branch_head, head


def test_a_release_is_reverted_by_a_new_commit_also_under_a_later_release(tmp_path: Path) -> None:
    remote = make_project(tmp_path)
    first, later = workspace(tmp_path, remote, "b1"), workspace(tmp_path, remote, "b2")
    landed_from, landed = _land(first, {"feature.py": "X = 1\n"}, "feature")
    _land(later, {"later.py": "Y = 2\n"}, "a later release")
    history = git(remote, "rev-list", "main").split()
    done = pushes.revert(first, landed_from, landed, "b1")
    assert not done.conflicts and done.version == "v0.2.1"
    assert git(remote, "rev-parse", "main") == done.commit
    assert git(remote, "rev-list", "main").split()[1:] == history  # nothing rewritten
    assert "feature.py" not in tree_of(remote) and "later.py" in tree_of(remote)
    again = pushes.revert(first, landed_from, landed, "b1")  # a retry: found, not redone
    assert (again.commit, again.version) == (done.commit, "v0.2.1")
    assert tags_of(remote) == ["v0.1.0", "v0.2.0", "v0.2.1"]
    # The build goes on from the revert with its code as it was at `landed`.
    head = pushes.reapply(first, done.commit, landed_from, landed, "again")
    assert (first.repo / "feature.py").read_text() == "X = 1\n"
    assert (first.repo / "later.py").exists()
    assert git(remote, "rev-parse", f"refs/builds/b1/{head}") == head


def test_a_revert_that_conflicts_names_the_files_and_changes_nothing(tmp_path: Path) -> None:
    remote = make_project(tmp_path)
    first, later = workspace(tmp_path, remote, "b1"), workspace(tmp_path, remote, "b2")
    landed_from, landed = _land(first, {"feature.py": "X = 1\n"}, "feature")
    _land(later, {"feature.py": "X = 2\n"}, "a later change of the same lines")
    tip = git(remote, "rev-parse", "main")
    done = pushes.revert(first, landed_from, landed, "b1")
    assert done.conflicts == ["feature.py"] and done.version == ""
    assert git(remote, "rev-parse", "main") == tip and tags_of(remote) == ["v0.1.0", "v0.2.0"]


def _edit(**fields: str) -> FileEdit:
    return FileEdit.model_validate(fields)


def test_every_edit_kind_applies_on_top_of_whole_files(tmp_path: Path) -> None:
    ws = workspace(tmp_path, make_project(tmp_path))
    ws.open()
    edits = [
        _edit(kind="replace", path="app.py", search='f"Hello, {name}!"', replace='f"Hi, {name}!"'),
        _edit(kind="rename", path="tests/test_app.py", to="tests/test_greeting.py"),
        _edit(kind="replace", path="notes.md", search="draft", replace="final"),
        _edit(kind="delete", path="old.py"),
    ]
    files = [
        SourceFile(path="notes.md", content="a draft\n"),
        SourceFile(path="old.py", content=""),
    ]
    commit, refs = ws.write(files, "edits", edits)
    assert 'return f"Hi, {name}!"' in (ws.repo / "app.py").read_text()
    assert (ws.repo / "tests" / "test_greeting.py").exists()
    assert not (ws.repo / "tests" / "test_app.py").exists() and not (ws.repo / "old.py").exists()
    assert (ws.repo / "notes.md").read_text() == "a final\n"
    assert {"app.py", "tests/test_greeting.py", "notes.md"} <= {r.path for r in refs}
    assert git(ws.repo, "show", "--stat", "--format=", commit).count("|") >= 3


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (
            {"kind": "replace", "path": "app.py", "search": "return f'Hello, {name}'"},
            r"search text is not in app.py; the closest lines \(5-5\) are:\n"
            r'    return f"Hello, \{name\}!"',
        ),
        (
            {"kind": "replace", "path": "app.py", "search": "name"},
            r"occurs 2 times \(at lines 4, 5\); include more of the lines around it",
        ),
        ({"kind": "replace", "path": "nope.py", "search": "x"}, "nope.py does not exist"),
        ({"kind": "delete", "path": "nope.py"}, "nope.py does not exist; write it whole"),
        ({"kind": "rename", "path": "app.py", "to": "tests/test_app.py"}, "exists already"),
        ({"kind": "replace", "path": "../app.py", "search": "x"}, "'..' is refused"),
        ({"kind": "rename", "path": "app.py", "to": ".git/config"}, "off limits"),
    ],
)
def test_an_edit_that_does_not_apply_refuses_the_attempt_with_a_reason(
    tmp_path: Path, change: dict[str, str], reason: str
) -> None:
    ws = workspace(tmp_path, make_project(tmp_path))
    head = ws.open()
    good = SourceFile(path="new.py", content="X = 1\n")
    with pytest.raises(AttemptRefused, match=reason):
        ws.write([good], "attempt", [_edit(**change)])
    assert ws.head() == head and not (ws.repo / "new.py").exists()  # nothing was written
    assert ws.git("status", "--porcelain") == ""
