"""What the worker's path rule costs (activities/paths.py): a release export (a fresh private
folder, then staged) and the Code Writer's writes, against the code before it (an export into
a reused folder of the runs, and files written through `Path.write_bytes` after a `resolve()`
check), side by side in one run, alternating. On the example project and on a tree of 5,000
files.

    .venv/bin/python -m bench.paths [--runs 15] [--files 5000]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from activities import paths
from activities.delivery.landing import exported
from activities.delivery.targets import LocalReleases
from activities.repository.gitcmd import git
from activities.repository.workspace import Workspace
from core.exit import exit_now

ROOT = Path(__file__).resolve().parent.parent
AIM = 1.10  # no more than 10% slower


def project(folder: Path, files: int) -> Workspace:
    """A workspace whose one commit is the example project (files=0) or `files` small files
    in folders of 50."""
    ws = Workspace(folder / "ws")
    ws.repo.mkdir(parents=True)
    if files:
        for n in range(files):
            target = ws.repo / f"pkg{n // 50}" / f"mod{n}.py"
            target.parent.mkdir(exist_ok=True)
            target.write_text(f"VALUE = {n}\n")
    else:
        shutil.copytree(ROOT / "examples" / "inventory", ws.repo, dirs_exist_ok=True)
    git(None, "init", "-q", "-b", "main", str(ws.repo))
    ws.git("add", "-A")
    ws.git("-c", "user.name=b", "-c", "user.email=b@b", "commit", "-q", "-m", "tree")
    ws.runs.mkdir(parents=True)
    return ws


def export_before(ws: Workspace, releases: LocalReleases, n: int) -> None:
    staging = ws.runs / f"release-{n % 2}"  # a folder of the runs, used again
    shutil.rmtree(staging, ignore_errors=True)
    ws.export(ws.head(), staging)
    shutil.rmtree(releases.stage("p", f"0.{n}.0", staging).path)


def export_now(ws: Workspace, releases: LocalReleases, n: int) -> None:
    release = exported(ws, ws.head(), releases.stage, "p", f"0.{n}.0")
    paths.remove_tree(release.path)


def write_before(root: Path, names: list[str]) -> None:
    for name in names:
        target = (root / name).resolve()
        if not target.is_relative_to(root.resolve()):
            raise ValueError(name)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(b"X = 1\n")


def write_now(root: Path, names: list[str]) -> None:
    root.mkdir(exist_ok=True)
    for name in names:
        paths.write_beneath(root, name, b"X = 1\n")


def timed(runs: int, before: Callable[[int], None], now: Callable[[int], None]) -> list[float]:
    """p50 seconds of `before` and of `now`, alternating which goes first."""
    seconds: dict[str, list[float]] = {"before": [], "now": []}
    for n in range(runs):
        order = [("before", before), ("now", now)]
        for name, step in order if n % 2 == 0 else reversed(order):
            started = time.perf_counter()
            step(n)
            seconds[name].append(time.perf_counter() - started)
    return [statistics.median(seconds["before"]), statistics.median(seconds["now"])]


def row(what: str, before: float, now: float) -> str:
    ratio = now / before
    verdict = "met" if ratio <= AIM else "MISSED"
    return f"| {what} | {now * 1000:.1f} ms | {before * 1000:.1f} ms | {ratio:.2f} ({verdict}) |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--files", type=int, default=5000)
    args = parser.parse_args()
    how = "openat2" if paths.has_openat2() else "O_NOFOLLOW walk"
    print(f"path helper: {how}; aim: ratio <= {AIM}")
    print("| measure (p50) | with the path rule | before | ratio |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="qao-bench-paths-") as tmp:
        folder = Path(tmp)
        for label, files in (("example project", 0), (f"{args.files}-file tree", args.files)):
            ws = project(folder / label.replace(" ", "-"), files)
            releases = LocalReleases(folder / f"releases-{files}")
            before, now = timed(
                args.runs,
                lambda n, ws=ws, r=releases: export_before(ws, r, n),  # type: ignore[misc]
                lambda n, ws=ws, r=releases: export_now(ws, r, n),  # type: ignore[misc]
            )
            print(row(f"release export, {label}", before, now), flush=True)
        names = [f"pkg{n // 50}/mod{n}.py" for n in range(args.files)]
        before, now = timed(
            max(3, args.runs // 3),
            lambda n: write_before(folder / f"before-{n}", names),
            lambda n: write_now(folder / f"now-{n}", names),
        )
        print(row(f"Code Writer writes {args.files} new files", before, now), flush=True)
        for n in range(max(3, args.runs // 3)):
            paths.remove_tree(folder / f"before-{n}")
        before, now = timed(
            max(3, args.runs // 3),
            lambda n: write_before(folder / f"now-{n % 1}", names),
            lambda n: write_now(folder / f"now-{n % 1}", names),
        )
        print(row(f"Code Writer rewrites {args.files} files", before, now), flush=True)


if __name__ == "__main__":
    exit_now(main)
