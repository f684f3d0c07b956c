"""The repository map the models see: every file with its size, Python symbols with their
signatures, ranked, cut to the token budget (never over it), cached per blob."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from activities.repository import pysymbols, repomap
from activities.repository.gitcmd import git
from core.role_io import RoleContext
from tests.git_projects import commit_files, make_project

MODULE = '''"""A module."""


class Store(Base):
    def __init__(self, path: str) -> None: ...

    def get(self, key: str, default: int = 0) -> int: ...

    def _hidden(self) -> None: ...


async def fetch(url: str, *, retries: int = 3) -> bytes: ...


def _private() -> None: ...
'''


def _repo(tmp_path: Path, files: dict[str, str]) -> tuple[Path, str]:
    remote = make_project(tmp_path, files)
    return remote, git(remote, "rev-parse", "main")


def test_python_files_show_their_top_level_symbols_with_signatures(tmp_path: Path) -> None:
    remote, commit = _repo(tmp_path, {"store.py": MODULE, "notes.txt": "x" * 10})
    found = {e.path: e for e in repomap.entries(remote, commit)}
    assert found["store.py"].symbols == [
        "class Store(Base):",
        "  def __init__(self, path: str) -> None",
        "  def get(self, key: str, default: int=0) -> int",
        "async def fetch(url: str, *, retries: int=3) -> bytes",
        "def _private() -> None",
    ]
    assert found["notes.txt"].size == 10 and found["notes.txt"].symbols == []


@pytest.mark.parametrize("budget", [20, 60, 200, 5000])
def test_the_map_never_exceeds_its_budget_and_names_the_task_files_first(
    tmp_path: Path, budget: int
) -> None:
    files = {f"pkg/m{i}.py": MODULE for i in range(40)} | {"README.md": "# x\n", "z.py": ""}
    remote, commit = _repo(tmp_path, files)
    found = repomap.entries(remote, commit)
    context = repomap.render(found, budget, mentioned={"z.py"})
    assert context.tokens <= budget and context.files == 42
    if context.shown:
        assert context.text.startswith("z.py (0 B)")  # named by the task: first
    if budget == 5000:
        assert context.shown == 42 and "... and" not in context.text
    elif context.shown < 42:
        assert "more files" in context.text or context.tokens + 6 > budget


def test_symbols_are_cached_per_blob_and_a_new_commit_parses_only_its_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    remote, commit = _repo(tmp_path, {"a.py": "def a() -> None: ...\n", "c.py": "C = 1\n"})
    cache = tmp_path / "cache"
    parsed: list[str] = []
    real = pysymbols.symbols

    def counting(source: str) -> list[str]:
        parsed.append(source)
        return real(source)

    monkeypatch.setattr(pysymbols, "symbols", counting)
    first = repomap.entries(remote, commit, cache)
    assert len(parsed) == 2 and (cache / repomap.SYMBOLS_FILE).exists()
    blob = git(remote, "rev-parse", f"{commit}:a.py")
    kept = json.loads((cache / repomap.SYMBOLS_FILE).read_text())
    assert kept[blob] == ["def a() -> None"]
    kept[blob] = ["from the cache"]
    (cache / repomap.SYMBOLS_FILE).write_text(json.dumps(kept))
    side = tmp_path / "side"
    git(None, "clone", "-q", str(remote), str(side))
    newer = commit_files(side, {"b.py": "def b(): ...\n", "c.py": "C = 2\n"}, "b")
    git(side, "push", "-q", "origin", "HEAD:main")
    parsed.clear()
    found = {e.path: e.symbols for e in repomap.entries(remote, newer, cache)}
    assert found == {"a.py": ["from the cache"], "b.py": ["def b()"], "c.py": []}
    assert sorted(parsed) == ["C = 2\n", "def b(): ...\n"]  # a.py's blob did not change
    assert [e.symbols for e in first if e.path == "a.py"] == [["def a() -> None"]]


def test_the_cache_keeps_the_current_tree_when_it_outgrows_it(tmp_path: Path) -> None:
    remote, commit = _repo(tmp_path, {"a.py": "def a(): ...\n"})
    cache = tmp_path / "cache"
    cache.mkdir()
    old = {f"{n:040x}": ["def gone()"] for n in range(repomap.KEPT_PER_FILE)}
    (cache / repomap.SYMBOLS_FILE).write_text(json.dumps(old))
    repomap.entries(remote, commit, cache)
    kept = json.loads((cache / repomap.SYMBOLS_FILE).read_text())
    assert kept == {git(remote, "rev-parse", f"{commit}:a.py"): ["def a()"]}
    (cache / repomap.SYMBOLS_FILE).write_text("not json")  # a broken cache is rebuilt
    assert repomap.entries(remote, commit, cache)[0].symbols == ["def a()"]


def test_the_files_a_role_works_on_come_whole_within_their_budget(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text("A = 1\n")
    (tmp_path / "big.py").write_text("B = 2\n" * 1000)
    texts, used = repomap.file_texts(tmp_path, {"a.py", "big.py", "gone.py", "../x"}, 100)
    assert texts == {"a.py": "A = 1\n"} and used <= 100


def test_the_paths_a_task_names() -> None:
    context = RoleContext.model_validate(
        {
            "planning": {"summary": "p", "steps": [], "test_strategy": "t",
                         "files": ["inventory.py", "tests/test_x.py"]},
            "implementation": {"summary": "i", "commit": "c", "workspace": "w",
                               "files": [{"path": "x.py", "bytes": 1, "sha256": "h"}]},
            "failures": [{"test": "tests.test_x::test_one", "message": ""},
                         {"test": "(test run)", "message": ""}],
            "merge": {"conflicts": ["CHANGELOG.md"]},
        }
    )  # fmt: skip
    assert repomap.mentioned_paths(context) == {
        "inventory.py",
        "tests/test_x.py",
        "x.py",
        "CHANGELOG.md",
    }
