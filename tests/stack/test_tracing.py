"""Traces: a worker with OTEL_EXPORTER_OTLP_ENDPOINT set sends its spans over OTLP/HTTP, here to a
receiver on a real socket; a build's workflow and role activities are one trace."""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from core.settings import Settings
from core.states import BuildState
from core.telemetry import flush_traces, tracing_interceptors
from core.temporal import connect
from tests.helpers import make_request, spawn_worker, start

pytestmark = pytest.mark.slow  # a worker process of its own


class Receiver(ThreadingHTTPServer):
    requests: list[ExportTraceServiceRequest]


class Handler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:  # the OTLP/HTTP protobuf encoding
        body = self.rfile.read(int(self.headers["Content-Length"]))
        assert self.path == "/v1/traces", self.path
        self.server.requests.append(ExportTraceServiceRequest.FromString(body))
        answer = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver(("127.0.0.1", 0), Handler)
    server.requests = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


async def test_a_build_is_one_trace_of_workflow_and_role_spans(
    settings: Settings, receiver: Receiver, tmp_path: Path
):

    port = receiver.server_address[1]
    endpoint = f"http://127.0.0.1:{port}"
    proc = await spawn_worker(settings, tmp_path, OTEL_EXPORTER_OTLP_ENDPOINT=endpoint)
    # Started the way starter.py and the API start builds: by a client that traces too.
    traced = settings.model_copy(update={"otel_exporter_otlp_endpoint": endpoint})
    starter = await connect(traced, interceptors=tracing_interceptors(traced, "qao-starter"))
    try:
        handle = await start(starter, settings, make_request())
        async with asyncio.timeout(90):
            result = await handle.result()
    finally:
        flush_traces()
        proc.send_signal(signal.SIGTERM)  # a clean stop flushes the worker's buffered spans
        async with asyncio.timeout(30):
            await proc.wait()
    assert result.state is BuildState.COMPLETE and proc.returncode == 0

    spans = [
        (span, resource.resource)
        for request in receiver.requests
        for resource in request.resource_spans
        for scope in resource.scope_spans
        for span in scope.spans
    ]
    names = {span.name for span, _ in spans}
    services = {
        attr.value.string_value
        for _, resource in spans
        for attr in resource.attributes
        if attr.key == "service.name"
    }
    assert services == {"qao-starter", "qao-worker"}
    assert {"StartWorkflow:BuildWorkflow", "RunWorkflow:BuildWorkflow"} <= names
    for role in ("q_assistant", "code_writer", "test_auditor", "verification_overseer"):
        assert f"RunActivity:{role}" in names, sorted(names)
    # One trace: the start, the workflow, every activity the workflow scheduled and ran. The
    # project's registry entity (a greenfield project registered at the start) is its own,
    # with its side of the release queue (the build's join, its turn, its leaving).
    project = {
        "ProjectWorkflow",
        "create_repository",
        "greenfield",
        "HandleUpdate:enqueue",
        "SignalExternalWorkflow:release_turn",
        "HandleSignal:leave",
    }
    build = [span for span, _ in spans if not any(name in span.name for name in project)]
    assert "RunActivity:open_workspace" in {span.name for span in build}
    by_trace: dict[bytes, list[str]] = {}
    for span in build:
        by_trace.setdefault(span.trace_id, []).append(span.name)
    assert len(by_trace) == 1, by_trace
