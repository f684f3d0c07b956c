"""The Temporal client, configured in one place: address, namespace, TLS or API key.

The settings (core/settings.py, with this project's variable names) become a profile of the
SDK's environment configuration (`temporalio.envconfig`), which turns it into the arguments
of `Client.connect`.
"""

from __future__ import annotations

from collections.abc import Sequence

from temporalio.client import Client, Interceptor
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.envconfig import ClientConfigProfile, ClientConfigTLS, ClientConnectConfig
from temporalio.runtime import Runtime
from temporalio.service import TLSConfig

from core.settings import Settings


def profile(settings: Settings) -> ClientConfigProfile:
    """The settings as an envconfig profile (TLS files by path, read when connecting)."""
    api_key = settings.temporal_api_key
    tls = ClientConfigTLS(
        disabled=not settings.temporal_uses_tls,
        server_name=settings.temporal_tls_server_name,
        server_root_ca_cert=settings.temporal_tls_ca,
        client_cert=settings.temporal_tls_cert,
        client_private_key=settings.temporal_tls_key,
    )
    return ClientConfigProfile(
        address=settings.temporal_address,
        namespace=settings.temporal_namespace,
        api_key=api_key.get_secret_value() if api_key else None,
        tls=tls,
    )


def connect_config(settings: Settings) -> ClientConnectConfig:
    """The arguments of `Client.connect` the settings give, TLS files read."""
    try:
        return profile(settings).to_client_connect_config()
    except OSError as err:
        raise SystemExit(f"cannot read Temporal TLS file {err.filename}: {err.strerror}") from err


def tls_config(settings: Settings) -> TLSConfig | bool:
    """TLS as the settings ask: mTLS with a client certificate, server-only TLS, or none."""
    return connect_config(settings).get("tls", False)


async def connect(
    settings: Settings,
    *,
    runtime: Runtime | None = None,
    interceptors: Sequence[Interceptor] = (),
) -> Client:
    return await Client.connect(
        **connect_config(settings),
        data_converter=pydantic_data_converter,
        runtime=runtime,
        interceptors=interceptors,
    )
