"""The package indexes a setup command reaches, served by the worker on its loopback.

The invariant: a setup run with network reaches the package indexes the worker's pip is
configured with, and no secret of that configuration: not an index URL's token, not a client
certificate's key, not a CA bundle or configuration file path of the worker's. It is given one
credential-free URL, `http://127.0.0.1:<port>/simple/`, and pip configuration that reads no
file (PIP_CONFIG_FILE=/dev/null); this proxy, in the worker's process, reads the worker's pip
configuration (`pip config list`: files and PIP_* variables, pip's own precedence), fetches
from the configured indexes with their credentials, client certificate and CA bundle, and
serves:

- `/simple/<name>/`: one PEP 503 page merging the project's pages of the index URL, every extra
  index URL and every find-links location, in pip's order, each link rewritten to the proxy;
- `/files/<token>/<filename>`: a file one of those pages linked, and nothing else (a token is
  made only for a link the proxy served).

A `file://` index is served whole: its pages and the files they link to, wherever on the
worker's disk the index keeps them. Own code rather than a library (devpi-server, proxpi):
those proxy http(s) indexes into a cache of their own; what is needed here is smaller and
different (file:// indexes and find-links folders, the worker's client certificate applied,
links that cannot leave the configured indexes), about two hundred lines on the standard
library.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import html
import os
import re
import shlex
import ssl
import subprocess
import sys
import threading
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from html.parser import HTMLParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Protocol

from packaging.utils import canonicalize_name

PYPI = "https://pypi.org/simple/"
FETCH_SECONDS = 60
CHUNK = 1 << 16
PAGE_BYTES = 32 * 1024 * 1024
NAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,198}[A-Za-z0-9])?$")
DISTRIBUTION = re.compile(r"\.(whl|tar\.gz|zip|tar\.bz2|tgz)$")


@dataclass(frozen=True)
class Upstream:
    """The worker's pip configuration: where packages come from, and how they are reached."""

    index: str = PYPI
    extra: tuple[str, ...] = ()
    find_links: tuple[str, ...] = ()
    no_index: bool = False
    ca: str | None = None  # a CA bundle (pip's `cert`)
    client_cert: str | None = None  # a PEM holding the client's certificate and key

    @property
    def indexes(self) -> tuple[str, ...]:
        return () if self.no_index else (self.index, *self.extra)


def configured() -> Upstream:
    """The worker's effective pip configuration, as pip itself reads it (its files and PIP_*
    variables; a variable before the `install` section before `global`)."""
    done = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"],
        capture_output=True, text=True, timeout=FETCH_SECONDS, check=False,
    )  # fmt: skip
    found: dict[str, dict[str, str]] = {}
    for line in done.stdout.splitlines():
        key, _, text = line.partition("=")
        section, _, name = key.partition(".")
        with contextlib.suppress(ValueError):
            text = " ".join(shlex.split(text))
        found.setdefault(name, {})[section] = text

    def value(name: str) -> str | None:
        sections = found.get(name, {})
        return next((sections[s] for s in (":env:", "install", "global") if s in sections), None)

    def values(name: str) -> tuple[str, ...]:
        return tuple((value(name) or "").split())

    return Upstream(
        index=value("index-url") or PYPI,
        extra=values("extra-index-url"),
        find_links=values("find-links"),
        no_index=(value("no-index") or "").lower() in ("1", "true", "yes", "on"),
        ca=value("cert"),
        client_cert=value("client-cert"),
    )


class Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...
    def close(self) -> None: ...


class _Links(HTMLParser):
    """The anchors of an index page: each href with its attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.links: list[dict[str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            found = {k: v for k, v in attrs if v is not None}
            if "href" in found:
                self.links.append(found)


@dataclass
class Proxy:
    """The index proxy's state: the upstream configuration and the files its pages linked."""

    upstream: Upstream
    files: dict[str, str] = field(default_factory=dict)  # token -> absolute upstream URL
    lock: threading.Lock = field(default_factory=threading.Lock)

    @functools.cached_property
    def credentials(self) -> dict[str, tuple[str, str]]:
        """The user and password of each configured location that has them, by host:port."""
        found: dict[str, tuple[str, str]] = {}
        for location in (*self.upstream.indexes, *self.upstream.find_links):
            parts = urllib.parse.urlsplit(location)
            if parts.username is not None and parts.hostname:
                netloc = parts.hostname + (f":{parts.port}" if parts.port else "")
                password = urllib.parse.unquote(parts.password or "")
                found.setdefault(netloc, (urllib.parse.unquote(parts.username), password))
        return found

    def _context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=self.upstream.ca)
        if self.upstream.client_cert:
            context.load_cert_chain(self.upstream.client_cert)
        return context

    def open(self, url: str) -> tuple[Readable, str]:
        """A readable response for `url` (file:// or http(s), with its credentials), and the
        URL it finally came from."""
        parts = urllib.parse.urlsplit(url)
        if parts.scheme == "file":
            path = urllib.request.url2pathname(parts.path)
            if os.path.isdir(path):
                path = os.path.join(path, "index.html")
            return open(path, "rb"), url
        if parts.scheme not in ("http", "https"):
            raise OSError(f"not an index URL: {parts.scheme}")
        headers = {"Accept": "text/html", "User-Agent": "qao-index-proxy"}
        netloc = (parts.hostname or "") + (f":{parts.port}" if parts.port else "")
        # A link of an index's page is fetched with the index's credentials (as pip keys
        # them: by host and port).
        user = self.credentials.get(netloc) if parts.username is None else (
            urllib.parse.unquote(parts.username), urllib.parse.unquote(parts.password or "")
        )  # fmt: skip
        if user is not None:
            token = base64.b64encode(f"{user[0]}:{user[1]}".encode()).decode()
            headers["Authorization"] = f"Basic {token}"
            url = urllib.parse.urlunsplit(parts._replace(netloc=netloc))
        handlers: list[urllib.request.BaseHandler] = []
        if parts.scheme == "https":
            handlers.append(urllib.request.HTTPSHandler(context=self._context()))
        opener = urllib.request.build_opener(*handlers)
        response = opener.open(urllib.request.Request(url, headers=headers), timeout=FETCH_SECONDS)
        return response, response.geturl()

    def _register(self, url: str) -> str:
        token = hashlib.sha256(url.encode()).hexdigest()[:32]
        with self.lock:
            self.files[token] = url
        return token

    def page(self, name: str) -> bytes:
        """The merged page of project `name` over every configured location."""
        wanted = canonicalize_name(name)
        rows: list[str] = []
        seen: set[str] = set()
        for index in self.upstream.indexes:
            base = index if index.endswith("/") else index + "/"
            rows += self._from_page(f"{base}{wanted}/", seen, None)
        for location in self.upstream.find_links:
            if "://" not in location or location.startswith("file://"):
                folder = urllib.request.url2pathname(location.removeprefix("file://"))
                if os.path.isdir(folder):
                    rows += self._from_folder(Path(folder), wanted, seen)
                    continue
                location = Path(folder).as_uri()
            rows += self._from_page(location, seen, wanted)
        body = "\n".join(rows)
        return f"<!DOCTYPE html><html><body>\n{body}\n</body></html>\n".encode()

    def _from_page(self, url: str, seen: set[str], only: str | None) -> list[str]:
        try:
            response, final = self.open(url)
            with contextlib.closing(response):
                text = response.read(PAGE_BYTES).decode(errors="replace")
        except (OSError, ValueError):
            return []  # this location has no such project; the others may
        parser = _Links()
        parser.feed(text)
        rows = []
        for link in parser.links:
            target, _, fragment = urllib.parse.urljoin(final, link["href"]).partition("#")
            filename = urllib.parse.unquote(target.rsplit("/", 1)[-1])
            if not DISTRIBUTION.search(filename):
                continue
            if only is not None and not canonicalize_name(filename).startswith(only):
                continue
            rows.append(self._row(target, filename, fragment, link, seen))
        return [row for row in rows if row]

    def _from_folder(self, folder: Path, wanted: str, seen: set[str]) -> list[str]:
        rows = []
        for entry in sorted(folder.iterdir()):
            named = canonicalize_name(entry.name).startswith(wanted + "-")
            if named and entry.is_file() and DISTRIBUTION.search(entry.name):
                rows.append(self._row(entry.as_uri(), entry.name, "", {}, seen))
        return [row for row in rows if row]

    def _row(
        self, target: str, filename: str, fragment: str, link: dict[str, str], seen: set[str]
    ) -> str:
        if filename in seen:  # the first location that has a file wins, as in pip's order
            return ""
        seen.add(filename)
        href = f"/files/{self._register(target)}/{urllib.parse.quote(filename)}"
        if fragment:
            href += f"#{fragment}"
        kept = "".join(
            f' {k}="{html.escape(v)}"'
            for k, v in link.items()
            if k in ("data-requires-python", "data-yanked")
        )
        return f'<a href="{html.escape(href)}"{kept}>{html.escape(filename)}</a>'


class _Handler(BaseHTTPRequestHandler):
    proxy: Proxy

    def log_message(self, format: str, *args: object) -> None:  # the worker's log is enough
        pass

    def do_GET(self) -> None:
        path = urllib.parse.urlsplit(self.path).path
        parts = [p for p in path.split("/") if p]
        try:
            if len(parts) == 2 and parts[0] == "simple" and NAME.match(parts[1]):
                self._send(self.proxy.page(parts[1]), "text/html")
            elif len(parts) == 1 and parts[0] == "simple":
                self._send(b"<!DOCTYPE html><html><body></body></html>\n", "text/html")
            elif len(parts) == 3 and parts[0] == "files" and parts[1] in self.proxy.files:
                self._file(self.proxy.files[parts[1]])
            else:
                self.send_error(404, "not a page or file of the configured indexes")
        except (OSError, ValueError) as err:
            with contextlib.suppress(OSError):
                self.send_error(502, f"the index did not answer: {type(err).__name__}")

    def _send(self, data: bytes, kind: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _file(self, url: str) -> None:
        response, _ = self.proxy.open(url)
        with contextlib.closing(response):
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.end_headers()
            while chunk := response.read(CHUNK):
                self.wfile.write(chunk)


@dataclass
class Serving:
    server: ThreadingHTTPServer
    proxy: Proxy

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/simple/"

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])


def serve(upstream: Upstream) -> Serving:
    """The proxy for `upstream` on a free loopback port, in a thread of this process."""
    proxy = Proxy(upstream)
    handler = type("Handler", (_Handler,), {"proxy": proxy})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="index-proxy", daemon=True).start()
    return Serving(server, proxy)


_running: list[Serving] = []
_starting = threading.Lock()


def running() -> Serving:
    """The process's proxy for the worker's pip configuration, started the first time a
    setup with network asks (blocking)."""
    with _starting:
        if not _running:
            _running.append(serve(configured()))
        return _running[0]


# A setup run without network: no index to reach (pip says so at once instead of retrying),
# and no configuration file of the worker's read.
OFFLINE = {
    "PIP_NO_INDEX": "1",
    "PIP_CONFIG_FILE": os.devnull,
    "PIP_NO_INPUT": "1",
    "PIP_DISABLE_PIP_VERSION_CHECK": "1",
}


def sandbox_variables(url: str) -> dict[str, str]:
    """What a setup run with network is given to install from: the proxy, and pip made to
    read no configuration file (the worker's would name its secrets)."""
    return {
        "PIP_INDEX_URL": url,
        "PIP_CONFIG_FILE": os.devnull,
        "PIP_NO_INPUT": "1",
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "UV_INDEX_URL": url,
        "UV_NO_CONFIG": "1",
    }
