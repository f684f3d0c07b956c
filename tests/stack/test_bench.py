"""The benchmark scripts keep working (a short run; figures are not asserted, they are noise)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.helpers import ROOT

pytestmark = pytest.mark.slow  # the benchmark and its own stack


def run_bench(args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    """`python <args>` in the project's folder, its output kept as text."""
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


def test_stats_bench_runs_and_prints_its_table():
    done = run_bench(["-m", "bench.stats_bench", "--builds", "300", "--runs", "3"], timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert any(line.startswith("stats queries (db.crud)") for line in lines)
    assert any(line.startswith("GET .../project/{id}/stats (HTTP)") for line in lines)
    assert "sqlite, 300 builds in the project" in done.stdout


def test_repository_map_bench_runs_and_keeps_the_budget():
    done = run_bench(["-m", "bench.repomap", "--modules", "60", "--budget", "2000"], timeout=120)
    assert done.returncode == 0, done.stderr  # it exits non-zero if the map exceeds its budget
    assert "| this repository |" in done.stdout and "| generated, 60 modules |" in done.stdout


def test_sandbox_bench_runs_and_prints_each_sandbox_beside_none():
    done = run_bench(["-m", "bench.sandbox", "--runs", "2"], timeout=120)
    assert done.returncode == 0, done.stderr
    assert "| none |" in done.stdout and "| bubblewrap |" in done.stdout
    assert "| landlock |" in done.stdout


def test_environments_bench_prints_the_second_builds_setup_beside_the_firsts():
    done = run_bench(["-m", "bench.environments", "--quick"], timeout=180)
    assert done.returncode == 0, done.stderr
    assert "| environment, second build (reused) |" in done.stdout
    assert "reused (no setup ran)" in done.stdout


def test_paths_bench_runs_and_prints_each_measure_beside_before():
    done = run_bench(["-m", "bench.paths", "--runs", "3", "--files", "200"], timeout=120)
    assert done.returncode == 0, done.stderr
    for measure in ("release export, example project", "200-file tree", "writes 200 new files"):
        assert measure in done.stdout


def test_model_stream_bench_runs_and_prints_its_offline_measures_beside_their_baselines():
    done = run_bench(["-m", "bench.model_stream", "--quick", "--calls", "2"], timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    for measure in (
        "first token to `status`",
        "history of one build",
        "(offline, answering at once)",
        "straight to the server, streamed",
    ):
        assert measure in done.stdout, done.stdout


def test_evals_bench_runs_and_prints_each_measure_beside_its_baseline():
    done = run_bench(["-m", "bench.evals", "--quick"], timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    for measure in (
        "| re-run, no live roles: model tokens | 0 |",
        "| re-run, no live roles: wall time |",
        "| suite parent, 4 children: history events |",
        "| suite parent, 4 children: history bytes |",
        "| suite parent: largest event |",
    ):
        assert measure in done.stdout, done.stdout
