"""Runs BuildWorkflow and the role activities on the task queue; stops cleanly on SIGINT/SIGTERM
(serving/: how the worker starts and what it serves).

Start as many as you like on one task queue (on one machine or many): they share the builds.
"""

from __future__ import annotations

import typer

from core.exit import exit_now
from serving.main import main

if __name__ == "__main__":
    exit_now(typer.run, main)
