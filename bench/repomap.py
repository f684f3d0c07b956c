"""The repository map's cost: time to build it for this project's repository and for a
generated repository of 5,000 Python files, cold (from git objects) and cached (per commit),
and the share of the token budget the map uses. The budget is checked on every run.

    .venv/bin/python -m bench.repomap [--files 5000] [--budget 8000]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from activities import repomap
from activities.gitcmd import git
from core.exit import exit_now

ROOT = Path(__file__).resolve().parent.parent
RUNS = 5
MODULE = '''"""Module {n}."""


class Thing{n}:
    def __init__(self, size: int) -> None:
        self.size = size

    def grow(self, by: int = 1) -> int:
        self.size += by
        return self.size


def make_{n}(size: int, *, name: str = "x") -> Thing{n}:
    return Thing{n}(size)
'''


def generated(folder: Path, count: int) -> tuple[Path, str]:
    """A repository of `count` Python modules in 50 packages; its path and head commit."""
    repo = folder / "generated"
    for n in range(count):
        path = repo / f"pkg{n % 50}" / f"module_{n}.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(MODULE.format(n=n))
    git(None, "init", "-q", "-b", "main", str(repo))
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "generated")
    return repo, git(repo, "rev-parse", "HEAD")


def measure(repo: Path, commit: str, cache: Path, budget: int) -> dict[str, float]:
    cold, cached = [], []
    context = None
    for run in range(RUNS):
        folder = cache / f"run{run}"
        started = time.perf_counter()
        found = repomap.entries(repo, commit, folder)
        context = repomap.render(found, budget)
        cold.append(time.perf_counter() - started)
        started = time.perf_counter()
        found = repomap.entries(repo, commit, folder)
        context = repomap.render(found, budget)
        cached.append(time.perf_counter() - started)
    assert context is not None
    if context.tokens > budget:
        raise SystemExit(f"the map used {context.tokens} tokens of a {budget} budget")
    return {
        "files": context.files,
        "shown": context.shown,
        "cold_ms": statistics.median(cold) * 1000,
        "cached_ms": statistics.median(cached) * 1000,
        "tokens": context.tokens,
        "share": context.tokens / budget,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=5000)
    parser.add_argument("--budget", type=int, default=8000)
    args = parser.parse_args()
    head = git(ROOT, "rev-parse", "HEAD")
    with tempfile.TemporaryDirectory(prefix="qao-repomap-") as tmp:
        folder = Path(tmp)
        rows = [("this repository", measure(ROOT, head, folder / "own", args.budget))]
        repo, commit = generated(folder, args.files)
        name = f"generated, {args.files} modules"
        rows.append((name, measure(repo, commit, folder / "gen", args.budget)))
    print(f"repository map, budget {args.budget} tokens, median of {RUNS} runs")
    print(
        f"{'repository':<28} {'files':>6} {'shown':>6} {'cold ms':>9} {'cached ms':>10} "
        f"{'tokens':>7} {'budget':>7}"
    )
    for name, row in rows:
        print(
            f"{name:<28} {row['files']:>6.0f} {row['shown']:>6.0f} {row['cold_ms']:>9.1f} "
            f"{row['cached_ms']:>10.1f} {row['tokens']:>7.0f} {row['share']:>6.0%}"
        )


if __name__ == "__main__":
    exit_now(main)
