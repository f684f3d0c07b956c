"""What the models see of a repository: a map of its tree (every file's path and size; for
Python files their top-level classes and functions with signatures), ranked and cut to a
token budget, and the full text of the files a role is working on.

Built inside the role activities from the commit's git objects, never carried in workflow
history. What a Python file declares is cached per blob (a blob never changes), so a new
commit (a moved base, the Code Writer's next attempt) parses only the files it changed.
"""

from __future__ import annotations

import json
import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path

from activities import paths as beneath
from activities.repository import pysymbols
from activities.repository.gitcmd import git, git_bytes
from core.role_io import RoleContext

CHARS_PER_TOKEN = 4  # the estimate: English and code average about four characters a token
MAX_PARSED_BYTES = 200_000  # larger Python files are listed, not parsed
MAX_SHOWN_BYTES = 4_000_000  # more than any budget of tokens takes whole
KEY_FILES = ("README", "CHANGELOG", "pyproject.toml", "setup.py", "setup.cfg")


def tokens(text: str) -> int:
    """Estimated tokens of `text` (rounded up)."""
    return -(-len(text) // CHARS_PER_TOKEN)


@dataclass
class Entry:
    path: str
    size: int
    symbols: list[str] = field(default_factory=list)

    def render(self) -> str:
        head = f"{self.path} ({self.size} B)"
        return "\n".join([head, *(f"  {s}" for s in self.symbols)])


@dataclass
class RepoContext:
    """The map as a model gets it, with what it cost."""

    text: str
    files: int  # files in the tree
    shown: int  # files the map names
    tokens: int
    budget: int


SYMBOLS_FILE = "symbols.json"
KEPT_PER_FILE = 4  # the cache keeps at most this many blobs per Python file of the tree


def entries(repo: Path, commit: str, cache: Path | None = None) -> list[Entry]:
    """Every file of `commit` with its symbols. The symbols are cached per blob (its git
    object id) in `cache`: a commit parses only the Python files no earlier commit had."""
    found, blobs = tree(repo, commit)
    known = _load(cache)
    missing = sorted(set(blobs.values()) - known.keys())
    parsed = {sha: pysymbols.symbols(text) for sha, text in _read_blobs(repo, missing).items()}
    for entry in found:
        if entry.path in blobs:
            sha = blobs[entry.path]
            entry.symbols = parsed.get(sha, known.get(sha, []))
    if cache is not None and parsed:
        _save(cache, known | parsed, set(blobs.values()))
    return found


def tree(repo: Path, commit: str) -> tuple[list[Entry], dict[str, str]]:
    """Every file of `commit` (without symbols), and the blob of each Python file small
    enough to parse, by path."""
    listing = git(repo, "ls-tree", "-r", "-l", "--full-tree", commit)
    found: list[Entry] = []
    blobs: dict[str, str] = {}
    for line in listing.splitlines():
        meta, _, path = line.partition("\t")
        parts = meta.split()
        if len(parts) < 4 or parts[1] != "blob":
            continue
        size = int(parts[3]) if parts[3].isdigit() else 0
        found.append(Entry(path, size))
        if path.endswith(".py") and size <= MAX_PARSED_BYTES:
            blobs[path] = parts[2]
    return found, blobs


def _load(cache: Path | None) -> dict[str, list[str]]:
    """The cached symbols by blob ({} without a cache, or one that cannot be read)."""
    if cache is None:
        return {}
    try:
        loaded = json.loads((cache / SYMBOLS_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return loaded if isinstance(loaded, dict) else {}


def _save(cache: Path, symbols: dict[str, list[str]], current: set[str]) -> None:
    """Write the cache whole (atomically: a reader sees the old file or the new one). Past
    `KEPT_PER_FILE` blobs per file of the tree, only the current commit's are kept."""
    if len(symbols) > KEPT_PER_FILE * max(len(current), 1):
        symbols = {sha: found for sha, found in symbols.items() if sha in current}
    cache.mkdir(parents=True, exist_ok=True)
    target = cache / SYMBOLS_FILE
    tmp = target.with_name(f"{SYMBOLS_FILE}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(json.dumps(symbols))
    tmp.replace(target)


def _read_blobs(repo: Path, shas: list[str]) -> dict[str, str]:
    """The text of many blobs through one `git cat-file --batch`."""
    if not shas:
        return {}
    out = git_bytes(repo, "cat-file", "--batch", stdin="\n".join(shas).encode() + b"\n")
    texts, at = {}, 0
    while at < len(out):
        end = out.index(b"\n", at)
        sha, _, size = out[at:end].decode().split()
        start = end + 1
        texts[sha] = out[start : start + int(size)].decode(errors="replace")
        at = start + int(size) + 1
    return texts


def rank(found: list[Entry], mentioned: set[str]) -> list[Entry]:
    """Files the task names first, then the project's key files, then Python files with the
    most symbols, shallow paths before deep ones."""

    def key(entry: Entry) -> tuple[int, int, int, str]:
        named = entry.path in mentioned or Path(entry.path).name in mentioned
        keyfile = Path(entry.path).name.startswith(KEY_FILES)
        return (
            0 if named else 1 if keyfile else 2,
            -len(entry.symbols),
            entry.path.count("/"),
            entry.path,
        )

    return sorted(found, key=key)


def render(found: list[Entry], budget: int, mentioned: set[str] | None = None) -> RepoContext:
    """The ranked map, cut where the next file would exceed `budget` tokens (never over it):
    a file that does not fit whole is named without its symbols, then nothing more."""
    lines: list[str] = []
    used, shown = 0, 0
    ordered = rank(found, mentioned or set())
    for number, entry in enumerate(ordered):
        rest = len(ordered) - number - 1
        more = f"... and {rest} more files" if rest else ""
        for text in (entry.render(), f"{entry.path} ({entry.size} B)"):
            cost = tokens(text + "\n") + tokens(more)
            if used + cost <= budget:
                lines.append(text)
                used += tokens(text + "\n")
                shown += 1
                break
        else:
            left = len(ordered) - number
            tail = f"... and {left} more files"
            if used + tokens(tail) <= budget:
                lines.append(tail)
                used += tokens(tail)
            break
    text = "\n".join(lines)
    return RepoContext(text, len(found), shown, tokens(text), budget)


def mentioned_paths(context: RoleContext) -> set[str]:
    """Paths a role's context names: the plan's files, the files of earlier attempts, the
    test modules of failures, the files of a merge conflict."""
    names: set[str] = set()
    if context.planning:
        names |= set(context.planning.files)
    if context.implementation:
        names |= {f.path for f in context.implementation.files}
    for failure in context.failures or []:
        test = failure.test.split("::")[0]
        if test and not test.startswith("("):
            names.add(test.replace(".", "/") + ".py")
    if context.merge:
        names |= set(context.merge.conflicts)
    return {n for n in names if n and _PATH.match(n)}


_PATH = re.compile(r"^[\w./-]+$")


def file_texts(repo: Path, paths: set[str], budget: int) -> tuple[dict[str, str], int]:
    """The full text of each of `paths` that exists in the working tree, in name order, as
    many as fit in `budget` tokens; and the tokens used."""
    texts: dict[str, str] = {}
    used = 0
    for path in sorted(paths):
        try:  # a name the worker does not open (`.git`, a link on the way) is not shown
            data = beneath.read_beneath(repo, path, MAX_SHOWN_BYTES)
        except (beneath.PathRefused, OSError):
            continue
        if data is None:
            continue
        text = data.decode(errors="replace")
        cost = tokens(path) + tokens(text)
        if used + cost > budget:
            continue
        texts[path] = text
        used += cost
    return texts, used
