"""Evaluation runs (workflows/evals.py), read through Temporal: where a run is, its report once
it ended, and that report as a page a person looks at (pass@1 per config with its interval as
a chart, each build with how it ended and why). Runs are started with `starter.py eval`."""

from __future__ import annotations

import html
from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Path, status
from fastapi.responses import HTMLResponse
from pydantic import BaseModel
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowFailureError
from temporalio.service import RPCError, RPCStatusCode

from api.deps import ClientDep, SettingsDep
from api.schemas import answers
from core.eval_stats import Estimate
from core.eval_suites import EvalProgress, EvalReport, eval_workflow_id
from core.settings import Settings
from workflows.evals import EvalWorkflow

router = APIRouter(prefix="/api/evals", tags=["evaluations"], responses=answers(400, 401, 503))

RunId = Annotated[str, Path(pattern=r"^[a-z0-9]{4,16}$", description="The run's id.")]


class EvalRunView(BaseModel):
    """Where an evaluation run is: running (its progress), or ended (its report)."""

    run_id: str
    workflow_id: str
    state: Literal["running", "completed", "failed"]
    ui_url: str
    progress: EvalProgress | None = None
    report: EvalReport | None = None
    error: str | None = None


async def _view(client: Client, settings: Settings, run_id: str) -> EvalRunView:
    handle = client.get_workflow_handle_for(EvalWorkflow.run, eval_workflow_id(run_id))
    view = EvalRunView(
        run_id=run_id,
        workflow_id=handle.id,
        state="running",
        ui_url=settings.ui_link(handle.id),
    )
    try:
        described = await handle.describe()
        if described.status == WorkflowExecutionStatus.RUNNING:
            view.progress = await handle.query(EvalWorkflow.progress)
            return view
        view.report = await handle.result()
        view.state = "completed"
    except WorkflowFailureError as err:
        view.state, view.error = "failed", str(err.cause or err)
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no evaluation run {run_id}") from err
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE, f"evaluation run {run_id}: {err.message}"
        ) from err
    return view


@router.get("/{run_id}", responses=answers(404))
async def evaluation(run_id: RunId, client: ClientDep, settings: SettingsDep) -> EvalRunView:
    """The run's progress while it runs; its report (per config pass rate, pass@1, pass@K and
    pass^K with intervals, the configs compared, each build with how it ended and why) once it
    ended."""
    return await _view(client, settings, run_id)


@router.get("/{run_id}/report", response_class=HTMLResponse, responses=answers(404))
async def evaluation_page(run_id: RunId, client: ClientDep, settings: SettingsDep) -> str:
    """The run as a page: pass@1 per config with its 95% interval as a chart, the configs
    compared, and each build (a link to the Web UI) with how it ended and why."""
    view = await _view(client, settings, run_id)
    return page(view, settings)


BAR_WIDTH = 400


def _bar(name: str, estimate: Estimate, row: int) -> str:
    """One config's pass@1: a bar to its value and a whisker over its interval."""
    y = 10 + row * 34
    width, low, high = (int(BAR_WIDTH * v) for v in (estimate.value, estimate.low, estimate.high))
    return (
        f'<text x="0" y="{y + 16}">{html.escape(name)}</text>'
        f'<rect x="160" y="{y}" width="{max(width, 1)}" height="22" fill="#4c78a8"/>'
        f'<line x1="{160 + low}" y1="{y + 11}" x2="{160 + high}" y2="{y + 11}" '
        'stroke="#222" stroke-width="2"/>'
        f'<text x="{170 + BAR_WIDTH}" y="{y + 16}">{html.escape(estimate.text())}</text>'
    )


def page(view: EvalRunView, settings: Settings) -> str:
    """A self-contained page (no script, no request elsewhere) of the run."""
    title = f"evaluation {view.run_id}"
    parts = [f"<h1>{html.escape(title)}</h1>", f'<p><a href="{html.escape(view.ui_url)}">'
             "the run in the Temporal Web UI</a></p>"]  # fmt: skip
    report = view.report
    if report is None:
        done = len(view.progress.done) if view.progress else 0
        total = view.progress.total if view.progress else 0
        said = view.error or f"running: {done} of {total} builds ended"
        parts.append(f"<p>{html.escape(said)}</p>")
        return _document(title, parts)
    parts.append(f"<h2>pass@1 per config, 95% intervals ({html.escape(report.suite)})</h2>")
    height = 20 + 34 * len(report.stats)
    bars = "".join(_bar(s.config, s.pass_at_1, i) for i, s in enumerate(report.stats))
    parts.append(f'<svg width="{BAR_WIDTH + 330}" height="{height}" role="img">{bars}</svg>')
    rows = "".join(
        f"<tr><td>{html.escape(s.config)}</td><td>{s.pass_at_1.text()}</td>"
        f"<td>{s.pass_at_k.text() if s.pass_at_k else '-'}</td>"
        f"<td>{s.pass_hat_k.text() if s.pass_hat_k else '-'}</td></tr>"
        for s in report.stats
    )
    k = max((s.samples for s in report.stats), default=1)
    parts.append(
        f"<table><tr><th>config</th><th>pass@1</th><th>pass@{k}</th><th>pass^{k}</th></tr>"
        f"{rows}</table>"
    )
    if report.comparisons:
        items = "".join(f"<li>{html.escape(c.text())}</li>" for c in report.comparisons)
        parts.append(f"<h2>configs compared</h2><ul>{items}</ul>")
    builds = "".join(
        f"<tr><td>{html.escape(r.case)}</td><td>{html.escape(r.config)}</td>"
        f'<td><a href="{html.escape(settings.ui_link("build-" + r.build_id))}">'
        f"{html.escape(r.build_id)}</a></td>"
        f"<td>{'passed' if r.passed else html.escape(r.outcome)}</td>"
        f"<td>{html.escape(r.reason or '-')}</td></tr>"
        for r in report.results
    )
    parts.append(
        "<h2>builds</h2><table><tr><th>case</th><th>config</th><th>build</th><th>ended</th>"
        f"<th>why</th></tr>{builds}</table>"
    )
    return _document(title, parts)


def _document(title: str, parts: list[str]) -> str:
    style = (
        "body{font-family:sans-serif;margin:2em;max-width:70em}"
        "td,th{border-bottom:1px solid #ddd;padding:.3em .6em;text-align:left;vertical-align:top}"
        "table{border-collapse:collapse}svg text{font-size:14px}"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{style}</style></head><body>{''.join(parts)}</body></html>"
    )
