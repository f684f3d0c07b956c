"""The repository map's cost, beside the map as it was built before (every Python file parsed
whole, cached per commit) in the same run: cold (no cache), again at the same commit, and at
a next commit that changes a few files (a moved base, the Code Writer's next attempt).

Repositories: this project's, a generated one shaped like a real project of 1,603 Python
modules (sympy's: median 6.7 KB, a tenth over 43 KB, up to 450 KB; 484 other files), and
with `--repository PATH` any git repository (a real one you cloned). The budget is checked
on every run.

    .venv/bin/python -m bench.repomap [--repository PATH] [--modules 1603] [--budget 8000]
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from activities.repository import pysymbols, repomap
from activities.repository.gitcmd import git
from core.exit import exit_now

ROOT = Path(__file__).resolve().parent.parent
RUNS = 3
CHANGED = 10  # Python files a next commit changes
# Sizes of a real project's modules (sympy: median 6,708 B, 90th percentile 43,370 B), and
# about as many bytes per definition (sympy: 690).
MEDIAN_BYTES, P90_BYTES, MAX_BYTES = 6708, 43370, 450_000
UNIT = '''

# --- part {n} -----------------------------------------------------------------------------

KNOWN_{n} = {{
    "zero": (0, "the additive identity"), "one": (1, "the multiplicative identity"),
    "two": (2, "the first prime"), "three": (3, "the first odd prime"),
    "four": (4, "the first square of a prime"), "five": (5, "a Fermat prime"),
    "six": (6, "the first perfect number"), "seven": (7, "a Mersenne prime"),
    "eight": (8, "the first cube of a prime"), "nine": (9, "an odd square"),
}}

class Solver{n}(Base{m}):
    """Solve the system of part {n}.

    Parameters
    ==========

    size : int
        How many unknowns the system has; each gets a row of the table below.
    name : str, optional
        What the solver is called in messages ("solver: {n}" unless given).

    Examples
    ========

    >>> s = Solver{n}(3)
    >>> s.solve([1, 2, 3], strict=True)
    [1, 2, 3]
    >>> s.solve([None, -1], strict=True)
    [0]

    See Also
    ========

    solve_{n}, Base{m}
    """

    def __init__(self, size: int, *, name: str = "solver: {n}") -> None:
        self.size = size  # how many unknowns
        self.name = name
        self.rows = [[0] * size for _ in range(size)]
        for i in range(size):
            self.rows[i][i] = 1

    def solve(self, values: list[int], strict: bool = False) -> list[int]:
        """Return the values that satisfy part {n}'s equations.

        With ``strict``, negative values are clipped to zero and missing ones dropped. The
        rows of the table are checked first: a singular row cannot be solved, and says so
        with its index and the solver's name.

        Parameters
        ==========

        values : list of int
            One value per unknown; None where the caller has none.
        strict : bool
            Clip and drop, as said above.

        Examples
        ========

        >>> Solver{n}(2).solve([3, None])
        [3]
        >>> Solver{n}(2).solve([-3], strict=True)
        [0]
        >>> Solver{n}(0).solve([])
        []
        """
        def check(x):
            return x if not strict else max(x, 0)
        out = []
        for index, value in enumerate(values):
            if value is None:
                continue
            if index < self.size and self.rows[index][index] == 0:
                raise ValueError(f"row {{index}} of {{self.name}} is singular")
            out.append(check(value))
        table = {{
            "a": 1, "b": (2, 3), "c": [4, {{5: 6}}], "d": "x: y",
            "e": [i * i for i in range(10)], "f": {{"g": {{"h": None}}}},
        }}
        if strict and not out:
            return [table["a"] - 1]
        total = sum(out)
        while total > 1000:
            total //= 2
        return out if total >= 0 else [abs(v) for v in out]

    def _helper(self) -> str:
        parts = [self.name, str(self.size)]
        parts += [str(row) for row in self.rows[:3]]
        return ": ".join(parts)


def solve_{n}(values, *args, **options):
    """A shortcut: ``Solver{n}(len(values)).solve(values)``.

    Any error of the solver gives zeros, one per value: callers of this shortcut want a
    list of the same length whatever happens (the plotting helpers draw it as it is).

    >>> solve_{n}([1, 2])
    [1, 2]
    >>> solve_{n}([])
    []
    """
    # Empty input: nothing to solve, and Solver{n}(0) would build an empty table.
    if not values:
        return []
    solver = Solver{n}(len(values))
    try:
        return solver.solve(values, **options)
    except ValueError:
        return [0 for _ in values]
'''


def baseline_entries(repo: Path, commit: str, cache: Path) -> list[repomap.Entry]:
    """The map's entries as built before: every Python file parsed whole, cached per commit."""
    cached = cache / f"{commit}.json"
    if cached.exists():
        return [repomap.Entry(**e) for e in json.loads(cached.read_text())]
    found, blobs = repomap.tree(repo, commit)
    texts = repomap._read_blobs(repo, list(blobs.values()))
    for entry in found:
        if entry.path in blobs:
            try:
                tree = ast.parse(texts.get(blobs[entry.path], ""))
            except (SyntaxError, ValueError):
                continue
            entry.symbols = pysymbols._symbols(tree)
    cache.mkdir(parents=True, exist_ok=True)
    cached.write_text(json.dumps([e.__dict__ for e in found]))
    return found


def generated(folder: Path, modules: int) -> Path:
    """A repository of `modules` Python modules in 40 packages, sized like a real project's,
    and a third as many other files."""
    repo = folder / "generated"
    rng = random.Random(7)
    sigma = math.log(P90_BYTES / MEDIAN_BYTES) / 1.2816
    for n in range(modules):
        size = min(MAX_BYTES, int(rng.lognormvariate(math.log(MEDIAN_BYTES), sigma)))
        parts = [f'"""Module {n} of a generated project."""\n\nfrom base import Base{n % 7}\n']
        while sum(map(len, parts)) < size:
            parts.append(UNIT.format(n=f"{n}_{len(parts)}", m=n % 7))
        path = repo / f"pkg{n % 40}" / f"module_{n}.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(parts))
    for n in range(modules // 3):
        path = repo / "docs" / f"page_{n}.rst"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("Text of the documentation.\n" * rng.randint(10, 200))
    git(None, "init", "-q", "-b", "main", str(repo))
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "generated")
    return repo


def prepared(repo: Path, folder: Path) -> tuple[Path, str, str]:
    """A clone of `repo` (sharing its objects; the repository itself is left as it is), its
    head, and a next commit that appends a function to CHANGED of its Python files."""
    clone = folder / "clone"
    git(None, "clone", "-q", "--shared", str(repo), str(clone))
    commit = git(clone, "rev-parse", "HEAD")
    listing = git(clone, "ls-files", "*.py").splitlines()
    for path in listing[:: max(1, len(listing) // CHANGED)][:CHANGED]:
        with (clone / path).open("a") as out:
            out.write("\n\ndef added_by_the_bench() -> None:\n    pass\n")
    git(clone, "-c", "user.name=bench", "-c", "user.email=bench@localhost", "commit",
        "-q", "-am", "bench: a next commit")  # fmt: skip
    return clone, commit, git(clone, "rev-parse", "HEAD")


Entries = Callable[[Path, str, Path], list[repomap.Entry]]


def timed(entries: Entries, repo: Path, commit: str, cache: Path, budget: int) -> float:
    started = time.perf_counter()
    context = repomap.render(entries(repo, commit, cache), budget)
    elapsed = time.perf_counter() - started
    if context.tokens > budget:
        raise SystemExit(f"the map used {context.tokens} tokens of a {budget} budget")
    return elapsed


def measure(repo: Path, commit: str, later: str, folder: Path, budget: int) -> dict[str, object]:
    """Median seconds of each way (cold, same commit, next commit), ours and the baseline."""
    row: dict[str, object] = {}
    for name, entries in (("ours", repomap.entries), ("baseline", baseline_entries)):
        cold, again, moved = [], [], []
        for run in range(RUNS):
            cache = folder / f"{name}-{run}"
            cold.append(timed(entries, repo, commit, cache, budget))
            again.append(timed(entries, repo, commit, cache, budget))
            moved.append(timed(entries, repo, later, cache, budget))
        row[name] = [statistics.median(cold), statistics.median(again), statistics.median(moved)]
    found = repomap.entries(repo, commit, None)
    context = repomap.render(found, budget)
    row.update(files=len(found), modules=sum(e.path.endswith(".py") for e in found),
               shown=context.shown, tokens=context.tokens)  # fmt: skip
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repository", type=Path, help="Also measure this git repository.")
    parser.add_argument("--modules", type=int, default=1603)
    parser.add_argument("--budget", type=int, default=8000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="qao-repomap-") as tmp:
        folder = Path(tmp)
        repos = [("this repository", ROOT)]
        repos.append((f"generated, {args.modules} modules", generated(folder, args.modules)))
        if args.repository:
            repos.append((str(args.repository), args.repository.resolve()))
        rows = []
        for number, (name, repo) in enumerate(repos):
            clone, commit, later = prepared(repo, folder / f"repo{number}")
            rows.append(
                (name, measure(clone, commit, later, folder / f"cache{number}", args.budget))
            )
    print(f"repository map, budget {args.budget} tokens, median of {RUNS} runs, seconds; "
          f"next commit: {CHANGED} Python files changed")  # fmt: skip
    print("| repository | files | modules | cold | baseline | same commit | baseline "
          "| next commit | baseline | map: files, tokens |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, row in rows:
        ours, base = row["ours"], row["baseline"]
        assert isinstance(ours, list) and isinstance(base, list)
        cells = " | ".join(f"{o:.3f} | {b:.3f}" for o, b in zip(ours, base, strict=True))
        print(f"| {name} | {row['files']} | {row['modules']} | {cells} | "
              f"{row['shown']}, {row['tokens']} |")  # fmt: skip


if __name__ == "__main__":
    exit_now(main)
