"""Server URL -> `ServerTarget`: host, port, `ChannelOptions` from the query, the TLS context.

Re-exported by `dispatch_client.connection`, which is where callers import them from.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import ssl
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

from . import _defaults

DEFAULT_PORT = _defaults.PORT

_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off"})
_SSL_FILE_PARAMS = (
    "ssl_root_certificates_path",
    "ssl_private_key_path",
    "ssl_certificate_chain_path",
)
_PARAMS = ("ssl", *_SSL_FILE_PARAMS, "keep_alive", "keep_alive_interval_s", "keep_alive_timeout_s")


@dataclasses.dataclass(frozen=True)
class ChannelOptions:
    """How to open a channel; URL query parameters override these defaults.

    Attributes:
        port: the port when the URL names none.
        ssl: whether to use TLS.
        ssl_root_certificates_path: PEM file of the CAs to trust (None: the system's).
        ssl_private_key_path: PEM file of the client key for mutual TLS.
        ssl_certificate_chain_path: PEM file of the client certificate chain for mutual TLS.
        keep_alive: whether to ping the server while a call is open.
        keep_alive_interval: time between pings.
        keep_alive_timeout: how long to wait for a ping's answer before the
            connection counts as dead.
    """

    port: int = DEFAULT_PORT
    ssl: bool = True
    ssl_root_certificates_path: Path | None = None
    ssl_private_key_path: Path | None = None
    ssl_certificate_chain_path: Path | None = None
    keep_alive: bool = True
    keep_alive_interval: dt.timedelta = _defaults.KEEP_ALIVE_INTERVAL
    keep_alive_timeout: dt.timedelta = _defaults.KEEP_ALIVE_TIMEOUT


@dataclasses.dataclass(frozen=True)
class ServerTarget:
    """A parsed server URL: where to connect and with which options.

    Attributes:
        url: the URL as given.
        host: the host name or address.
        port: the port (the URL's, else the default's).
        options: the effective channel options.
        ssl_context: the TLS context, or None without TLS.
    """

    url: str
    """The URL as given; it never holds credentials (those are rejected)."""
    host: str
    port: int
    options: ChannelOptions
    ssl_context: ssl.SSLContext | None = dataclasses.field(default=None, compare=False)


def _parse_bool(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"server URL parameter {name}={raw!r} is not a boolean (use true or false)")


def _parse_seconds(name: str, raw: str) -> dt.timedelta:
    try:
        seconds = float(raw)
    except ValueError:
        seconds = float("nan")
    if not seconds > 0 or seconds == float("inf"):
        raise ValueError(
            f"server URL parameter {name}={raw!r} must be a positive number of seconds"
        )
    return dt.timedelta(seconds=seconds)


def _parse_file(name: str, raw: str) -> Path:
    path = Path(raw).expanduser()
    if not raw or not path.is_file():
        raise ValueError(f"server URL parameter {name}: file {raw!r} does not exist")
    return path


def parse_server_url(url: str, defaults: ChannelOptions | None = None) -> ServerTarget:
    """Parse and check a `grpc://` server URL.

    Args:
        url: `grpc://host[:port][?param=value&...]` with the parameters listed
            in the module docstring; no credentials, path or fragment.
        defaults: options the URL's parameters override.

    Returns:
        The target, with its TLS context built (certificate files loaded).

    Raises:
        ValueError: the URL is malformed, has an unknown or repeated parameter,
            a bad value, or a certificate file that cannot be loaded; the
            message names the part (and never echoes credentials).
    """
    defaults = defaults or ChannelOptions()
    if not isinstance(url, str):
        raise ValueError(f"server URL must be a str, got {type(url).__name__}")
    url = url.strip()
    parts = urlsplit(url)
    if parts.scheme.lower() != "grpc":
        raise ValueError(f"server URL {url!r} must start with grpc:// (scheme {parts.scheme!r})")
    if "@" in parts.netloc:
        # Never echo the URL here: the part before "@" may be a secret.
        raise ValueError(
            "server URL must not contain credentials (user:password@); pass auth_key= instead"
        )
    if not parts.hostname:
        raise ValueError(f"server URL {url!r} has no host")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"server URL {url!r} has an invalid port") from None
    if port == 0:
        raise ValueError(f"server URL {url!r} has an invalid port 0")
    if parts.path not in ("", "/"):
        raise ValueError(f"server URL {url!r} must not have a path ({parts.path!r})")
    if parts.fragment:
        raise ValueError(f"server URL {url!r} must not have a fragment")

    values: dict[str, object] = {}
    seen: set[str] = set()
    try:
        query = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
    except ValueError:
        raise ValueError(f"server URL {url!r} has a malformed query string") from None
    for name, raw in query:
        if name not in _PARAMS:
            raise ValueError(
                f"server URL has an unknown parameter {name!r} (known: {', '.join(_PARAMS)})"
            )
        if name in seen:
            raise ValueError(f"server URL parameter {name} is given more than once")
        seen.add(name)
        if name in ("ssl", "keep_alive"):
            values[name] = _parse_bool(name, raw)
        elif name.endswith("_s"):
            values[name.removesuffix("_s")] = _parse_seconds(name, raw)
        else:
            values[name] = _parse_file(name, raw)
    options = dataclasses.replace(defaults, **values)  # type: ignore[arg-type]
    options = dataclasses.replace(options, port=port or defaults.port)
    return ServerTarget(
        url=url,
        host=parts.hostname,
        port=options.port,
        options=options,
        ssl_context=_ssl_context(options, explicit=seen),
    )


def _ssl_context(options: ChannelOptions, explicit: set[str]) -> ssl.SSLContext | None:
    files = {name: getattr(options, name) for name in _SSL_FILE_PARAMS}
    if not options.ssl:
        given = sorted(name for name in _SSL_FILE_PARAMS if name in explicit)
        if given:
            raise ValueError(f"server URL parameter {given[0]} needs TLS, but ssl=false")
        return None
    key, chain = files["ssl_private_key_path"], files["ssl_certificate_chain_path"]
    if (key is None) != (chain is None):
        missing = "ssl_certificate_chain_path" if chain is None else "ssl_private_key_path"
        raise ValueError(f"server URL parameter {missing} is needed for a client certificate")
    root = files["ssl_root_certificates_path"]
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=root)
    except (ssl.SSLError, OSError) as exc:
        raise ValueError(
            f"server URL parameter ssl_root_certificates_path: cannot load {root}: {exc}"
        ) from None
    if root is None:
        _add_certifi(context)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["h2"])
    if chain is not None:
        try:
            context.load_cert_chain(chain, key)
        except (ssl.SSLError, OSError) as exc:
            raise ValueError(
                "server URL parameters ssl_certificate_chain_path/ssl_private_key_path: "
                f"cannot load the client certificate: {exc}"
            ) from None
    return context


def _add_certifi(context: ssl.SSLContext) -> None:
    # Some Pythons (e.g. python.org macOS builds) ship without system roots;
    # use certifi's bundle as well when it happens to be installed.
    try:
        import certifi  # type: ignore[import-not-found, unused-ignore]  # typed when installed
    except ImportError:
        return
    context.load_verify_locations(certifi.where())
