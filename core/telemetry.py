"""Logs, metrics and traces for the worker and the API.

- Logs: every line carries `workflow_id` and `build_id` (from the Temporal SDK's log context in
  workflows and activities, or from the API request), as text or as JSON lines (LOG_FORMAT).
- Metrics: the worker's Temporal runtime serves Prometheus at WORKER_METRICS_ADDRESS: the SDK's
  own metrics and the builds' (workflows/metrics.py, whose histogram buckets the worker
  hands over). The API serves its own at /metrics.
- Traces: with OTEL_EXPORTER_OTLP_ENDPOINT set, Temporal's tracing interceptor sends spans of
  workflows, activities and client calls to that OTLP/HTTP collector.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from temporalio import activity
from temporalio import workflow as temporal_workflow
from temporalio.client import Interceptor
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig

from core.build_io import build_id_from
from core.settings import Settings

# The build an API request is about; the API's middleware sets it.
current_build: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "current_build", default=None
)
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(workflow_id)s %(build_id)s] %(message)s"
_tracer_provider: Any = None


class BuildContext(logging.Filter):
    """Adds workflow_id and build_id to every record ("-" when a line is about no build)."""

    def filter(self, record: logging.LogRecord) -> bool:
        info = getattr(record, "temporal_workflow", None) or getattr(
            record, "temporal_activity", None
        )
        workflow_id = info.get("workflow_id") if isinstance(info, dict) else None
        if workflow_id is None and activity.in_activity():
            workflow_id = activity.info().workflow_id
        build = build_id_from(workflow_id) if workflow_id else current_build.get()
        record.workflow_id = workflow_id or (f"build-{build}" if build else "-")
        record.build_id = build or "-"
        return True


class JsonLines(logging.Formatter):
    """One JSON object per line: time, level, logger, message, workflow_id, build_id."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "workflow_id": getattr(record, "workflow_id", "-"),
            "build_id": getattr(record, "build_id", "-"),
        }
        activity_info = getattr(record, "temporal_activity", None)
        if isinstance(activity_info, dict):
            line["activity"] = activity_info.get("activity_type")
            line["attempt"] = activity_info.get("attempt")
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def setup_logging(settings: Settings) -> None:
    """Configure the root logger once per process (the CLIs call this first)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(BuildContext())
    formatter = JsonLines() if settings.log_format == "json" else logging.Formatter(TEXT_FORMAT)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level.upper())
    # The ids are fields of every line; the SDK need not append its info dict to messages.
    temporal_workflow.logger.workflow_info_on_message = False
    activity.logger.activity_info_on_message = False
    logging.getLogger("httpx2").setLevel(logging.WARNING)  # one line per model call is noise
    logging.getLogger("httpx").setLevel(logging.WARNING)


def worker_runtime(
    settings: Settings, histogram_buckets: Mapping[str, Sequence[float]]
) -> Runtime | None:
    """A Temporal runtime that serves Prometheus metrics (with the bucket bounds of the
    workflows' histograms), or None for the default runtime."""
    if settings.worker_metrics_address.strip().lower() in ("", "off"):
        return None
    return Runtime(
        telemetry=TelemetryConfig(
            metrics=PrometheusConfig(
                bind_address=settings.worker_metrics_address,
                counters_total_suffix=True,
                durations_as_seconds=True,
                histogram_bucket_overrides={k: list(v) for k, v in histogram_buckets.items()},
            ),
        )
    )


def tracing_interceptors(settings: Settings, service: str) -> Sequence[Interceptor]:
    """Temporal's OpenTelemetry interceptor exporting to the OTLP endpoint, if one is set."""
    global _tracer_provider
    endpoint = settings.otel_exporter_otlp_endpoint
    if not endpoint:
        return ()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from temporalio.contrib.opentelemetry import TracingInterceptor

    if _tracer_provider is None:
        provider = TracerProvider(resource=Resource.create({"service.name": service}))
        traces_url = endpoint.rstrip("/") + "/v1/traces"
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=traces_url)))
        _tracer_provider = provider
        logging.getLogger(__name__).info("tracing to %s as %s", traces_url, service)
    # Workflow spans even for builds started without a traced client (Web UI, temporal CLI).
    return (
        TracingInterceptor(
            _tracer_provider.get_tracer("q-assistant-orchestration"),
            always_create_workflow_spans=True,
        ),
    )


def flush_traces() -> None:
    """Send the spans still buffered and stop tracing (at shutdown)."""
    global _tracer_provider
    if _tracer_provider is not None:
        _tracer_provider.shutdown()
        _tracer_provider = None
