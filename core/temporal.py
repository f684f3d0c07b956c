"""The Temporal client, configured in one place: address, namespace, TLS or API key."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from temporalio.client import Client, Interceptor
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.runtime import Runtime
from temporalio.service import TLSConfig

from core.settings import Settings


def tls_config(settings: Settings) -> TLSConfig | bool:
    """TLS as the settings ask: mTLS with a client certificate, server-only TLS, or none."""
    if not settings.temporal_uses_tls:
        return False

    def read(path: Path | None) -> bytes | None:
        if path is None:
            return None
        try:
            return path.read_bytes()
        except OSError as err:
            raise SystemExit(f"cannot read Temporal TLS file {path}: {err.strerror}") from err

    return TLSConfig(
        server_root_ca_cert=read(settings.temporal_tls_ca),
        domain=settings.temporal_tls_server_name,
        client_cert=read(settings.temporal_tls_cert),
        client_private_key=read(settings.temporal_tls_key),
    )


async def connect(
    settings: Settings,
    *,
    runtime: Runtime | None = None,
    interceptors: Sequence[Interceptor] = (),
) -> Client:
    api_key = settings.temporal_api_key
    return await Client.connect(
        settings.temporal_address,
        namespace=settings.temporal_namespace,
        api_key=api_key.get_secret_value() if api_key else None,
        tls=tls_config(settings),
        data_converter=pydantic_data_converter,
        runtime=runtime,
        interceptors=interceptors,
    )
