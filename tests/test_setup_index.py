"""A setup command with network works where the worker's pip works: it gets the worker's
package-index and TLS configuration (pip's configuration files, PIP_* variables, CA bundles,
proxies) and nothing else of the worker's environment. A real `pip install -e .` of a project
whose build backend is not installed, fetched with build isolation from a package index the
test serves on the loopback (named only in the worker's PIP_INDEX_URL), under bubblewrap and
landlock; and the same setup without the configuration fails, saying why."""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from activities.repository.workspace import Remote, Workspace
from activities.sandbox import isolation
from activities.sandbox.runs import Limits
from activities.testing import environment
from activities.testing.testrun import run_tests, setup_cause
from core.role_io import RUN
from core.settings import get_settings
from tests.git_projects import make_project
from tests.test_setup import make_wheel

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
    """A PEP 503 package index on the loopback holding the build backend; the paths asked."""
    root = tmp_path / "index"
    (root / "simple" / "qao-backend").mkdir(parents=True)
    (root / "qao_backend-1.0-py3-none-any.whl").write_bytes(backend_wheel())
    (root / "simple" / "qao-backend" / "index.html").write_text(
        '<a href="/qao_backend-1.0-py3-none-any.whl">qao_backend-1.0-py3-none-any.whl</a>'
    )
    asked: list[str] = []

    class Handler(SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            asked.append(self.path)

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=root))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1], asked
    server.shutdown()


@pytest.fixture
def configured(index: tuple[int, list[str]], monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    """The worker's pip configured for the index (as a corporate mirror would be); the
    sandbox's port rule is opened to it where the sandbox is chosen."""
    port, _ = index
    monkeypatch.setenv("PIP_INDEX_URL", f"http://127.0.0.1:{port}/simple/")
    monkeypatch.setenv("OPENAI_API_KEY_SHOULD_NOT_PASS", "sk-not-for-the-setup")
    get_settings.cache_clear()
    yield port
    get_settings.cache_clear()


def workspace(tmp_path: Path) -> Workspace:
    remote = make_project(tmp_path, PROJECT)
    ws = Workspace(tmp_path / "ws", Remote(str(remote), "main", "b1"))
    ws.open()
    return ws


@pytest.mark.slow  # pip installs, twice per sandbox
@pytest.mark.parametrize("kind", ["bubblewrap", "landlock"])
async def test_pip_install_e_with_the_workers_index_configuration(
    tmp_path: Path, kind: isolation.Choice, configured: int, index: tuple[int, list[str]]
) -> None:
    ws = workspace(tmp_path)
    with isolation.using(kind, setup_ports=(configured,)):
        report = await run_tests(ws, 1, LIMITS, setup="pip install -e .", network=True)
    assert report.passed, report.failures
    assert report.setup.startswith("`pip install -e .` exited 0")
    assert any("qao_backend-1.0-py3-none-any.whl" in path for path in index[1])
    variables, _ = environment.index_configuration()
    assert variables["PIP_INDEX_URL"].endswith(f":{configured}/simple/")
    assert not any("OPENAI" in name or name == "HOME" for name in variables)


@pytest.mark.slow
async def test_without_the_configuration_the_setup_fails_and_says_why(
    tmp_path: Path, configured: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(environment, "index_configuration", lambda: ({}, []))  # the fix out
    ws = workspace(tmp_path)
    with isolation.using("bubblewrap", setup_ports=(configured,)):
        report = await run_tests(ws, 1, LIMITS, setup="pip install -e .", network=True)
    assert not report.passed and report.failures[0].test == RUN
    message = report.failures[0].message
    assert "ERROR:" in message and "See above" not in message, message


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
