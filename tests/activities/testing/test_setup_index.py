"""A setup command with network installs from the indexes the worker's pip is configured with,
through the worker's proxy (activities/testing/index_proxy.py), and sees none of that
configuration's secrets. A real `pip install -e .` of a project whose build backend is not
installed, fetched with build isolation from a private index on the loopback (its token only
in the worker's PIP_INDEX_URL) and from a `file://` index, under bubblewrap and landlock."""

from __future__ import annotations

import base64
import functools
import os
import re
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from activities.repository.workspace import Remote, Workspace
from activities.sandbox import isolation
from activities.sandbox.runs import Limits
from activities.testing import environment, index_proxy, runner
from activities.testing.testrun import run_tests, setup_cause
from core.reports import RUN
from tests.activities.testing.test_setup import make_wheel
from tests.git_projects import make_project

LIMITS = Limits(120, 2048)
BACKEND = '''"""A PEP 517 and PEP 660 build backend in one module (as flit_core is one)."""
import base64, hashlib, os, tomllib, zipfile

TAG = b"Wheel-Version: 1.0\\nGenerator: t\\nRoot-Is-Purelib: true\\nTag: py3-none-any\\n"


def digest(data):
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def _meta():
    with open("pyproject.toml", "rb") as file:
        project = tomllib.load(file)["project"]
    return project["name"], project["version"]


def _wheel(directory, files):
    name, version = _meta()
    info = f"{name}-{version}.dist-info"
    files = dict(files)
    meta = f"Metadata-Version: 2.1\\nName: {name}\\nVersion: {version}\\n"
    files[f"{info}/METADATA"] = meta.encode()
    files[f"{info}/WHEEL"] = TAG
    record = "".join(f"{n},sha256={digest(d)},{len(d)}\\n" for n, d in files.items())
    files[f"{info}/RECORD"] = (record + f"{info}/RECORD,,\\n").encode()
    wheel = f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(os.path.join(directory, wheel), "w") as out:
        for n, d in files.items():
            out.writestr(n, d)
    return wheel


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    name, _ = _meta()
    files = {}
    for root, _, names in os.walk(name):
        for n in names:
            with open(os.path.join(root, n), "rb") as file:
                files[os.path.join(root, n)] = file.read()
    return _wheel(wheel_directory, files)


def build_editable(wheel_directory, config_settings=None, metadata_directory=None):
    name, _ = _meta()
    return _wheel(wheel_directory, {f"{name}.pth": (os.getcwd() + "\\n").encode()})
'''
PROJECT = {
    "pyproject.toml": (
        '[build-system]\nrequires = ["qao_backend"]\nbuild-backend = "qao_backend"\n\n'
        '[project]\nname = "tiny"\nversion = "1.0"\n'
    ),
    "tiny/__init__.py": "def answer():\n    return 42\n",
    "tests/test_tiny.py": (
        "import tiny\n\n\ndef test_installed():\n    assert tiny.answer() == 42\n"
    ),
}


def backend_wheel() -> bytes:
    return make_wheel("qao_backend", {"qao_backend.py": BACKEND})


@pytest.fixture
def index(tmp_path: Path) -> Iterator[tuple[int, list[str]]]:
    """A PEP 503 package index on the loopback holding the build backend, answering only with
    the worker's credentials (a corporate index with a token); the paths asked, and whether
    each was asked with them."""
    root = tmp_path / "index"
    (root / "simple" / "qao-backend").mkdir(parents=True)
    (root / "qao_backend-1.0-py3-none-any.whl").write_bytes(backend_wheel())
    (root / "simple" / "qao-backend" / "index.html").write_text(
        '<a href="/qao_backend-1.0-py3-none-any.whl">qao_backend-1.0-py3-none-any.whl</a>'
    )
    asked: list[str] = []
    expected = "Basic " + base64.b64encode(f"{USER}:{TOKEN}".encode()).decode()

    class Handler(SimpleHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.headers.get("Authorization") != expected:
                asked.append(f"refused {self.path}")
                self.send_error(401)
                return
            asked.append(self.path)
            super().do_GET()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=root))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1], asked
    server.shutdown()


USER, TOKEN = "ci", "s3cret-index-token"
KEY = "-----BEGIN PRIVATE KEY-----\nnot-for-generated-code\n-----END PRIVATE KEY-----\n"


@pytest.fixture
def proxied(
    index: tuple[int, list[str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[int]:
    """The worker's pip configured for the index with its token (in PIP_INDEX_URL) and a
    configuration file naming a private key the setup must never read; the proxy of this
    configuration running."""
    port, _ = index
    runner.runner_wheels(runner.WHEELS)  # pytest's wheels, before the index is ours
    conf = tmp_path / "worker-pip.conf"
    key = tmp_path / "client.key"
    key.write_text(KEY)
    conf.write_text(f"[global]\n# {key}\ntimeout = 30\n")
    monkeypatch.setenv("PIP_INDEX_URL", f"http://{USER}:{TOKEN}@127.0.0.1:{port}/simple/")
    monkeypatch.setenv("PIP_CONFIG_FILE", str(conf))
    monkeypatch.setenv("OPENAI_API_KEY_SHOULD_NOT_PASS", "sk-not-for-the-setup")
    monkeypatch.setattr(index_proxy, "_running", [])  # this configuration's proxy
    yield port


def workspace(tmp_path: Path, files: dict[str, str] | None = None) -> Workspace:
    remote = make_project(tmp_path, files or PROJECT)
    ws = Workspace(tmp_path / "ws", Remote(str(remote), "main", "b1"))
    ws.open()
    return ws


def request(tmp_path: Path, setup: str = "pip install -e .") -> environment.Request:
    return environment.Request(
        store=tmp_path / "environments", project="p1", setup_command=setup, network=True
    )


# What the setup run could see of the worker's configuration, kept in its environment.
SPY = (
    'pip install -e . && {{ env > "$VIRTUAL_ENV/seen"; '
    'cat "{conf}" "{key}" >> "$VIRTUAL_ENV/seen" 2>&1; '
    'cat /etc/xdg/pip/pip.conf "$HOME/.config/pip/pip.conf" >> "$VIRTUAL_ENV/seen" 2>&1; '
    "true; }}"
)


@pytest.mark.slow  # pip installs with build isolation, once per sandbox
@pytest.mark.parametrize("kind", ["bubblewrap", "landlock"])
async def test_pip_install_e_through_the_workers_proxy_without_its_secrets(
    tmp_path: Path, kind: isolation.Choice, proxied: int, index: tuple[int, list[str]]
) -> None:
    """A real `pip install -e .` fetches its build backend, with build isolation, from the
    worker's private index through the proxy (the token applied there), while nothing of
    the worker's pip configuration is readable in the run. The sandbox's port rule holds
    it to the proxy: the index's own port is not among SANDBOX_SETUP_PORTS."""
    try:
        isolation.choose(kind)
    except isolation.SandboxUnavailable as err:
        pytest.skip(f"{kind} does not work here: {err}")
    ws = workspace(tmp_path)
    spy = SPY.format(conf=tmp_path / "worker-pip.conf", key=tmp_path / "client.key")
    with isolation.using(kind, setup_ports=(443,)):
        report = await run_tests(ws, 1, LIMITS, request=request(tmp_path, spy))
    assert report.passed, report.failures
    assert "made in" in report.setup
    assert "/qao_backend-1.0-py3-none-any.whl" in index[1]  # fetched with the token
    assert not [asked for asked in index[1] if asked.startswith("refused")]
    seen = next((tmp_path / "environments").glob("project-p1/*/seen")).read_text()
    assert "PIP_INDEX_URL=http://127.0.0.1:" in seen and "/simple/" in seen
    for secret in (TOKEN, "not-for-generated-code", "sk-not-for-the-setup", "/etc/xdg/pip"):
        assert secret not in seen.replace("cat: /etc/xdg/pip", ""), secret


@pytest.mark.slow
async def test_the_attack_succeeds_where_the_workers_pip_variables_are_handed_over(
    tmp_path: Path, proxied: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same spy, with the worker's PIP_* variables given to the setup as they are: it
    reads the index's token. What keeps it out is the proxy's URL in their place."""
    worker = {k: v for k, v in os.environ.items() if k.startswith("PIP_")}
    monkeypatch.setattr(index_proxy, "sandbox_variables", lambda url: worker)
    ws = workspace(tmp_path)
    with isolation.using("bubblewrap", setup_ports=(443,)):
        await run_tests(ws, 1, LIMITS, request=request(tmp_path, "env > $VIRTUAL_ENV/seen"))
    seen = next((tmp_path / "environments").glob("project-p1/*/seen")).read_text()
    assert TOKEN in seen


def file_index(tmp_path: Path) -> Path:
    """A `file://` index whose pages link to files kept in a folder beside them (as a
    corporate mirror on disk does): its simple/ folder."""
    root = tmp_path / "disk-index"
    (root / "simple" / "qao-backend").mkdir(parents=True)
    (root / "files").mkdir()
    (root / "files" / "qao_backend-1.0-py3-none-any.whl").write_bytes(backend_wheel())
    (root / "simple" / "qao-backend" / "index.html").write_text(
        '<a href="../../files/qao_backend-1.0-py3-none-any.whl">qao_backend-1.0</a>'
    )
    return root / "simple"


@pytest.mark.slow
async def test_a_file_index_is_served_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its pages and the files they link to outside its simple/ folder reach the setup."""
    runner.runner_wheels(runner.WHEELS)
    monkeypatch.setenv("PIP_INDEX_URL", file_index(tmp_path).as_uri() + "/")
    monkeypatch.setattr(index_proxy, "_running", [])
    ws = workspace(tmp_path)
    with isolation.using("bubblewrap", setup_ports=(443,)):
        report = await run_tests(ws, 1, LIMITS, request=request(tmp_path))
    assert report.passed, report.failures


def test_the_proxy_serves_what_its_pages_link_and_nothing_else(tmp_path: Path) -> None:
    simple = file_index(tmp_path)
    secret = tmp_path / "secret.txt"
    secret.write_text("the worker's")
    serving = index_proxy.serve(index_proxy.Upstream(index=simple.as_uri(), extra=()))
    try:
        page = urllib.request.urlopen(f"{serving.url}QAO_Backend/", timeout=10).read().decode()
        link = re.search(r'href="([^"]+)"', page)
        assert link is not None and link.group(1).endswith("/qao_backend-1.0-py3-none-any.whl")
        origin = serving.url.removesuffix("/simple/")
        wheel = urllib.request.urlopen(origin + link.group(1), timeout=10).read()
        assert wheel == backend_wheel()
        for path in (
            "/files/0123456789abcdef0123456789abcdef/secret.txt",
            "/simple/..%2F..%2Fsecret.txt/",
            "/simple/../../secret.txt/",
            f"/files/{secret}",
        ):
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(origin + path, timeout=10)
            assert refused.value.code == 404, path
    finally:
        serving.server.shutdown()


def test_the_proxy_reads_the_workers_configuration_as_pip_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf = tmp_path / "pip.conf"
    extra = "https://a.example/simple https://b.example/s"
    conf.write_text(
        "[global]\nindex-url = https://mirror.example/simple\n"
        f"[install]\nextra-index-url = {extra}\n"
    )
    monkeypatch.setenv("PIP_CONFIG_FILE", str(conf))
    monkeypatch.setenv("PIP_CLIENT_CERT", str(tmp_path / "client.pem"))
    upstream = index_proxy.configured()
    assert upstream.index == "https://mirror.example/simple"
    assert upstream.extra == ("https://a.example/simple", "https://b.example/s")
    assert upstream.client_cert == str(tmp_path / "client.pem")
    variables = index_proxy.sandbox_variables("http://127.0.0.1:1/simple/")
    assert variables["PIP_CONFIG_FILE"] == "/dev/null" and "PIP_CLIENT_CERT" not in variables


@pytest.mark.slow
async def test_without_network_the_setup_fails_and_names_the_setting(
    tmp_path: Path, proxied: int
) -> None:
    ws = workspace(tmp_path)
    offline = environment.Request(store=tmp_path / "e", project="p1",
                                  setup_command="pip install -e .")  # fmt: skip
    with isolation.using("bubblewrap", setup_ports=(proxied,)):
        report = await run_tests(ws, 1, LIMITS, request=offline)
    assert report.setup_failed and report.failures[0].test == RUN
    message = report.failures[0].message
    assert "ERROR:" in message and "SANDBOX_SETUP_NETWORK" in message, message


def test_a_failed_setup_names_its_cause_not_the_decoration_at_its_end() -> None:
    output = (
        "Looking in indexes: https://pypi.example/simple\n"
        "WARNING: Retrying (Retry(total=4)) after connection broken by 'SSLError(SSLCertVerifi"
        "cationError(1, '[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: self-signed"
        " certificate in certificate chain'))': /simple/flit-core/\n"
        "ERROR: Could not find a version that satisfies the requirement flit_core<4,>=3.11\n"
        "ERROR: No matching distribution found for flit_core<4,>=3.11\n"
        "error: subprocess-exited-with-error\n\n"
        "\u00d7 pip subprocess to install build dependencies did not run successfully.\n"
        "│ exit code: 1\n╰─> See above for output.\n"
    )
    cause = setup_cause(output)
    assert cause.startswith("ERROR: Could not find a version that satisfies")
    assert "self-signed certificate in certificate chain" in cause
    assert setup_cause("just\nsome\noutput") == "just | some | output"
