"""What every request meets before any route reads it: the API key (when API_KEY is set) and a
cap on the body's size, both checked from the headers alone. A request without the key is
answered 401 before a byte of its body is read; a body over API_MAX_BODY_BYTES is answered 413
from its Content-Length, or, sent in chunks, as soon as it grows past the cap. Plain ASGI, so
nothing (FastAPI's body parsing included) runs before it."""

from __future__ import annotations

import ipaddress
import json
import secrets

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.settings import Settings

GUARDED = "/api/"  # the health checks, /metrics and the docs stay open
KEY_HEADER = "x-api-key"
CAP_SETTING = "API_MAX_BODY_BYTES"


def key_accepted(settings: Settings, key: str | None, authorization: str | None) -> bool:
    """Whether a request carrying `key` (X-API-Key) or `authorization` (Bearer ...) may pass:
    always when API_KEY is not set."""
    if settings.api_key is None:
        return True
    scheme, _, token = (authorization or "").partition(" ")
    given = key or (token.strip() if scheme.lower() == "bearer" else None)
    expected = settings.api_key.get_secret_value()
    return given is not None and secrets.compare_digest(given.encode(), expected.encode())


def is_loopback(host: str) -> bool:
    """Whether the API listening on `host` is reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name: whatever it resolves to, it is not known to be loopback


class Guard:
    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if scope["path"].startswith(GUARDED) and not key_accepted(
            self.settings, headers.get(KEY_HEADER), headers.get("authorization")
        ):
            await _answer(
                send, 401,
                "missing or wrong API key: send it as X-API-Key or Authorization: Bearer",
                [(b"www-authenticate", b"Bearer")],
            )  # fmt: skip
            return
        cap = self.settings.api_max_body_bytes
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > cap:
            await _answer(send, 413, f"the request body is over {cap} bytes ({CAP_SETTING})")
            return
        received = 0
        too_large = answered = False

        async def counted() -> Message:
            nonlocal received, too_large
            if too_large:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > cap:  # read no more of it; the answer is 413, whatever the app says
                    too_large = True
                    return {"type": "http.disconnect"}
            return message

        async def sending(message: Message) -> None:
            nonlocal answered
            if not too_large:
                await send(message)
            elif not answered and message["type"] == "http.response.start":
                answered = True
                await _answer(send, 413, f"the request body is over {cap} bytes ({CAP_SETTING})")

        await self.app(scope, counted, sending)


async def _answer(
    send: Send, code: int, detail: str, extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": code, "headers": headers + (extra or [])})
    await send({"type": "http.response.body", "body": body})
