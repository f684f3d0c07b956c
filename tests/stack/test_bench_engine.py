"""The engine benchmark keeps working (`python -m bench --quick`; figures are not asserted, they
are noise). A module of its own: the longest of the bench scripts runs beside the others."""

from __future__ import annotations

import pytest

from tests.stack.test_bench import run_bench

pytestmark = pytest.mark.slow  # the benchmark and its own stack


@pytest.mark.timeout(330)  # past the run's own limit, so that limit is what a slow run meets
def test_engine_bench_runs_and_prints_every_measure():
    done = run_bench(["-m", "bench", "--quick"], timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    for measure in (
        "| build latency p50 |",
        "| build latency p99 |",
        "| build latency p50, against no repository |",
        "| build latency p99, against no repository |",
        "| throughput, 3 in flight |",
        "| reference: bare + 1 search-attribute upsert per step |",
        "| 6 builds at once complete | 6/6",
        "| worker peak RSS |",
        "| role schedule-to-start p95 |",
        "| history per build, events |",
        "| history per build, KiB |",
        "| API requests failed | 0/",
        "| API GET status p99, 3 builds running |",
        "| API GET list p99, 3 builds running |",
    ):
        assert measure in done.stdout, (measure, done.stdout)
    assert "targets missed:" in done.stdout
