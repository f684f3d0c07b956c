"""`starter.py compare BUILD BUILD ...`: builds' score cards side by side, read from the
mirror (core/scores.py makes them), so a change of prompt or model can be judged by what it
did to builds."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table
from sqlmodel import Session

from cli.console import console
from core.build_io import build_id_from, workflow_id_for
from core.scores import ScoreCard
from core.settings import get_settings
from core.states import Role
from db.engine import make_engine
from db.scores import score_of


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} s"


def _hidden(card: ScoreCard) -> str:
    """An evaluation case's hidden tests on what the build delivered."""
    hidden = card.acceptance
    if hidden is None:
        return "-"
    if not hidden.tests_run:
        return hidden.summary[:60] or "not run"
    return f"{hidden.tests_run - hidden.failed} / {hidden.tests_run}"


def _role_rows(cards: list[ScoreCard]) -> list[tuple[str, list[str]]]:
    rows = []
    for role in Role:
        scores = [card.roles.get(role.value) for card in cards]
        if not any(scores):
            continue
        rows += [
            (f"{role.value}: calls (highest attempt)",
             [f"{s.calls} ({s.attempts})" if s else "-" for s in scores]),
            (f"{role.value}: tokens", [f"{s.tokens:,}" if s else "-" for s in scores]),
            (f"{role.value}: cost", [f"${s.cost_usd:.4f}" if s else "-" for s in scores]),
            (f"{role.value}: model @ prompt",
             [f"{', '.join(s.models)} @ {', '.join(s.prompt_versions)}" if s else "-"
              for s in scores]),
        ]  # fmt: skip
        if any(s and s.replayed for s in scores):  # a re-run's: answered from its original
            rows.append((f"{role.value}: recorded answers",
                         [str(s.replayed) if s else "-" for s in scores]))  # fmt: skip
    return rows


def comparison(cards: list[ScoreCard]) -> list[tuple[str, list[str]]]:
    """The rows of the comparison: a measure, then its value for each build in turn."""
    reasons = sorted({reason for card in cards for reason in card.loop_backs})
    tests = [card.tests for card in cards]
    rows: list[tuple[str, list[str]]] = [
        ("re-run of", [card.rerun_of or "-" for card in cards]),
        ("outcome", [card.outcome + (f" ({card.failure_reason})" if card.failure_reason else "")
                     for card in cards]),
        ("wall time", [_seconds(card.wall_seconds) for card in cards]),
        ("loop-backs", [str(sum(card.loop_backs.values())) for card in cards]),
        *((f"  {reason}", [str(card.loop_backs.get(reason, 0)) for card in cards])
          for reason in reasons),
        ("tests run", [f"{t.run:,}" if t else "-" for t in tests]),
        ("tests passed / failed", [f"{t.passed:,} / {t.failed:,}" if t else "-" for t in tests]),
        ("tests pre-existing", [f"{t.pre_existing:,}" if t else "-" for t in tests]),
        ("tests errors / skipped", [f"{t.errors:,} / {t.skipped:,}" if t else "-" for t in tests]),
        ("tests regressed", [str(t.regressed) if t else "-" for t in tests]),
        *([("hidden tests passed / run", [_hidden(card) for card in cards]),
           ("test infrastructure changed (the base's ran)",
            [", ".join(card.acceptance.integrity) or "none" if card.acceptance else "-"
             for card in cards])]
          if any(card.acceptance for card in cards) else []),
        ("tokens", [f"{card.tokens:,}" for card in cards]),
        ("cost", [f"${card.cost_usd:.4f}" for card in cards]),
    ]  # fmt: skip
    return rows + _role_rows(cards)


def compare(
    builds: Annotated[list[str], typer.Argument(help="Build ids (or workflow ids build-<id>).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the score cards as JSON.")] = False,
) -> None:
    """Set builds' score cards side by side: outcome, wall time, loop-backs per reason, tests,
    and per role its calls, tokens, cost, model and prompt version."""
    settings = get_settings()
    cards = []
    with Session(make_engine(settings.db_url())) as session:
        for build in builds:
            wf = workflow_id_for(build_id_from(build))
            card = score_of(session, workflow_id=wf)
            if card is None:
                console.print(f"[red]error:[/red] the mirror has no build {wf}")
                raise typer.Exit(1)
            cards.append(card)
    if as_json:
        console.print_json(f"[{','.join(card.model_dump_json() for card in cards)}]")
        return
    table = Table("", *(card.build_id for card in cards), title="score cards")
    for measure, values in comparison(cards):
        table.add_row(measure, *values)
    console.print(table)
