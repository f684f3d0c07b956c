"""A project's environment: what its first build spends making it (its setup) beside what the
next build of the unchanged project spends on it (found made, reused), in one run, each in a
workspace of its own as two builds have; and the test run that follows on each.

    .venv/bin/python -m bench.environments --repository PATH [--branch main]
        [--setup-command CMD] [--network]       # a real library (aim: second < 5% of first)
    .venv/bin/python -m bench.environments           # a generated setuptools project, offline
    .venv/bin/python -m bench.environments --quick   # its tests alone (CI: the script works)
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from activities.repository.gitcmd import git
from activities.repository.workspace import Remote, Workspace
from activities.sandbox.runs import Limits
from activities.testing import environment
from activities.testing.testrun import run_in
from bench.figures import Row, table
from core.exit import exit_now

AIM = 0.05
LIMITS = Limits(1800, 4096)
PROJECT = {  # its tests import its own source, in the checkout
    "pyproject.toml": (
        '[build-system]\nrequires = ["setuptools"]\nbuild-backend = "setuptools.build_meta"\n\n'
        '[project]\nname = "tiny"\nversion = "1.0"\n'
    ),
    "tiny/__init__.py": "def answer():\n    return 42\n",
    "tests/test_tiny.py": "def test_answer():\n    assert 6 * 7 == 42\n",
}


def generated(folder: Path, quick: bool) -> str:
    """A small setuptools project in a bare repository (no network needed to install it);
    `quick`: its tests alone, nothing to install (CI: the script works)."""
    remote, seed = folder / "remote.git", folder / "seed"
    git(None, "init", "-q", "--bare", "-b", "main", str(remote))
    git(None, "init", "-q", "-b", "main", str(seed))
    files = {n: t for n, t in PROJECT.items() if n.startswith("tests/")} if quick else PROJECT
    for name, text in files.items():
        (seed / name).parent.mkdir(parents=True, exist_ok=True)
        (seed / name).write_text(text)
    git(seed, "add", "-A")
    git(seed, "-c", "user.name=b", "-c", "user.email=b@b", "commit", "-q", "-m", "tiny")
    git(seed, "push", "-q", str(remote), "main")
    return str(remote)


async def build(
    folder: Path, repository: str, branch: str, n: int, request: environment.Request
) -> tuple[float, float, str, str]:
    """One build's environment and test run: seconds of each, what made the environment, and
    the run's counts."""
    ws = Workspace(folder / f"build-{n}", Remote(repository, branch, f"bench{n}"))
    await asyncio.to_thread(ws.open)
    started = time.perf_counter()
    made = await environment.prepare(ws.repo, request, limits=LIMITS, scratch=ws.runs)
    setup = time.perf_counter() - started
    if not made.ok:
        raise SystemExit(f"build {n}: {made.describe()}")
    started = time.perf_counter()
    report = await run_in(ws.repo, ws.runs, f"bench-{n}", "python -m pytest", LIMITS, None, made)
    return setup, time.perf_counter() - started, made.describe(), report.counts.line()


async def main(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="qao-bench-env-") as tmp:
        folder = Path(tmp)
        repository = args.repository or generated(folder, args.quick)
        name = Path(args.repository).name if args.repository else "a generated project"
        request = environment.Request(
            store=folder / "environments", project="bench", setup_command=args.setup_command,
            network=args.network,
        )  # fmt: skip
        first = await build(folder, repository, args.branch, 1, request)
        second = await build(folder, repository, args.branch, 2, request)
    print(f"project: {name}")
    print(f"first build:  {first[2]}\n  tests: {first[3]}")
    print(f"second build: {second[2]}\n  tests: {second[3]}")
    share = second[0] / first[0]
    rows = [
        Row("environment, second build (reused)", f"{second[0] * 1000:.0f} ms",
            f"{first[0]:.1f} s (made)", f"{share:.3f}", f"< {AIM:g}", share < AIM),
        Row("test run, second build", f"{second[1]:.1f} s", f"{first[1]:.1f} s",
            f"{second[1] / first[1]:.2f}", "-", None),
    ]  # fmt: skip
    print(table(rows))
    return 0 if share < AIM else 1


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--repository", help="a repository git clones (default: generated)")
    parser.add_argument("--branch", default="main")
    parser.add_argument("--setup-command", default="")
    parser.add_argument("--network", action="store_true", help="as SANDBOX_SETUP_NETWORK=true")
    parser.add_argument("--quick", action="store_true", help="nothing to install (CI)")
    args = parser.parse_args()
    raise SystemExit(asyncio.run(main(args)))


if __name__ == "__main__":
    exit_now(cli)
