"""Connecting to a real cluster or Temporal Cloud: mTLS through a TLS-terminating proxy in front of
the dev server (which has no TLS of its own) that demands a client certificate, as Cloud does;
the refusals a wrong set-up gets; API-key and settings rules."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ipaddress
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from pydantic import SecretStr, ValidationError

from core.settings import Settings
from core.states import BuildState
from core.temporal import connect, tls_config
from tests.helpers import make_request, running_worker, start


@dataclass
class Pem:
    cert: Path
    key: Path


def issue(
    folder: Path, name: str, *, ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None,
    usage: x509.ObjectIdentifier | None = None,
) -> tuple[Pem, x509.Certificate, ec.EllipticCurvePrivateKey]:  # fmt: skip
    """A CA (ca=None) or a leaf certificate signed by `ca`, written as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca[0].subject if ca else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca is None, path_length=None), critical=True)
    )
    if ca is not None:
        assert usage is not None
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    cert = builder.sign(ca[1] if ca else key, hashes.SHA256())
    pem = Pem(folder / f"{name}.pem", folder / f"{name}.key")
    pem.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return pem, cert, key


@dataclass
class Pki:
    ca: Pem
    server: Pem
    client: Pem
    stranger_ca: Pem  # a CA nobody trusts
    stranger_client: Pem  # a client certificate it signed


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    ca, ca_cert, ca_key = issue(folder, "ca", ca=None)
    server, _, _ = issue(
        folder, "server", ca=(ca_cert, ca_key), usage=ExtendedKeyUsageOID.SERVER_AUTH
    )
    client, _, _ = issue(
        folder, "client", ca=(ca_cert, ca_key), usage=ExtendedKeyUsageOID.CLIENT_AUTH
    )
    other, other_cert, other_key = issue(folder, "stranger-ca", ca=None)
    stranger, _, _ = issue(
        folder, "stranger", ca=(other_cert, other_key), usage=ExtendedKeyUsageOID.CLIENT_AUTH
    )
    return Pki(ca, server, client, other, stranger)


@dataclass
class Proxy:
    address: str
    refusals: list[str]  # the server side's handshake errors, as OpenSSL names them
    refused: asyncio.Event  # set when the first refusal is recorded

    async def verdict(self, seconds: float = 10) -> list[str]:
        """The refusals, once there is one: the client may give up on a handshake before the
        proxy has read the client's alert, so its error can come first."""
        async with asyncio.timeout(seconds):
            await self.refused.wait()
        return list(self.refusals)


@contextlib.asynccontextmanager
async def mtls_proxy(pki: Pki, upstream: str) -> AsyncIterator[Proxy]:
    """TLS with ALPN h2 and a required client certificate, forwarding to the dev server."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki.server.cert, pki.server.key)
    context.load_verify_locations(pki.ca.cert)
    context.verify_mode = ssl.CERT_REQUIRED
    context.set_alpn_protocols(["h2"])
    host, port = upstream.split(":")
    refusals: list[str] = []
    refused = asyncio.Event()

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await writer.start_tls(context)
        except (ssl.SSLError, ConnectionError) as err:
            refusals.append(getattr(err, "reason", None) or type(err).__name__)
            refused.set()
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection(host, int(port))
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    async with server:
        yield Proxy(f"127.0.0.1:{server.sockets[0].getsockname()[1]}", refusals, refused)
        server.close()


async def test_mtls_connects_and_runs_a_build_through_the_proxy(
    pki: Pki, temporal_address: str, settings: Settings, engine
):
    async with mtls_proxy(pki, temporal_address) as proxy:
        tls = settings.model_copy(
            update={
                "temporal_address": proxy.address,
                "temporal_tls_cert": pki.client.cert,
                "temporal_tls_key": pki.client.key,
                "temporal_tls_ca": pki.ca.cert,
            }
        )
        client = await connect(tls)
        async with running_worker(client, tls, engine):
            handle = await start(client, tls, make_request())
            async with asyncio.timeout(60):
                result = await handle.result()
    assert result.state is BuildState.COMPLETE and proxy.refusals == []


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("no client certificate", "PEER_DID_NOT_RETURN_A_CERTIFICATE"),
        ("client certificate from an unknown CA", "CERTIFICATE_VERIFY_FAILED"),
        ("server not trusted", "TLSV1_ALERT_UNKNOWN_CA"),  # the client's alert
    ],
)
async def test_a_wrong_tls_set_up_is_refused(
    pki: Pki, temporal_address: str, settings: Settings, case: str, reason: str
):
    update: dict[str, object] = {"temporal_tls_ca": pki.ca.cert}
    if case == "no client certificate":
        update["temporal_tls"] = True
    elif case == "client certificate from an unknown CA":
        update |= {"temporal_tls_cert": pki.stranger_client.cert}
        update |= {"temporal_tls_key": pki.stranger_client.key}
    else:  # the client trusts another CA than the one that signed the server's certificate
        update |= {"temporal_tls_cert": pki.client.cert, "temporal_tls_key": pki.client.key}
        update["temporal_tls_ca"] = pki.stranger_ca.cert
    async with mtls_proxy(pki, temporal_address) as proxy:
        wrong = settings.model_copy(update={"temporal_address": proxy.address, **update})
        with pytest.raises(RuntimeError, match="Failed client connect"):
            async with asyncio.timeout(30):
                await connect(wrong)
        refusals = await proxy.verdict()
    assert set(refusals) == {reason}


def test_tls_settings():
    plain = Settings(_env_file=None)  # type: ignore[call-arg]
    assert tls_config(plain) is False
    cloud = Settings(_env_file=None, temporal_api_key=SecretStr("k"))  # type: ignore[call-arg]
    config = tls_config(cloud)  # an API key implies TLS (with the system's roots)
    assert config is not False and not isinstance(config, bool)
    assert config.client_cert is None and config.server_root_ca_cert is None
    with pytest.raises(ValidationError, match="TEMPORAL_TLS_CERT and TEMPORAL_TLS_KEY go together"):
        Settings(_env_file=None, temporal_tls_cert=Path("c.pem"))  # type: ignore[call-arg]
    missing = Settings(  # type: ignore[call-arg]
        _env_file=None, temporal_tls_cert=Path("/nope/c.pem"), temporal_tls_key=Path("/nope/k")
    )
    with pytest.raises(SystemExit, match=r"cannot read Temporal TLS file /nope/c\.pem"):
        tls_config(missing)


def test_an_empty_variable_means_unset(monkeypatch: pytest.MonkeyPatch):
    """compose passes `${OPENAI_API_KEY:-}` as an empty string: that is the offline model."""
    monkeypatch.setenv("OPENAI_API_KEY", "")
    monkeypatch.setenv("WORKER_ACTIVITIES_PER_SECOND", "")
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.offline_model and settings.worker_activities_per_second is None
