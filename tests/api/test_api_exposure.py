"""Safe by default when exposed: the key and the body's size are checked from the headers
before a byte of the body is read, the API refuses to listen beyond loopback without a key,
and registrations can be held to PROJECT_REPOSITORY_ROOTS."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import pytest
from pydantic import SecretStr

from api.guard import is_loopback
from core.projects import outside_roots
from core.settings import Settings
from tests.api_stack import serve_api

ROOT = Path(__file__).resolve().parents[2]
HUGE = 200 * 1024 * 1024


async def raw_request(url: str, head: str, body: bytes = b"") -> tuple[int, bytes]:
    """Send `head` (and `body`) on a socket of its own and read the answer: no client library
    that would insist on sending the body it announced."""
    where = urlparse(url)
    reader, writer = await asyncio.open_connection(where.hostname, where.port)
    writer.write(head.replace("\n", "\r\n").encode() + b"\r\n" + body)
    await writer.drain()
    async with asyncio.timeout(5):  # an API that waited for the 200 MB would not answer
        answer = await reader.read(65536)
    writer.close()
    status = int(answer.split(b" ", 2)[1])
    return status, answer


def keyed(settings: Settings) -> Settings:
    return settings.model_copy(update={"api_key": SecretStr("s3cret")})


async def test_a_request_without_the_key_is_refused_before_its_body_is_read(
    base_settings: Settings,
):
    async with serve_api(keyed(base_settings)) as http:
        head = (
            "POST /api/workflows/p/start HTTP/1.1\nHost: x\nContent-Type: application/json\n"
            f"Content-Length: {HUGE}\n"
        )
        status, answer = await raw_request(str(http.base_url), head, b'{"requirements": "')
    assert status == 401 and b"API key" in answer


async def test_a_body_over_the_cap_is_refused_before_it_is_read(base_settings: Settings):
    async with serve_api(keyed(base_settings)) as http:
        head = (
            "POST /api/workflows/p/start HTTP/1.1\nHost: x\nX-API-Key: s3cret\n"
            f"Content-Type: application/json\nContent-Length: {HUGE}\n"
        )
        status, answer = await raw_request(str(http.base_url), head)
        assert status == 413 and b"API_MAX_BODY_BYTES" in answer
        # Sent in chunks, with no length announced: refused once it passes the cap.
        chunk = b"x" * 65536
        body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(20))
        head = (
            "POST /api/workflows/p/start HTTP/1.1\nHost: x\nX-API-Key: s3cret\n"
            "Content-Type: application/json\nTransfer-Encoding: chunked\n"
        )
        status, answer = await raw_request(str(http.base_url), head, body)
        assert status == 413
        small = await http.post(
            "/api/workflows/p/start", content=b"{", headers={"X-API-Key": "s3cret"}
        )
        assert small.status_code in (400, 422)  # read and refused for what it says


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.9.9.9", True), ("::1", True), ("[::1]", True),
     ("localhost", True), ("0.0.0.0", False), ("::", False), ("10.0.0.5", False),
     ("api.example.com", False)],
)  # fmt: skip
def test_which_addresses_are_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


@pytest.mark.slow  # starts a process
def test_the_api_refuses_to_listen_beyond_loopback_without_a_key() -> None:
    env = {k: v for k, v in os.environ.items() if k != "API_KEY"}
    done = subprocess.run(
        [sys.executable, "-m", "api", "--host", "0.0.0.0", "--port", "1"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode != 0
    assert "without an API key" in done.stderr and "API_KEY" in done.stderr


@pytest.mark.parametrize(
    ("repository", "allowed"),
    [("/srv/git/app.git", True), ("/srv/git/../etc/x", False), ("/srv/gitx/a", False),
     ("/home/worker/.ssh", False), ("https://github.com/acme/app.git", True),
     ("https://github.com/other/app.git", False), ("git@github.com:acme/app.git", False),
     ("file:///etc", False)],
)  # fmt: skip
def test_registrations_are_held_to_the_repository_roots(repository: str, allowed: bool) -> None:
    roots = ("/srv/git", "https://github.com/acme/")
    assert (outside_roots(repository, roots) is None) is allowed
    assert outside_roots(repository, ()) is None  # no roots: anything git can clone


async def test_the_api_refuses_a_repository_outside_the_roots(base_settings: Settings):
    held = base_settings.model_copy(update={"project_repository_roots": "/srv/git"})
    async with serve_api(held) as http:
        answer = await http.put("/api/projects/p", json={"repository": "/etc"})
    assert answer.status_code == 403 and "PROJECT_REPOSITORY_ROOTS" in answer.json()["detail"]
