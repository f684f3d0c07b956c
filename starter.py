"""Start builds and steer them from a terminal: `starter.py --help` lists the commands
(cli/, one module per group of them)."""

from __future__ import annotations

from cli.main import app
from core.exit import exit_now

if __name__ == "__main__":
    exit_now(app)
