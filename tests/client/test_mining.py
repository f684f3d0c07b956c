"""Cases mined from a repository's history (client/mining.py), on a repository made here: a
commit that fixes code with a test is kept, one whose test passed before is dropped with its
reason, one that touches no test is no candidate; the suite written loads and names its
hidden tests."""

from __future__ import annotations

from pathlib import Path

from activities.repository.gitcmd import git
from client.evals import load_suite
from client.mining import mine, write_suite
from core.settings import Settings


def commit(repo: Path, message: str, files: dict[str, str]) -> str:
    for name, text in files.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(text)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")


async def test_a_commit_that_fixes_code_with_a_test_becomes_a_validated_case(
    settings: Settings, tmp_path: Path
) -> None:
    repo = tmp_path / "library"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    commit(repo, "first", {"lib.py": "def add(a, b):\n    return a - b\n",
                           "tests/test_lib.py": "import lib\n"})  # fmt: skip
    fix = commit(repo, "Fix add: it subtracted\n\nadd(2, 2) gave 0.", {
        "lib.py": "def add(a, b):\n    return a + b\n",
        "tests/test_lib.py": "import lib\n\n\ndef test_add():\n    assert lib.add(2, 2) == 4\n",
    })  # fmt: skip
    commit(repo, "Docs only", {"README.md": "lib\n"})
    already = commit(repo, "Refactor add, with a test it passed before", {
        "lib.py": "def add(a, b):\n    return sum((a, b))\n",
        "tests/test_more.py": "import lib\n\n\ndef test_zero():\n    assert lib.add(0, 0) == 0\n",
    })  # fmt: skip
    before = git(repo, "for-each-ref")

    said: list[str] = []
    mined = await mine(settings, str(repo), limit=5, say=said.append)

    assert (mined.scanned, mined.candidates, mined.branch) == (4, 2, "main")
    (case,) = mined.kept
    assert case.candidate.commit == fix and case.candidate.parent != fix
    assert case.fail_to_pass == ["tests.test_lib::test_add"] and case.pass_to_pass == []
    assert case.candidate.message.startswith("Fix add: it subtracted")
    assert mined.dropped == [
        (already, "every hidden test that passes at the commit passes at its base already")
    ]
    assert git(repo, "for-each-ref") == before  # the repository was copied, not written

    suite = write_suite(mined, str(repo), tmp_path / "mined", "mined-library")
    name, cases, _ = load_suite(suite, settings)
    (loaded,) = cases
    assert name == "mined-library" and loaded.base == case.candidate.parent
    assert loaded.hidden is not None and loaded.hidden.fail_to_pass == case.fail_to_pass
    assert "assert lib.add(2, 2) == 4" in loaded.hidden.files["tests/test_lib.py"]
