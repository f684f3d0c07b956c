"""The API's Prometheus metrics at /metrics: its HTTP requests, its Temporal client (the SDK's
runtime metrics, drained from a buffer at each scrape), and the builds as the mirror knows them
(by state, loop-backs, calls, tokens and cost per role) across every worker."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import Engine
from sqlmodel import Session
from temporalio.runtime import (
    BUFFERED_METRIC_KIND_COUNTER,
    BUFFERED_METRIC_KIND_GAUGE,
    MetricBuffer,
    MetricBufferDurationFormat,
    Runtime,
    TelemetryConfig,
)

from core.states import BuildState
from db import crud

SDK_BUFFER_SIZE = 20_000


class MirrorCollector(Collector):
    """Reads the mirror at scrape time: two grouped queries over indexed columns."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def collect(self) -> Iterator[Metric]:
        with Session(self.engine) as session:
            states = crud.fleet_state_counts(session)
            usage = crud.fleet_usage_by_role(session)
        builds = GaugeMetricFamily("qao_builds", "Builds by current state", labels=["state"])
        loops = CounterMetricFamily(
            "qao_build_loop_backs", "Loop-backs of builds, by their current state", labels=["state"]
        )
        for state in BuildState:
            count, loop_backs = states.get(state.value, (0, 0))
            builds.add_metric([state.value], count)
            loops.add_metric([state.value], loop_backs)
        calls = CounterMetricFamily("qao_role_calls", "Role calls", labels=["role"])
        tokens = CounterMetricFamily("qao_role_tokens", "Model tokens", labels=["role"])
        cost = CounterMetricFamily("qao_role_cost_usd", "Model cost in USD", labels=["role"])
        for role, (n, t, c) in sorted(usage.items()):
            calls.add_metric([role], n)
            tokens.add_metric([role], t)
            cost.add_metric([role], c)
        yield from (builds, loops, calls, tokens, cost)


class SdkCollector(Collector):
    """The Temporal client's metrics: updates buffered by the runtime, summed at each scrape."""

    def __init__(self) -> None:
        self.buffer = MetricBuffer(SDK_BUFFER_SIZE, MetricBufferDurationFormat.SECONDS)
        self.runtime = Runtime(telemetry=TelemetryConfig(metrics=self.buffer))
        # (name, labels) -> value (counters, gauges) or [count, sum] (histograms)
        self.values: dict[tuple[str, tuple[tuple[str, str], ...]], Any] = {}
        self.meta: dict[str, tuple[int, str]] = {}

    def _drain(self) -> None:
        for update in self.buffer.retrieve_updates():
            metric = update.metric
            labels = tuple(sorted((k, str(v)) for k, v in update.attributes.items()))
            key = (metric.name, labels)
            self.meta[metric.name] = (metric.kind, metric.description or metric.name)
            if metric.kind == BUFFERED_METRIC_KIND_COUNTER:
                self.values[key] = self.values.get(key, 0) + update.value
            elif metric.kind == BUFFERED_METRIC_KIND_GAUGE:
                self.values[key] = update.value
            else:
                count, total = self.values.get(key, (0, 0.0))
                self.values[key] = (count + 1, total + update.value)

    def collect(self) -> Iterable[Metric]:
        self._drain()
        families: dict[str, Metric] = {}
        for (raw, labels), value in sorted(self.values.items()):
            kind, doc = self.meta[raw]
            name = raw if raw.startswith("temporal_") else f"temporal_{raw}"
            names = [k for k, _ in labels]
            family = families.get(raw)
            if family is None:
                if kind == BUFFERED_METRIC_KIND_COUNTER:
                    family = CounterMetricFamily(name, doc, labels=names)
                elif kind == BUFFERED_METRIC_KIND_GAUGE:
                    family = GaugeMetricFamily(name, doc, labels=names)
                else:  # a histogram, exposed as its count and sum
                    family = Metric(name, doc, "summary")
                families[raw] = family
            values = [v for _, v in labels]
            if isinstance(family, CounterMetricFamily | GaugeMetricFamily):
                family.add_metric(values, value)
            else:
                family.add_sample(f"{name}_count", dict(labels), value[0])
                family.add_sample(f"{name}_sum", dict(labels), value[1])
        return list(families.values())


def api_registry(engine: Engine, sdk: SdkCollector) -> tuple[CollectorRegistry, Histogram]:
    """A registry of this app's own (tests run several apps in one process)."""
    registry = CollectorRegistry()
    requests = Histogram(
        "qao_api_request_duration_seconds",
        "HTTP requests by route, method and status",
        ["method", "route", "status"],
        registry=registry,
        buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    )
    registry.register(MirrorCollector(engine))
    registry.register(sdk)
    return registry, requests
