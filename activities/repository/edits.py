"""The Code Writer's answer worked out before anything is written: whole files, exact-text
replacements (the search text must occur exactly once), deletions and renames; and the
refusals a model can act on when one does not apply (the file's closest lines, or where an
ambiguous text occurs), as Aider's editblock coder shows them."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import ClassVar

from core.contracts import Failure
from core.role_io import FileEdit, SourceFile

CLOSEST_CHARS = 2000


class AttemptRefused(ValueError):
    """The Code Writer's answer cannot be applied; the reason is for the model."""

    kind: ClassVar[Failure] = Failure.ATTEMPT_REFUSED


class UnsafePath(AttemptRefused):
    """A path the worker does not write or read for the model: outside the repository, in its
    `.git`, through a link, or a name the file system refuses."""

    kind = Failure.UNSAFE_PATH


class EditRefused(AttemptRefused):
    """An edit that does not apply: its search text is absent or ambiguous, its file missing."""

    kind = Failure.EDIT_REFUSED


class MergeUnresolved(AttemptRefused):
    """A merge of the project's branch still has conflicts after the Code Writer's files."""

    kind = Failure.MERGE_UNRESOLVED


def plan_edits(
    read: Callable[[str], bytes | None], files: list[SourceFile], edits: list[FileEdit]
) -> dict[str, bytes | None]:
    """What the edits leave of each file they touch (None: deleted), worked out before
    anything is written, on top of the whole files of the same answer; EditRefused with a
    reason the model can act on when one does not apply. `read` gives a file's bytes in the
    working tree (None: no such file), or UnsafePath for a path the worker does not touch."""
    state: dict[str, bytes | None] = {f.path: f.content.encode() for f in files}

    def current(path: str) -> bytes | None:
        return state[path] if path in state else read(path)

    changed: dict[str, bytes | None] = {}
    for number, change in enumerate(edits, 1):
        where = f"edit {number} ({change.kind} {change.path})"
        text = current(change.path)
        if change.kind == "write":
            state[change.path] = changed[change.path] = change.content.encode()
            continue
        if text is None:
            raise EditRefused(f"{where}: {change.path} does not exist; write it whole instead")
        if change.kind == "delete":
            state[change.path] = changed[change.path] = None
        elif change.kind == "rename":
            if not change.to or current(change.to) is not None:
                raise EditRefused(f"{where}: {change.to or '(no new path)'} exists already")
            state[change.to] = changed[change.to] = text
            state[change.path] = changed[change.path] = None
        else:
            state[change.path] = changed[change.path] = _replace(where, text, change)
    return changed


def _replace(where: str, data: bytes, change: FileEdit) -> bytes:
    text = data.decode(errors="replace")
    if not change.search:
        raise EditRefused(f"{where}: the search text is empty")
    count = text.count(change.search)
    if count == 1:
        return text.replace(change.search, change.replace, 1).encode()
    if count > 1:
        lines = _occurrences(text, change.search)
        raise EditRefused(
            f"{where}: the search text occurs {count} times (at lines "
            f"{', '.join(map(str, lines))}); include more of the lines around it"
        )
    start, closest = _closest(text, change.search)
    raise EditRefused(
        f"{where}: the search text is not in {change.path}; the closest lines "
        f"({start}-{start + closest.count(chr(10))}) are:\n{closest}"
    )


def _occurrences(text: str, search: str) -> list[int]:
    lines, at = [], text.find(search)
    while at != -1:
        lines.append(text.count("\n", 0, at) + 1)
        at = text.find(search, at + 1)
    return lines


def _closest(text: str, search: str) -> tuple[int, str]:
    """The window of the file's lines most like `search` (as many lines), and where it starts."""
    lines = text.splitlines()
    size = max(1, len(search.splitlines()))
    best, start = -1.0, 0
    for i in range(max(1, len(lines) - size + 1)):
        ratio = difflib.SequenceMatcher(None, "\n".join(lines[i : i + size]), search).ratio()
        if ratio > best:
            best, start = ratio, i
    return start + 1, "\n".join(lines[start : start + size])[:CLOSEST_CHARS]
