"""Re-runs and evaluation suites, measured beside their baselines in the same run:

    .venv/bin/python -m bench.evals              # 3 re-runs, a suite of 50 child builds
    .venv/bin/python -m bench.evals --quick      # 1 re-run, 4 children (CI: the script works)

On the drills' stack (chaos/stack.py: a file-backed dev server, worker.py, a SQLite mirror,
the offline model with no latency):
- a build and its re-run with no live roles: model tokens (target 0) and wall time, against
  the original's (median of the pairs);
- evals/offline.yaml under two configs, its cases repeated to 50 children, 4 at a time: the
  parent workflow's history (events, bytes, its largest event) against Temporal's limits
  (51,200 events, 50 MB, 2 MB a payload), and its wall time against the children's own.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from sqlmodel import Session

from bench.figures import Row, log, machine, table
from chaos.eval_drills import CONFIGS, SUITE, sized
from chaos.stack import Stack, stack
from client.builds import start_build
from client.evals import eval_run, start_eval
from client.reruns import start_rerun
from core.reruns import RerunChoices
from core.scores import ScoreCard
from db.engine import make_engine
from db.scores import score_of

HISTORY_EVENTS_LIMIT = 51_200
HISTORY_BYTES_LIMIT = 50 * 1024 * 1024
PAYLOAD_LIMIT = 2 * 1024 * 1024


def card(s: Stack, workflow_id: str) -> ScoreCard:
    engine = make_engine(s.settings.db_url())
    try:
        with Session(engine) as session:
            found = score_of(session, workflow_id=workflow_id)
    finally:
        engine.dispose()
    assert found is not None and found.finished, workflow_id
    return found


async def rerun_pairs(s: Stack, pairs: int) -> list[tuple[ScoreCard, ScoreCard]]:
    """`pairs` builds, each followed by its re-run with no live roles."""
    measured = []
    for n in range(pairs):
        original = await start_build(s.client, s.settings, s.request())
        await original.result()
        _, rerun = await start_rerun(
            s.client, s.settings, original.id, RerunChoices(), user_id="bench"
        )
        await rerun.result()
        measured.append((card(s, original.id), card(s, rerun.id)))
        log(f"re-run {n + 1}/{pairs}: {measured[-1][0].tokens} tokens -> {measured[-1][1].tokens}")
    return measured


async def suite(s: Stack, children: int) -> tuple[int, int, int, float, float]:
    """The suite run's parent history: events, bytes, largest event; its wall time, and the
    sum of its children's."""
    run = sized(eval_run(s.settings, SUITE, CONFIGS, parallel=4, user_id="bench"), children)
    started = time.monotonic()
    handle = await start_eval(s.client, s.settings, run)
    report = await handle.result()
    wall = time.monotonic() - started
    history = await handle.fetch_history()
    sizes = [event.ByteSize() for event in history.events]
    log(f"suite: {len(report.results)} children ended in {wall:.1f} s")
    children_wall = sum(r.wall_seconds or 0.0 for r in report.results)
    return len(sizes), sum(sizes), max(sizes), wall, children_wall


async def main(pairs: int, children: int) -> None:
    async with stack("sqlite") as s:
        await s.start_worker(OFFLINE_MODEL_LATENCY_SECONDS="0")
        await s.wait_for_worker()
        measured = await rerun_pairs(s, pairs)
        events, size, largest, wall, children_wall = await suite(s, children)
    tokens = statistics.median(o.tokens for o, _ in measured)
    rerun_tokens = statistics.median(r.tokens for _, r in measured)
    seconds = statistics.median(o.wall_seconds or 0.0 for o, _ in measured)
    rerun_seconds = statistics.median(r.wall_seconds or 0.0 for _, r in measured)
    rows = [
        Row("re-run, no live roles: model tokens", f"{rerun_tokens:,.0f}",
            f"{tokens:,.0f} (original)", f"{rerun_tokens / tokens:.2f}", "0",
            rerun_tokens == 0),
        Row("re-run, no live roles: wall time", f"{rerun_seconds:.2f} s",
            f"{seconds:.2f} s (original)", f"{rerun_seconds / seconds:.2f}", "-", None),
        Row(f"suite parent, {children} children: history events", f"{events:,}",
            f"{HISTORY_EVENTS_LIMIT:,} (limit)", f"{events / HISTORY_EVENTS_LIMIT:.4f}",
            "within the limit", events < HISTORY_EVENTS_LIMIT),
        Row(f"suite parent, {children} children: history bytes", f"{size:,}",
            f"{HISTORY_BYTES_LIMIT:,} (limit)", f"{size / HISTORY_BYTES_LIMIT:.4f}",
            "within the limit", size < HISTORY_BYTES_LIMIT),
        Row("suite parent: largest event", f"{largest:,}", f"{PAYLOAD_LIMIT:,} (payload limit)",
            f"{largest / PAYLOAD_LIMIT:.4f}", "within the limit", largest < PAYLOAD_LIMIT),
        Row(f"suite, {children} children 4 at a time: wall time", f"{wall:.1f} s",
            f"{children_wall:.1f} s (children's own, summed)", f"{wall / children_wall:.2f}",
            "-", None),
    ]  # fmt: skip
    print(f"machine: {machine()}")
    print(f"{len(measured)} re-run pairs, {children} children; offline model, SQLite mirror")
    print(table(rows))


def cli() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="1 re-run, 4 children (CI)")
    args = parser.parse_args()
    asyncio.run(main(1 if args.quick else 3, 4 if args.quick else 50))


if __name__ == "__main__":
    from core.exit import exit_now

    exit_now(cli)
