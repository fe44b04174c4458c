"""Server URL parsing, channel options and transport-error translation."""

from __future__ import annotations

import datetime as dt
import ssl
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dispatch_client import (
    ChannelOptions,
    Client,
    ClientNotConnected,
)
from dispatch_client.connection import grpclib_config, parse_server_url


def test_defaults_are_tls_on_port_443() -> None:
    target = parse_server_url("grpc://dispatch.example.com")
    assert (target.host, target.port) == ("dispatch.example.com", 443)
    assert target.options.ssl is True
    assert isinstance(target.ssl_context, ssl.SSLContext)
    assert target.options.keep_alive is True
    assert target.options.keep_alive_interval == dt.timedelta(seconds=60)
    assert target.options.keep_alive_timeout == dt.timedelta(seconds=20)


def test_plaintext_with_port_and_keep_alive_options() -> None:
    target = parse_server_url(
        "grpc://127.0.0.1:50051?ssl=false&keep_alive=true"
        "&keep_alive_interval_s=5.5&keep_alive_timeout_s=2"
    )
    assert (target.host, target.port, target.ssl_context) == ("127.0.0.1", 50051, None)
    assert target.options.keep_alive_interval == dt.timedelta(seconds=5.5)
    config = grpclib_config(target.options)
    assert config._keepalive_time == 5.5
    assert config._keepalive_timeout == 2
    assert config._http2_min_sent_ping_interval_without_data == 5.5


def test_keep_alive_off_means_no_pings() -> None:
    target = parse_server_url("grpc://h?ssl=false&keep_alive=off")
    assert grpclib_config(target.options).__for_client__()._keepalive_time is None


def test_ipv6_host() -> None:
    target = parse_server_url("grpc://[::1]:9000?ssl=0")
    assert (target.host, target.port) == ("::1", 9000)


def test_channel_defaults_are_overridden_by_the_url() -> None:
    defaults = ChannelOptions(port=50051, ssl=False, keep_alive=False)
    client = Client("grpc://localhost", channel_defaults=defaults, connect=False)
    assert client.channel_defaults is defaults
    assert client.channel_options.port == 50051
    assert client.channel_options.ssl is False
    other = Client("grpc://localhost:1?ssl=true", channel_defaults=defaults, connect=False)
    assert (other.channel_options.port, other.channel_options.ssl) == (1, True)


@pytest.mark.parametrize(
    ("url", "named"),
    [
        ("http://localhost", "grpc://"),
        ("localhost:50051", "grpc://"),
        ("grpc://", "no host"),
        ("grpc://:50051", "no host"),
        ("grpc://host:notaport", "invalid port"),
        ("grpc://host:0", "invalid port"),
        ("grpc://host/path", "path"),
        ("grpc://host#frag", "fragment"),
        ("grpc://host?sll=false", "'sll'"),
        ("grpc://host?ssl=maybe", "ssl='maybe'"),
        ("grpc://host?keep_alive=2", "keep_alive='2'"),
        ("grpc://host?keep_alive_interval_s=-1", "keep_alive_interval_s"),
        ("grpc://host?keep_alive_timeout_s=abc", "keep_alive_timeout_s"),
        ("grpc://host?keep_alive_timeout_s=inf", "keep_alive_timeout_s"),
        ("grpc://host?ssl=true&ssl=false", "more than once"),
        ("grpc://host?ssl_root_certificates_path=/does/not/exist", "ssl_root_certificates_path"),
        ("grpc://host?ssl_private_key_path=/does/not/exist", "ssl_private_key_path"),
    ],
)
def test_bad_urls_raise_value_error_naming_the_problem(url: str, named: str) -> None:
    with pytest.raises(ValueError) as info:
        Client(url, auth_key="k")
    assert named in str(info.value)


def test_credentials_in_the_url_are_rejected_without_echoing_them() -> None:
    with pytest.raises(ValueError, match="credentials") as info:
        parse_server_url("grpc://user:hunter2@host")
    assert "hunter2" not in str(info.value)


def test_unknown_parameter_value_is_not_echoed() -> None:
    with pytest.raises(ValueError, match="'key'") as info:
        parse_server_url("grpc://host?key=topsecret")
    assert "topsecret" not in str(info.value)


def test_tls_file_options_need_tls(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("not a cert")
    with pytest.raises(ValueError, match="ssl_root_certificates_path needs TLS"):
        parse_server_url(f"grpc://host?ssl=false&ssl_root_certificates_path={ca}")
    with pytest.raises(ValueError, match="cannot load"):
        parse_server_url(f"grpc://host?ssl_root_certificates_path={ca}")
    with pytest.raises(ValueError, match="ssl_certificate_chain_path is needed"):
        parse_server_url(f"grpc://host?ssl_private_key_path={ca}")


@given(st.text(max_size=40))
def test_any_string_either_parses_or_raises_value_error(text: str) -> None:
    try:
        # Plaintext defaults: building a TLS context per example is slow.
        target = parse_server_url("grpc://" + text, ChannelOptions(ssl=False))
    except ValueError:
        return
    assert target.host
    assert 1 <= target.port <= 65535


def test_client_key_aliases_and_checks() -> None:
    assert Client("grpc://h", key="k", connect=False)._credentials.key == "k"
    assert Client("grpc://h", auth_key="k", key="k", connect=False)._credentials.key == "k"
    with pytest.raises(ValueError, match="aliases"):
        Client("grpc://h", auth_key="a", key="b")
    with pytest.raises(ValueError, match="sign_secret needs an auth_key"):
        Client("grpc://h", sign_secret="s")
    with pytest.raises(ValueError, match="auth_key must be a non-empty str"):
        Client("grpc://h", auth_key="")
    with pytest.raises(ValueError, match="call_timeout"):
        Client("grpc://h", call_timeout=dt.timedelta(0))


def test_repr_shows_the_url_only() -> None:
    client = Client("grpc://h:1?ssl=false", auth_key="KEY-abc123", sign_secret="SECRET-xyz789")
    for text in (repr(client), str(client), repr(vars(client))):
        assert "KEY-abc123" not in text
        assert "SECRET-xyz789" not in text
    assert repr(client) == "Client('grpc://h:1?ssl=false', connected)"


def test_connect_and_channel_outside_a_loop() -> None:
    client = Client("grpc://h:1?ssl=false", connect=False)
    assert not client.is_connected
    with pytest.raises(ClientNotConnected):
        _ = client.channel
    client.connect()
    assert client.is_connected
    client.connect("grpc://h:1?ssl=false")  # same URL: a no-op
    client.connect("grpc://other:2?ssl=false")
    assert client.server_url == "grpc://other:2?ssl=false"
    with pytest.raises(ValueError, match="grpc://"):
        client.connect("http://bad")
    assert client.server_url == "grpc://other:2?ssl=false"
