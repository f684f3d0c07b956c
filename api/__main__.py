"""`python -m api`: serve the HTTP API with uvicorn on API_HOST:API_PORT."""

from __future__ import annotations

from typing import Annotated

import typer
import uvicorn

from api.guard import is_loopback
from api.main import create_app
from core.exit import exit_now
from core.settings import get_settings
from core.telemetry import setup_logging


def main(
    host: Annotated[str | None, typer.Option(help="Default: API_HOST.")] = None,
    port: Annotated[int | None, typer.Option(help="Default: API_PORT.")] = None,
) -> None:
    """Serve the Q Assistant Orchestration API (OpenAPI page at /docs)."""
    settings = get_settings()
    setup_logging(settings)
    host = host or settings.api_host
    if settings.api_key is None and not is_loopback(host):
        raise SystemExit(
            f"refusing to serve on {host} without an API key: anyone who reaches it could "
            "register repositories and run commands. Set API_KEY (e.g. "
            "API_KEY=$(python -c 'import secrets; print(secrets.token_urlsafe(32))')), "
            "or listen on 127.0.0.1."
        )
    uvicorn.run(
        create_app(settings),
        host=host,
        port=port or settings.api_port,
        log_config=None,
    )


if __name__ == "__main__":
    exit_now(typer.run, main)
