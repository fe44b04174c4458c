"""The server's command-line options, defined once for both entry points.

`python -m dispatch_client.server` (argparse, no extra needed) and
`dispatch-cli serve` (click, the `cli` extra) build their options from
`SERVER_OPTIONS` and turn the parsed values into a `ServerConfig` with
`ServerConfig.from_options`, which runs the same checks for both. Running the
server until a signal (`run_until_stopped`) is shared as well.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import signal
import ssl as _ssl
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import anyio

from .._auth import is_header_safe
from .app import DispatchServer, serve, server_ssl_context
from .service import DEFAULT_STREAM_BUFFER_SIZE
from .stores import check_db

__all__ = [
    "LOG_FORMAT",
    "SERVER_OPTIONS",
    "ServerConfig",
    "ServerOption",
    "add_server_arguments",
    "cancel_on_signal",
    "configure_logging",
    "run_until_stopped",
]

_log = logging.getLogger(__name__)

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_MAX_PORT = 65535


@dataclass(frozen=True)
class ServerConfig:
    """Everything the command line sets for one server run (checked on construction).

    Attributes:
        host: address to listen on.
        port: TCP port, 0..65535; 0 picks a free one.
        db: SQLite file that keeps dispatches, ":memory:", or a `postgresql://` URL
            (its password never in the repr).
        keys: accepted API keys; empty means keys are not checked. Never in the repr.
        sign_secret: secret that signed requests must be made with, or None. Never in the repr.
        tls_cert: TLS certificate chain file (PEM), or None for plain HTTP/2.
        tls_key: TLS private key file (PEM); given exactly when `tls_cert` is.
        stream_buffer: events buffered per stream before a slow subscriber is cut off (>= 1).
        log_level: a `logging` level name such as "INFO" (any case).
        shutdown_grace: seconds a stopping server keeps serving while its health
            service already says NOT_SERVING (>= 0), so load balancers move away first.
    """

    host: str = "127.0.0.1"
    port: int = 50051
    db: str = field(default=":memory:", repr=False)
    keys: tuple[str, ...] = field(default=(), repr=False)
    sign_secret: str | None = field(default=None, repr=False)
    tls_cert: str | None = None
    tls_key: str | None = None
    stream_buffer: int = DEFAULT_STREAM_BUFFER_SIZE
    log_level: str = "INFO"
    shutdown_grace: int = 0

    def __post_init__(self) -> None:
        """Check the values together.

        Raises:
            ValueError: a value is out of range, a key is empty or not printable
                ASCII, the sign secret is empty, `db` is a PostgreSQL URL that
                does not parse (or its driver is missing), only one of the TLS
                files is given, a TLS file does not exist, or the log level is unknown;
                the message names the command-line option.
        """
        if isinstance(self.port, bool) or not 0 <= self.port <= _MAX_PORT:
            raise ValueError(f"--port must be in 0..{_MAX_PORT}, got {self.port!r}")
        if isinstance(self.stream_buffer, bool) or self.stream_buffer < 1:
            raise ValueError(f"--stream-buffer must be at least 1, got {self.stream_buffer!r}")
        if isinstance(self.shutdown_grace, bool) or self.shutdown_grace < 0:
            raise ValueError(f"--shutdown-grace must be at least 0, got {self.shutdown_grace!r}")
        check_db(self.db)
        for key in self.keys:
            # A key no header can carry could never be presented by a client.
            if not isinstance(key, str) or not key or not is_header_safe(key):
                raise ValueError(
                    "--key must be non-empty printable ASCII (it travels as a gRPC"
                    " header); the value is not shown"
                )
        if self.sign_secret is not None and (
            not isinstance(self.sign_secret, str) or not self.sign_secret
        ):
            raise ValueError("--sign-secret must not be empty")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("--tls-cert and --tls-key go together; give both or neither")
        for option, path in (("--tls-cert", self.tls_cert), ("--tls-key", self.tls_key)):
            if path is not None and not os.path.isfile(path):
                raise ValueError(f"{option} {path!r} is not a file")
        if not isinstance(logging.getLevelNamesMapping().get(self.log_level.upper()), int):
            raise ValueError(
                f"--log-level {self.log_level!r} is not a logging level"
                " (allowed: DEBUG, INFO, WARNING, ERROR, CRITICAL)"
            )

    @classmethod
    def from_options(
        cls,
        *,
        keys: Iterable[str] | None = None,
        **values: object,
    ) -> ServerConfig:
        """Build a config from parsed options, keyed by `ServerOption.dest`.

        Args:
            keys: the repeated `--key` values (None or empty: keys are not checked).
            **values: the other options by field name; missing ones take the default.

        Returns:
            The checked configuration.

        Raises:
            ValueError: see `__post_init__`; the message names the option.
            TypeError: an unknown option name.
        """
        return cls(keys=tuple(keys or ()), **values)  # type: ignore[arg-type]

    def ssl_context(self) -> _ssl.SSLContext | None:
        """Return the server's TLS context, or None without TLS files.

        Returns:
            A context loaded from `tls_cert` and `tls_key`, or None.

        Raises:
            OSError: a file cannot be read.
            ssl.SSLError: the files are not a matching PEM certificate and key.
        """
        if self.tls_cert is None or self.tls_key is None:
            return None
        return server_ssl_context(self.tls_cert, self.tls_key)


@dataclass(frozen=True)
class ServerOption:
    """One command-line option of the server, in a form both argparse and click can use.

    Attributes:
        flag: the long option, e.g. "--port".
        dest: the `ServerConfig` field it sets.
        help: one line of help, without the default (each parser adds it).
        kind: `int` or `str`, the type of one value.
        metavar: the value's placeholder in the help, or None for the default.
        repeat: whether the option may be given several times (values collected in order).
    """

    flag: str
    dest: str
    help: str
    kind: type[int] | type[str] = str
    metavar: str | None = None
    repeat: bool = False

    @property
    def default(self) -> object:
        """The default value: the `ServerConfig` field's default (None or () for none)."""
        default = _DEFAULTS[self.dest]
        return None if self.repeat else default


_DEFAULTS = {f.name: f.default for f in dataclasses.fields(ServerConfig)}

SERVER_OPTIONS: tuple[ServerOption, ...] = (
    ServerOption("--host", "host", "Address to listen on.", metavar="HOST"),
    ServerOption(
        "--port", "port", "Port (0..65535; 0 picks a free one).", kind=int, metavar="PORT"
    ),
    ServerOption(
        "--db",
        "db",
        "SQLite file that keeps dispatches across restarts (':memory:' keeps none), or a"
        " postgresql://user:password@host:port/database URL that several servers (replicas)"
        " share; needs the postgresql extra.",
        metavar="FILE|URL",
    ),
    ServerOption(
        "--key",
        "keys",
        "Accepted API key (repeatable); without any, keys are not checked.",
        metavar="KEY",
        repeat=True,
    ),
    ServerOption(
        "--sign-secret",
        "sign_secret",
        "Require signed requests (ts, nonce, sig metadata) made with this secret.",
        metavar="SECRET",
    ),
    ServerOption("--tls-cert", "tls_cert", "TLS certificate chain (PEM).", metavar="FILE"),
    ServerOption("--tls-key", "tls_key", "TLS private key (PEM).", metavar="FILE"),
    ServerOption(
        "--stream-buffer",
        "stream_buffer",
        "Events buffered per stream before a slow subscriber is cut off.",
        kind=int,
        metavar="N",
    ),
    ServerOption(
        "--log-level", "log_level", "Logging level (DEBUG, INFO, WARNING, ...).", metavar="LEVEL"
    ),
    ServerOption(
        "--shutdown-grace",
        "shutdown_grace",
        "Seconds to keep serving after SIGTERM while health says NOT_SERVING, before"
        " open streams are ended (give load balancers time to move away).",
        kind=int,
        metavar="SECONDS",
    ),
)


def add_server_arguments(parser: argparse.ArgumentParser) -> None:
    """Add every option of `SERVER_OPTIONS` to an argparse parser.

    Args:
        parser: the parser to extend; its namespace gets one attribute per
            `ServerOption.dest`, ready for `ServerConfig.from_options(**vars(ns))`.
    """
    for option in SERVER_OPTIONS:
        help_text = option.help
        if option.default is not None:
            help_text += " (default: %(default)s)"
        parser.add_argument(
            option.flag,
            dest=option.dest,
            type=option.kind,
            default=option.default,
            metavar=option.metavar,
            action="append" if option.repeat else "store",
            help=help_text,
        )


def configure_logging(config: ServerConfig) -> None:
    """Send log records at `config.log_level` and above to stderr, one line each.

    Args:
        config: the server configuration.
    """
    logging.basicConfig(level=config.log_level.upper(), format=LOG_FORMAT)


INTERRUPTED = 128 + signal.SIGINT
"""Exit status after Ctrl-C (SIGINT): 130, the shell's convention. SIGTERM stops with 0."""


async def run_until_stopped(
    config: ServerConfig, on_ready: Callable[[DispatchServer], object] | None = None
) -> int:
    """Serve until SIGINT or SIGTERM (or cancellation), then stop cleanly and return.

    Args:
        config: what to serve and how.
        on_ready: called with the running server once it listens.

    Returns:
        The exit status: `INTERRUPTED` (130) after SIGINT, 0 after SIGTERM
        or cancellation.

    Raises:
        OSError: the server cannot start (port taken, unreadable TLS file or
            database path).
        ssl.SSLError: the TLS files are not a matching certificate and key.
    """
    ssl = config.ssl_context()
    failure: OSError | None = None
    stop = StopSignal()
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(cancel_on_signal, tasks.cancel_scope, stop)
        # Caught here and raised after the group: leaving the group would wrap
        # it in an ExceptionGroup, and callers report the plain error.
        try:
            await serve(
                host=config.host,
                port=config.port,
                db=config.db,
                keys=config.keys or None,
                sign_secret=config.sign_secret,
                ssl=ssl,
                stream_buffer_size=config.stream_buffer,
                shutdown_grace_s=config.shutdown_grace,
                on_ready=on_ready,
            )
        except OSError as error:
            failure = error
        tasks.cancel_scope.cancel()
    if failure is not None:
        raise failure
    return stop.exit_status


class StopSignal:
    """Which signal ended a long-running command (`received`), for its exit status."""

    def __init__(self) -> None:
        self.received: int | None = None

    @property
    def exit_status(self) -> int:
        """`INTERRUPTED` (130) after SIGINT; 0 after SIGTERM (a requested stop) or none."""
        return INTERRUPTED if self.received == signal.SIGINT else 0


async def cancel_on_signal(scope: anyio.CancelScope, stop: StopSignal | None = None) -> None:
    """Cancel `scope` on the first SIGINT or SIGTERM: the end of a long-running command.

    Logs which signal arrived at INFO. Returns at once where signals cannot be
    received (Windows: Ctrl-C arrives as KeyboardInterrupt instead).

    Args:
        scope: the cancel scope to cancel, usually the caller's task group's.
        stop: told which signal arrived, so the caller can exit with 130
            after SIGINT.
    """
    try:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                _log.info("%s received, stopping", signal.Signals(signum).name)
                if stop is not None:
                    stop.received = signum
                scope.cancel()
                return
    except NotImplementedError:
        return  # Windows: Ctrl-C arrives as KeyboardInterrupt instead
