"""The offline Code Writer's changelog line: an exact-text edit of the file it was shown, the
file written when the repository has none, and never a blind or repeated edit."""

from __future__ import annotations

from activities.model.offline import changelog_edit
from activities.repository.workspace import Workspace
from core.role_io import SourceFile

ENTRY = "- Dark mode: `dark_mode.py`"


def applied(text: str) -> str:
    [edit] = changelog_edit(ENTRY, {"files": {"CHANGELOG.md": text}})[1]
    if edit.kind == "write":
        return edit.content
    assert edit.kind == "replace" and text.count(edit.search) == 1
    return text.replace(edit.search, edit.replace)


def test_the_line_goes_first_under_unreleased():
    text = "# Changelog\n\n## Unreleased\n\n- Audit log\n\n## v0.1.0\n\n- First\n"
    assert applied(text) == (
        "# Changelog\n\n## Unreleased\n\n" + ENTRY + "\n- Audit log\n\n## v0.1.0\n\n- First\n"
    )
    assert (
        applied("## Unreleased\n\n## v0.1.0\n") == "## Unreleased\n\n" + ENTRY + "\n\n## v0.1.0\n"
    )
    assert applied("## Unreleased\n- Audit log\n") == "## Unreleased\n" + ENTRY + "\n- Audit log\n"


def test_a_changelog_without_the_section_gets_it_below_its_title_or_on_top():
    assert applied("# Changes\n\n## v0.1.0\n") == (
        "# Changes\n\n## Unreleased\n\n" + ENTRY + "\n\n## v0.1.0\n"
    )
    assert (
        applied("## v0.1.0\n- First\n") == "## Unreleased\n\n" + ENTRY + "\n\n## v0.1.0\n- First\n"
    )


def test_missing_it_is_written_and_present_it_is_left_alone():
    [written], edits = changelog_edit(ENTRY, {"files": {}, "repository_map": "app.py 10 B"})
    assert written.path == "CHANGELOG.md" and ENTRY in written.content and edits == []
    shown = "## Unreleased\n\n" + ENTRY + "\n"
    assert changelog_edit(ENTRY, {"files": {"CHANGELOG.md": shown}}) == ([], [])
    not_shown = {"files": {}, "repository_map": "CHANGELOG.md 90 KiB\napp.py 10 B"}
    assert changelog_edit(ENTRY, not_shown) == ([], [])


def test_the_edit_applies_through_the_workspace(tmp_path):
    ws = Workspace(tmp_path)
    ws.ensure()
    text = "# Changelog\n\n## Unreleased\n\n- Audit log\n"
    ws.write([SourceFile(path="CHANGELOG.md", content=text)], "seed")
    _, edits = changelog_edit(ENTRY, {"files": {"CHANGELOG.md": text}})
    ws.write([], "the feature's line", edits)
    assert (ws.repo / "CHANGELOG.md").read_text() == applied(text)
