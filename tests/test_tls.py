"""TLS end to end: a throw-away CA, a TLS reference server, and our client."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme

from dispatch_client import Client, Unavailable
from dispatch_client.testing import RunningServer, running_server

pytestmark = pytest.mark.anyio


@dataclass
class Pki:
    ca_pem: Path
    client_cert_pem: Path
    client_key_pem: Path
    server_context: ssl.SSLContext
    mtls_server_context: ssl.SSLContext


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pki]:
    ca = trustme.CA()
    directory = tmp_path_factory.mktemp("pki")
    ca_pem = directory / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_pem))
    server_cert = ca.issue_cert("localhost", "127.0.0.1")
    client_cert = ca.issue_cert("dispatch-client@example.com")
    client_cert_pem = directory / "client.pem"
    client_key_pem = directory / "client.key"
    client_cert.private_key_pem.write_to_path(str(client_key_pem))
    for blob in client_cert.cert_chain_pems:
        blob.write_to_path(str(client_cert_pem), append=True)

    def server_context(require_client_cert: bool) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server_cert.configure_cert(context)
        context.set_alpn_protocols(["h2"])
        if require_client_cert:
            ca.configure_trust(context)
            context.verify_mode = ssl.CERT_REQUIRED
        return context

    yield Pki(ca_pem, client_cert_pem, client_key_pem, server_context(False), server_context(True))


@pytest.fixture
async def tls_server(pki: Pki) -> AsyncIterator[RunningServer]:
    async with running_server(ssl=pki.server_context) as srv:
        yield srv


async def test_client_with_the_ca_talks_tls(tls_server: RunningServer, pki: Pki) -> None:
    for host in ("localhost", "127.0.0.1"):
        url = f"grpc://{host}:{tls_server.port}?ssl_root_certificates_path={pki.ca_pem}"
        async with Client(url) as client:
            created = await client.create(1, "TLS", "NOW", None, [1])
            assert created.metadata is not None
            assert await client.get(1, created.metadata.dispatch_id) == created


async def test_client_without_the_ca_fails_with_unavailable(tls_server: RunningServer) -> None:
    url = f"grpc://localhost:{tls_server.port}"
    async with Client(url) as client:
        with pytest.raises(Unavailable, match="TLS handshake failed") as info:
            await client.get(1, 1)
    assert info.value.server_url == url


async def test_plaintext_client_against_tls_server_fails_clearly(tls_server: RunningServer) -> None:
    async with Client(f"grpc://localhost:{tls_server.port}?ssl=false") as client:
        with pytest.raises(Unavailable):
            await client.get(1, 1)


async def test_tls_client_against_plaintext_server_fails_clearly(pki: Pki) -> None:
    async with running_server() as plain:
        url = f"grpc://localhost:{plain.port}?ssl_root_certificates_path={pki.ca_pem}"
        async with Client(url) as client:
            with pytest.raises(Unavailable):
                await client.get(1, 1)


async def test_client_certificate(pki: Pki) -> None:
    async with running_server(ssl=pki.mtls_server_context) as srv:
        base = f"grpc://localhost:{srv.port}?ssl_root_certificates_path={pki.ca_pem}"
        with_cert = (
            f"{base}&ssl_certificate_chain_path={pki.client_cert_pem}"
            f"&ssl_private_key_path={pki.client_key_pem}"
        )
        async with Client(with_cert) as client:
            assert [d async for d in client.dispatches(1)] == []
        async with Client(base) as client:
            with pytest.raises(Unavailable):
                await client.get(1, 1)
