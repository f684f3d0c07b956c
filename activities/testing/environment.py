"""A workspace's own Python environment, made by the project's setup command.

A project with a `setup_command` (`pip install -e .`, `pip install -r requirements.txt`)
gets a virtual environment beside its workspace's repository, made once per workspace before
its first test run: `python -m venv --system-site-packages` of the worker's interpreter, which
also sees the worker's own packages (pytest, ruff) through a `.pth` file, so a setup command
adds the project's dependencies to what a test run already has. The setup command runs in the
sandbox like all generated code, with the repository and this environment its only writable
places, and with network only where a person allows it (SANDBOX_SETUP_NETWORK). Its test runs
then use the environment's interpreter, with the environment read-only.

A workspace is a cache, and so is its environment: a missing one is made again, and one made
for another setup command is replaced.
"""

from __future__ import annotations

import asyncio
import configparser
import hashlib
import importlib.util
import os
import site
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from activities import paths
from activities.sandbox.runs import Limits, RunResult, run_limited

DONE = ".setup-done"  # beside the environment: the hash of the setup command that made it
WORKER_PACKAGES = "_qao_worker_packages.pth"
VENV_SECONDS = 60
PIP = """#!{python}
import sys
from pip._internal.cli.main import main
sys.exit(main())
"""


@dataclass(frozen=True)
class Environment:
    root: Path

    @property
    def bin(self) -> Path:
        return self.root / "bin"

    @property
    def python(self) -> Path:
        return self.bin / "python"

    @property
    def marker(self) -> Path:
        """Beside the environment, not in it: a run may write the environment, never this."""
        return self.root.with_name(f".{self.root.name}{DONE}")

    def made_by(self, command: str) -> bool:
        done = self.marker
        return done.is_file() and done.read_text().strip() == _key(command)


@dataclass(frozen=True)
class Setup:
    """A setup command's run (None `run`: the environment was made by it already)."""

    environment: Environment
    command: str
    run: RunResult | None

    @property
    def ok(self) -> bool:
        return self.run is None or self.run.ok

    def describe(self) -> str:
        if self.run is None:
            return f"`{self.command}` ran for this workspace already"
        if self.run.timed_out:
            return f"`{self.command}` was killed at its time limit after {self.run.seconds:.0f}s"
        return f"`{self.command}` exited {self.run.returncode} in {self.run.seconds:.1f}s"


def _key(command: str) -> str:
    return hashlib.sha256(command.encode()).hexdigest()


def remove(root: Path) -> None:
    """The environment at `root` gone, with the marker that says what made it."""
    paths.remove_tree(Environment(root).marker)
    paths.remove_tree(root)


def create(root: Path) -> Environment:
    """A fresh virtual environment at `root` that sees the system's and the worker's packages
    (blocking: call it through a thread)."""
    remove(root)
    subprocess.run(
        [sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(root)],
        check=True,
        capture_output=True,
        timeout=VENV_SECONDS,
    )
    env = Environment(root)
    packages = sorted(root.glob("lib/python*/site-packages"))
    # After its own packages: what the setup command installs comes first.
    worker = [p for p in site.getsitepackages() if Path(p).is_dir()]
    for folder in packages:
        (folder / WORKER_PACKAGES).write_text("".join(f"{p}\n" for p in worker))
    if importlib.util.find_spec("pip") is not None:
        # The worker's pip, installing into this environment (a venv of its own would need
        # ensurepip, seconds per workspace).
        pip = env.bin / "pip"
        pip.write_text(PIP.format(python=env.python))
        pip.chmod(0o755)
    return env


# What a setup command with network gets of the worker's environment: its package index and
# TLS configuration, nothing else (no credentials of its own, no tokens, no HOME).
NETWORK_VARIABLES = (
    "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE",
    "HTTPS_PROXY", "HTTP_PROXY", "NO_PROXY", "ALL_PROXY",
    "https_proxy", "http_proxy", "no_proxy", "all_proxy",
    "PIP_CONFIG_FILE", "UV_INDEX_URL", "UV_EXTRA_INDEX_URL",
)  # fmt: skip


def _pip_config_files() -> list[Path]:
    """pip's configuration files of the worker, in pip's own order (global, then the user's)."""
    dirs = os.environ.get("XDG_CONFIG_DIRS", "/etc/xdg").split(os.pathsep)
    found = [Path(d) / "pip" / "pip.conf" for d in dirs if d] + [Path("/etc/pip.conf")]
    config = Path(os.environ.get("XDG_CONFIG_HOME", Path.home() / ".config"))
    found += [Path.home() / ".pip" / "pip.conf", config / "pip" / "pip.conf"]
    return [f for f in found if f.is_file()]


def _named_paths(value: str) -> list[Path]:
    """The files and folders a configuration value names (a CA bundle, a constraints file,
    find-links folders, file:// index URLs)."""
    paths: list[Path] = []
    for token in value.split():
        token = token.removeprefix("file://")
        if token.startswith("/") and os.path.exists(token):
            paths.append(Path(token))
    return paths


def index_configuration() -> tuple[dict[str, str], list[Path]]:
    """The worker's package-index and TLS configuration for a setup command with network: the
    variables (every PIP_*, the CA bundles, the proxies) and the files a run must read (pip's
    configuration files, and every file or folder a value names). The user's own pip.conf is
    handed over as PIP_CONFIG_FILE, since the run's HOME is not the worker's."""
    variables = {
        k: v for k, v in os.environ.items() if k.startswith("PIP_") or k in NETWORK_VARIABLES
    }
    files = _pip_config_files()
    user = [f for f in files if f.is_relative_to(Path.home())]
    if user and "PIP_CONFIG_FILE" not in variables:
        variables["PIP_CONFIG_FILE"] = str(user[-1])
    readable = list(files)
    for file in files:
        parser = configparser.RawConfigParser()
        try:
            parser.read(file)
        except configparser.Error:
            continue
        for section in parser.sections():
            for value in parser[section].values():
                readable += _named_paths(value)
    for value in variables.values():
        readable += _named_paths(value)
    return variables, sorted(set(readable))


async def prepare(
    repo: Path,
    root: Path,
    command: str,
    *,
    limits: Limits,
    network: bool,
    scratch: Path,
    beat: Callable[[str], None] | None = None,
) -> Setup:
    """The environment at `root` made by `command` run in `repo`: once (a later call finds it
    done), and again from scratch when the command changed or its last run failed. `scratch`
    is the worker's folder for the run's own (activities/sandbox.run_limited)."""
    env = Environment(root)
    if await asyncio.to_thread(env.made_by, command):
        return Setup(env, command, None)
    env = await asyncio.to_thread(create, root)
    variables, readable = index_configuration() if network else ({}, [])
    run = await run_limited(
        ["/bin/sh", "-c", command],
        cwd=repo,
        limits=limits,
        scratch=scratch,
        beat=(lambda detail: beat(f"setup command: {detail}")) if beat else None,
        writable=[root],
        readonly=readable,
        network=network,
        venv=root,
        env=variables,
    )
    if run.ok:
        await asyncio.to_thread(env.marker.write_text, _key(command))
    return Setup(env, command, run)
