"""The Code Writer's answer as plain text (edit format `blocks`): code travels as the model
writes it best, not escaped inside JSON. Parsed strictly into the same ImplementationOutput the
JSON answer gives, so the same checks (activities/paths.py) and edits apply.

The format, after Aider's edit blocks (a path on its own line, then a fenced block):

    A line or two on what changed.

    src/app.py
    ```python
    <<<<<<< SEARCH
    def greet(name):
    =======
    def greet(name: str) -> str:
    >>>>>>> REPLACE
    ```

    tests/test_new.py
    ```python
    the whole new file
    ```

    DELETE old/module.py
    RENAME old/name.py -> new/name.py

A fenced block holding SEARCH/REPLACE sections edits the file (each SEARCH text must occur
exactly once); one without them is the whole file. A file whose text holds a line of three
backticks is fenced with more of them. The prose outside the blocks is the summary.
"""

from __future__ import annotations

import re

from core.role_io import FileEdit, ImplementationOutput, SourceFile

SEARCH, DIVIDER, REPLACE = "<<<<<<< SEARCH", "=======", ">>>>>>> REPLACE"
_FENCE = re.compile(r"^(`{3,})[\w+.-]*\s*$")
_DELETE = re.compile(r"^DELETE\s+(\S.*?)\s*$")
_RENAME = re.compile(r"^RENAME\s+(\S.*?)\s+->\s+(\S.*?)\s*$")
SUMMARY_CHARS = 2000
SHOWN_CHARS = 600  # of a block that could not be read, in the re-ask


# Appended to the Code Writer's system prompt when its edit format is blocks.
INSTRUCTIONS = """

## Answer format: edit blocks

Answer in plain text, not JSON. First a line or two on what you changed. Then, for each file:
- to change part of a file you were shown: its path on a line of its own, then a fenced block
  of one or more sections, each the exact lines as they are now and the lines that replace them:

path/to/file.py
```python
<<<<<<< SEARCH
the exact lines as they are in the file (enough of them to occur once)
=======
the lines that take their place
>>>>>>> REPLACE
```

- to write a new file, or a whole small one: its path on a line of its own, then the whole
  file in a fenced block (fence it with more backticks if it holds a line of three).
- to delete or rename a file, a line `DELETE path` or `RENAME old/path -> new/path`.

Paths are relative to the repository root.
"""


class BlocksInvalid(ValueError):
    """An answer that cannot be read as edit blocks: why, and the block (a model can act on)."""

    def __init__(self, why: str, block: str = "") -> None:
        shown = block if len(block) <= SHOWN_CHARS else block[:SHOWN_CHARS] + "\n..."
        super().__init__(f"{why}\n{shown}" if block else why)


def parse(text: str) -> ImplementationOutput:
    """The edits of an answer in the blocks format; BlocksInvalid if one cannot be read."""
    lines = text.splitlines()
    files: list[SourceFile] = []
    edits: list[FileEdit] = []
    prose: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        fence = _FENCE.match(line)
        if fence is None:
            if deleted := _DELETE.match(line):
                edits.append(FileEdit(kind="delete", path=_path(deleted.group(1))))
            elif renamed := _RENAME.match(line):
                old, new = _path(renamed.group(1)), _path(renamed.group(2))
                edits.append(FileEdit(kind="rename", path=old, to=new))
            else:
                prose.append(line)
            i += 1
            continue
        end = next((j for j in range(i + 1, len(lines)) if lines[j] == fence.group(1)), None)
        if end is None:
            raise BlocksInvalid("a fenced block is never closed:", "\n".join(lines[i : i + 12]))
        body = lines[i + 1 : end]
        block = "\n".join(lines[i : end + 1])
        while prose and not prose[-1].strip():
            prose.pop()
        if not prose:
            raise BlocksInvalid("a block has no file path on the line before it:", block)
        path = _path(prose.pop())
        if not path:
            raise BlocksInvalid("a block has no file path on the line before it:", block)
        if any(row.strip() == SEARCH for row in body):
            edits += _replacements(path, body, block)
        else:
            files.append(SourceFile(path=path, content="\n".join(body) + "\n" if body else ""))
        i = end + 1
    summary = "\n".join(prose).strip()[:SUMMARY_CHARS]
    if not files and not edits:
        raise BlocksInvalid("the answer holds no file block, no edit, no DELETE or RENAME line")
    return ImplementationOutput(summary=summary or "(no summary)", files=files, edits=edits)


def _path(raw: str) -> str:
    """A path as models write it on its own line: maybe in backticks or bold, maybe with a
    colon after it."""
    return raw.strip().removesuffix(":").strip("*`").removesuffix(":").strip()


def _replacements(path: str, body: list[str], block: str) -> list[FileEdit]:
    """The SEARCH/REPLACE sections of one block, in order."""
    found: list[FileEdit] = []
    state, search, replace = "outside", [], []  # type: ignore[var-annotated]
    for row in body:
        marker = row.strip()
        if state == "outside":
            if marker == SEARCH:
                state, search, replace = "search", [], []
            elif marker:
                raise BlocksInvalid(f"{path}: text outside a SEARCH/REPLACE section:", block)
        elif state == "search":
            if marker == SEARCH:
                raise BlocksInvalid(f"{path}: a SEARCH inside a SEARCH section:", block)
            if marker == REPLACE:
                raise BlocksInvalid(f"{path}: {REPLACE} before the section's {DIVIDER}:", block)
            if marker == DIVIDER:
                state = "replace"
            else:
                search.append(row)
        elif marker in (SEARCH, DIVIDER):
            raise BlocksInvalid(f"{path}: {marker} before the section's {REPLACE}:", block)
        elif marker == REPLACE:
            if not search:
                raise BlocksInvalid(
                    f"{path}: an empty SEARCH (write the whole file instead):", block
                )
            found.append(
                FileEdit(kind="replace", path=path, search=_text(search), replace=_text(replace))
            )
            state = "outside"
        else:
            replace.append(row)
    if state != "outside":
        raise BlocksInvalid(f"{path}: a SEARCH/REPLACE section is not finished:", block)
    return found


def _text(rows: list[str]) -> str:
    return "".join(f"{row}\n" for row in rows)


def render(output: ImplementationOutput) -> str:
    """An ImplementationOutput written in the blocks format (what `parse` reads back)."""
    parts = [output.summary.strip(), ""]
    for source in output.files:
        parts += [source.path, *_fenced(source.content, "")]
    for edit in output.edits:
        if edit.kind == "delete":
            parts += [f"DELETE {edit.path}", ""]
        elif edit.kind == "rename":
            parts += [f"RENAME {edit.path} -> {edit.to}", ""]
        elif edit.kind == "write":
            parts += [edit.path, *_fenced(edit.content, "")]
        else:
            rows = [SEARCH, *_rows(edit.search), DIVIDER, *_rows(edit.replace), REPLACE]
            parts += [edit.path, *_fenced("\n".join(rows), "")]
    return "\n".join(parts).rstrip() + "\n"


def _rows(text: str) -> list[str]:
    return text.removesuffix("\n").split("\n") if text else []


def whole_lines(text: str, edit: FileEdit) -> FileEdit:
    """A replace edit of `text` widened to the whole lines it touches (the blocks format is
    made of lines; an exact-text edit may start or end inside one)."""
    at = text.index(edit.search)
    start = text.rfind("\n", 0, at) + 1
    end = text.find("\n", at + len(edit.search))
    end = len(text) if end == -1 else end + 1
    before, after = text[start:at], text[at + len(edit.search) : end]
    return edit.model_copy(
        update={"search": before + edit.search + after, "replace": before + edit.replace + after}
    )


def _fenced(content: str, language: str) -> list[str]:
    longest = max((len(m) for m in re.findall(r"^`{3,}", content, re.M)), default=2)
    fence = "`" * max(3, longest + 1)
    rows = content.removesuffix("\n").split("\n") if content else []
    return [f"{fence}{language}", *rows, fence, ""]
