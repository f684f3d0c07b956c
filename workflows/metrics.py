"""Build metrics, emitted from the workflow through the worker's Temporal runtime (and so served
on its Prometheus endpoint beside the SDK's own). The SDK drops them during replay, so each
transition, loop-back and model call counts once however often a build is replayed."""

from __future__ import annotations

from datetime import datetime

from temporalio import workflow

# Bucket bounds for the histograms (the worker's runtime applies them).
PHASE_SECONDS_BUCKETS = [0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600]
CALL_COST_BUCKETS = [0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1]
PHASE_SECONDS = "qao_phase_duration_seconds"
CALL_COST = "qao_model_call_cost_usd"
HISTOGRAM_BUCKETS = {PHASE_SECONDS: PHASE_SECONDS_BUCKETS, CALL_COST: CALL_COST_BUCKETS}


def build_started() -> None:
    workflow.metric_meter().create_counter("qao_builds_started", "Builds started", "builds").add(1)


def state_entered(source: str, target: str, entered_source: datetime) -> None:
    """A transition: the target state counts one more build, the source's time is recorded."""
    meter = workflow.metric_meter()
    meter.create_counter("qao_state_entered", "Builds that entered a state", "builds").add(
        1, {"state": target}
    )
    seconds = (workflow.now() - entered_source).total_seconds()
    meter.create_histogram_float(
        PHASE_SECONDS, "Time a build spent in a state before it left it", "s"
    ).record(max(seconds, 0.0), {"state": source})


def loop_back(state: str, reason: str) -> None:
    workflow.metric_meter().create_counter(
        "qao_loop_backs", "Loop-backs to IMPLEMENTATION, by the state that sent the build back"
    ).add(1, {"state": state, "reason": reason})


def model_call(
    role: str, model: str, prompt_tokens: int, completion_tokens: int, cost: float
) -> None:
    meter = workflow.metric_meter()
    tokens = meter.create_counter("qao_model_tokens", "Model tokens used by role calls", "tokens")
    tokens.add(prompt_tokens, {"role": role, "model": model, "kind": "prompt"})
    tokens.add(completion_tokens, {"role": role, "model": model, "kind": "completion"})
    meter.create_histogram_float(
        CALL_COST, "Cost of one role call (sum: money spent)", "USD"
    ).record(cost, {"role": role, "model": model})


def build_finished(state: str) -> None:
    workflow.metric_meter().create_counter(
        "qao_builds_finished", "Builds that ended, by final state", "builds"
    ).add(1, {"state": state})
