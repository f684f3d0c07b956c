"""The sandbox's cost per run of generated code: the demo project's test suite (the example
project with the offline Code Writer's feature module and tests) run through the Test
Auditor's path with SANDBOX=none and with each sandbox that works here, side by side in one
run, RUNS runs each, alternating.

    .venv/bin/python -m bench.sandbox [--runs 20]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from activities.model import offline
from activities.repository.gitcmd import git
from activities.sandbox import isolation
from activities.sandbox.runs import Limits
from activities.testing.testrun import run_command
from core.exit import exit_now

ROOT = Path(__file__).resolve().parent.parent
RUNS = 20
AIM_MS = 50.0
AIM_SHARE = 0.10


def workspace(folder: Path) -> Path:
    """The demo build's tree: the example project and a generated feature with its tests."""
    repo = folder / "repo"
    shutil.copytree(ROOT / "examples" / "inventory", repo)
    (repo / "dark_mode.py").write_text(
        offline._module_source("dark_mode", toggle_bug=False, smoke_bug=False)
    )
    (repo / "tests" / "test_dark_mode.py").write_text(offline._test_source("dark_mode"))
    git(None, "init", "-q", str(repo))
    return repo


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


async def measure(repo: Path, runs: int, kinds: list[isolation.Choice]) -> dict[str, list[float]]:
    seconds: dict[str, list[float]] = {kind: [] for kind in kinds}
    limits = Limits(120, 1024)
    for n in range(runs):
        for kind in kinds if n % 2 == 0 else reversed(kinds):  # alternating: neither goes first
            isolation.use(kind)
            started = time.perf_counter()
            report = await run_command(
                repo, repo.parent / "runs", f"b{n}", "python -m pytest", limits
            )
            seconds[kind].append(time.perf_counter() - started)
            if not report.passed:
                raise SystemExit(f"the suite failed under {kind}: {report.summary}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=RUNS)
    args = parser.parse_args()
    kinds: list[isolation.Choice] = ["none"]
    for kind in ("bubblewrap", "landlock"):
        try:
            isolation.choose(kind)
            kinds.append(kind)
        except isolation.SandboxUnavailable as err:
            print(f"{kind}: not measured ({err})")
    with tempfile.TemporaryDirectory() as folder:
        repo = workspace(Path(folder))
        seconds = asyncio.run(measure(repo, args.runs, kinds))
    base50 = statistics.median(seconds["none"]) * 1000
    base99 = percentile(seconds["none"], 0.99) * 1000
    print(f"\nThe demo build's test run (5 tests), {args.runs} runs per sandbox, alternating:\n")
    print("| sandbox | p50 ms | p99 ms | overhead p50 | of the test run | aim |")
    print("|---|---|---|---|---|---|")
    for kind in kinds:
        p50 = statistics.median(seconds[kind]) * 1000
        p99 = percentile(seconds[kind], 0.99) * 1000
        extra = p50 - base50
        share = extra / base50
        aim = (
            "-" if kind == "none" else ("met" if extra < AIM_MS and share < AIM_SHARE else "MISSED")
        )
        print(
            f"| {kind} | {p50:.0f} | {p99:.0f} | {extra:+.0f} ms | {share:+.0%} | "
            f"< {AIM_MS:.0f} ms and < {AIM_SHARE:.0%}: {aim} |"
        )
    print(f"\nbaseline (none): p50 {base50:.0f} ms, p99 {base99:.0f} ms")


if __name__ == "__main__":
    exit_now(main)
