"""The worker's path helper (activities/paths.py) on every path form a model or a repository
can give, with openat2 and with the O_NOFOLLOW walk the helper uses where there is none."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from activities import paths

REFUSED = {
    ".git/config": ".git",
    ".GIT/config": ".git",
    ".Git/HEAD": ".git",
    ".git./config": ".git",
    ".git /config": ".git",
    ".git../x": ".git",
    "sub/.git/config": ".git",
    ".\uff47\uff49\uff54/config": ".git",  # fullwidth letters: NFKC makes them .git
    ".git::$INDEX_ALLOCATION/x": ".git",
    "\u200d.git/config": "invisible",  # a zero-width joiner before .git
    ".g\u200bit/config": "invisible",
    "\ufeffapp.py": "invisible",
    "a\x00b.py": "invisible",
    "a\nb.py": "invisible",
    "a\u00a0b.py": "invisible",  # a no-break space
    "x" * 300 + ".py": "longer than 255",
    "a/" * 600 + "b": "longer than 1024",
    "../outside.py": "'..'",
    "a/../../b": "'..'",
    "/etc/passwd": "relative",
    "\\etc\\passwd": "relative",
    "a\\b.py": "relative",
    "~/x": "relative",
    "": "empty",
    "   ": "empty",
    "./": "names no file",
}
ACCEPTED = [".github/workflows/ci.yml", ".gitignore", "docs/.gitkeep", "src/pkg/mod.py",
            "./app.py", "a//b.py", "naïve.py", "git/config", "x.git/y"]  # fmt: skip


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_a_name_the_worker_does_not_open_is_refused_with_why(name: str) -> None:
    with pytest.raises(paths.PathRefused, match=REFUSED[name].replace("$", r"\$")):
        paths.check_name(name)


@pytest.mark.parametrize("name", ACCEPTED)
def test_plain_names_pass(name: str) -> None:
    assert paths.check_name(name)


@pytest.fixture(params=["openat2", "walk"])
def how(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    if request.param == "walk":
        monkeypatch.setattr(paths, "has_openat2", lambda: False)
    elif not paths.has_openat2():
        pytest.skip("this kernel has no openat2")
    yield request.param


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A root with a folder, a file, and links planted at every level."""
    root = tmp_path / "root"
    (root / "src").mkdir(parents=True)
    (root / "src" / "app.py").write_text("app")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("secret")
    (root / "out").symlink_to(outside)
    (root / "src" / "up").symlink_to("../out")
    (root / "src" / "file-link").symlink_to(outside / "secret")
    (root / "src" / "inside-link").symlink_to("app.py")
    return root


@pytest.mark.parametrize(
    "name", ["out/secret", "src/up/secret", "src/file-link", "src/inside-link", "out/new"]
)
def test_no_link_is_followed_on_the_way_or_at_the_end(tree: Path, how: str, name: str) -> None:
    with pytest.raises(paths.PathRefused, match="link"):
        paths.read_beneath(tree, name)
    if name != "src/file-link" and name != "src/inside-link":
        with pytest.raises(paths.PathRefused, match="link"):
            paths.write_beneath(tree, name, b"owned")
    assert (tree.parent / "outside" / "secret").read_text() == "secret"
    assert not (tree.parent / "outside" / "new").exists()


def test_a_link_in_the_files_place_is_replaced_not_written_through(tree: Path, how: str) -> None:
    paths.write_beneath(tree, "src/file-link", b"mine")
    assert not (tree / "src" / "file-link").is_symlink()
    assert (tree / "src" / "file-link").read_bytes() == b"mine"
    assert (tree.parent / "outside" / "secret").read_text() == "secret"


def test_a_hard_link_in_the_files_place_is_replaced_not_written_through(
    tree: Path, how: str
) -> None:
    victim = tree / "victim"
    victim.write_text("kept")
    os.link(victim, tree / "src" / "hard")
    paths.write_beneath(tree, "src/hard", b"mine")
    assert victim.read_text() == "kept"
    assert (tree / "src" / "hard").read_bytes() == b"mine"


def test_reads_writes_and_removes_plain_files(tree: Path, how: str) -> None:
    os.chmod(tree / "src" / "app.py", 0o755)
    paths.write_beneath(tree, "src/app.py", b"new")
    assert os.stat(tree / "src" / "app.py").st_mode & 0o777 == 0o755  # its mode kept
    paths.write_beneath(tree, "deep/er/new.py", b"made")
    assert paths.read_beneath(tree, "deep/er/new.py") == b"made"
    assert paths.read_beneath(tree, "missing/file.py") is None
    assert paths.exists_beneath(tree, "src/app.py") and not paths.exists_beneath(tree, "nope")
    paths.unlink_beneath(tree, "deep/er/new.py")
    assert not (tree / "deep" / "er" / "new.py").exists()
    paths.unlink_beneath(tree, "src/up")  # a link itself may go
    assert not (tree / "src" / "up").is_symlink()
    with pytest.raises(paths.PathRefused, match="folder"):
        paths.write_beneath(tree, "src", b"x")
    with pytest.raises(paths.PathRefused):
        paths.write_beneath(tree, "src/app.py/inner.py", b"x")  # a file under a file
    assert not list(tree.rglob(".qao-write-*"))  # no temporary file left by a refusal


def test_remove_tree_opens_up_what_a_run_locked_and_never_follows_a_link(tmp_path: Path) -> None:
    keep = tmp_path / "keep"
    keep.mkdir()
    (keep / "file").write_text("kept")
    doomed = tmp_path / "doomed"
    (doomed / "locked" / "inner").mkdir(parents=True)
    (doomed / "locked" / "inner" / "f").write_text("x")
    (doomed / "link").symlink_to(keep)
    os.chmod(doomed / "locked" / "inner", 0o500)
    os.chmod(doomed / "locked", 0o000)
    paths.remove_tree(doomed)
    assert not doomed.exists() and (keep / "file").read_text() == "kept"
    link = tmp_path / "a-link"
    link.symlink_to(keep)
    paths.remove_tree(link)  # the link goes, not what it points to
    assert not link.is_symlink() and (keep / "file").exists()


def test_a_fresh_folder_is_new_and_private(tmp_path: Path) -> None:
    one, two = paths.fresh(tmp_path / "p", "run-"), paths.fresh(tmp_path / "p", "run-")
    assert one != two and not any(one.iterdir())
    assert os.stat(one).st_mode & 0o777 == 0o700
