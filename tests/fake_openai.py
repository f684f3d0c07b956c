"""A fake OpenAI-compatible HTTP server for tests: real sockets, real HTTP/1.1, scriptable
faults per response format, and a count of every request it receives. It streams as OpenAI
does (server-sent events, usage last) when asked, and can behave as other servers do: no
usage in streams, streaming refused, a stream that stalls, is cut halfway, or is ended halfway
with [DONE] and no finish reason (interrupted).

Answers that are not faults come from the offline model, so builds write real code."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from dataclasses import dataclass, field
from typing import Literal

import httpx2

from activities.model import edit_blocks, offline

FaultKind = Literal[
    "status", "hang", "cut", "invalid_json", "schema_break", "stall", "cut_stream", "interrupt"
]
REASONS = {200: "OK", 401: "Unauthorized", 429: "Too Many Requests", 500: "Internal Server Error"}


@dataclass
class Fault:
    kind: FaultKind
    status: int = 500
    retry_after: float | None = None
    seconds: float = 0.0  # hang, stall: how long to keep silent (a stall: after half the stream)


@dataclass
class Seen:
    at: float
    schema: str
    fault: Fault | None
    body: dict[str, object]


@dataclass
class FakeOpenAI:
    script: dict[str, list[Fault]] = field(default_factory=dict)
    requests: list[Seen] = field(default_factory=list)
    server: asyncio.Server | None = None
    port: int = 0
    # Unscripted requests get one of `random_faults` with this probability (chaos drills).
    fault_rate: float = 0.0
    random_faults: list[Fault] = field(default_factory=list)
    rng: random.Random = field(default_factory=lambda: random.Random(7))
    stream_usage: bool = True  # False: streams end without usage (as some servers' do)
    refuse_stream: bool = False  # True: a streamed request is a 400 naming `stream`

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def fail(self, schema: str, *faults: Fault) -> None:
        """The next requests for `schema` (a response format name) get these faults, in order."""
        self.script.setdefault(schema, []).extend(faults)

    def count(self, schema: str | None = None) -> int:
        return sum(1 for r in self.requests if schema is None or r.schema == schema)

    @property
    def faults_injected(self) -> int:
        return sum(1 for r in self.requests if r.fault is not None)

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._connection, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 2)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await self._one_request(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def _one_request(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        request_line = await reader.readline()
        if not request_line:
            return False
        method, path, _ = request_line.decode().split(" ", 2)
        headers: dict[str, str] = {}
        while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
            name, _, value = line.decode().partition(":")
            headers[name.strip().lower()] = value.strip()
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        if not path.endswith("/chat/completions"):  # /models, /props: not counted as asked
            found = path.endswith("/models")
            models = {"object": "list", "data": [{"id": "gpt-4o-mini", "object": "model"}]}
            await _send(writer, 200 if found else 404, models if found else {"error": "none"})
            return True
        payload = json.loads(body or b"{}")
        schema = asked_for(payload)
        queue = self.script.get(schema, [])
        fault = queue.pop(0) if queue else None
        if fault is None and self.random_faults and self.rng.random() < self.fault_rate:
            fault = self.rng.choice(self.random_faults)
        self.requests.append(Seen(time.monotonic(), schema, fault, payload))

        if fault is not None and fault.kind == "cut":
            return False  # close without an answer
        if fault is not None and fault.kind == "hang":
            await asyncio.sleep(fault.seconds)
            return False
        if fault is not None and fault.kind == "status":
            extra = {"retry-after": f"{fault.retry_after:g}"} if fault.retry_after else {}
            error = {"error": {"message": f"injected {fault.status}", "type": "fake"}}
            await _send(writer, fault.status, error, extra)
            return True
        if self.refuse_stream and payload.get("stream"):
            error = {"error": {"message": "stream is not supported", "type": "invalid_request"}}
            await _send(writer, 400, error)
            return True
        if not self.stream_usage:
            payload.pop("stream_options", None)
        if fault is not None and fault.kind in ("invalid_json", "schema_break"):
            content = "{not json" if fault.kind == "invalid_json" else '{"unexpected": true}'
            answer = offline.respond(payload, content)
        else:
            answer = await offline.handle(
                httpx2.Request(method, f"http://fake{path}", json=payload, headers={
                    k: v for k, v in headers.items() if k != "content-length"})
            )  # fmt: skip
        if not payload.get("stream") or answer.status_code != 200:
            await _send(writer, answer.status_code, json.loads(answer.content))
            return True
        # A stream: sent as it is written, its end the connection's (as servers do).
        head = f"HTTP/1.1 {answer.status_code} OK\r\ncontent-type: text/event-stream\r\n"
        writer.write((head + "connection: close\r\n\r\n").encode())
        parts = answer.content.split(b"\n\n")
        half = len(parts) // 2
        for index, part in enumerate(parts):
            if fault is not None and index == half:
                await writer.drain()
                if fault.kind == "stall":
                    await asyncio.sleep(fault.seconds)
                if fault.kind == "interrupt":  # llama-cpp-python's when another request comes
                    writer.write(b"data: [DONE]\n\n")
                    await writer.drain()
                return False
            writer.write(part + b"\n\n")
        await writer.drain()
        return False


def asked_for(body: dict[str, object]) -> str:
    """The answer a request asks for, in any of the ways it can be asked: the json_schema's
    name, the forced tool's, or ImplementationOutput for the Code Writer's edit blocks."""
    fmt = body.get("response_format") or {}
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        return str(fmt.get("json_schema", {}).get("name", ""))
    tools = body.get("tools")
    if isinstance(tools, list) and tools:
        return str(tools[0]["function"]["name"])
    messages = body.get("messages")
    system = str(messages[0].get("content", "")) if isinstance(messages, list) and messages else ""
    return "ImplementationOutput" if edit_blocks.INSTRUCTIONS.strip() in system else ""


async def _send(
    writer: asyncio.StreamWriter, status: int, body: object, headers: dict[str, str] | None = None
) -> None:
    data = json.dumps(body).encode()
    lines = [
        f"HTTP/1.1 {status} {REASONS.get(status, 'Status')}",
        "content-type: application/json",
        f"content-length: {len(data)}",
        *(f"{k}: {v}" for k, v in (headers or {}).items()),
    ]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + data)
    await writer.drain()
