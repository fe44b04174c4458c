"""`python -m dispatch_client.server`: run the reference server until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Sequence

import anyio

from .app import serve, server_ssl_context
from .service import DEFAULT_STREAM_BUFFER_SIZE

__all__ = ["main", "parser"]


def parser() -> argparse.ArgumentParser:
    """Build the command-line parser."""
    p = argparse.ArgumentParser(
        prog="python -m dispatch_client.server",
        description="Run the reference Frequenz Dispatch API server (grpclib + SQLite).",
    )
    p.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: %(default)s)"
    )
    p.add_argument(
        "--port", type=int, default=50051, help="port; 0 picks a free one (default: %(default)s)"
    )
    p.add_argument(
        "--db",
        default=":memory:",
        metavar="FILE",
        help="SQLite file that keeps dispatches across restarts (default: in memory)",
    )
    p.add_argument(
        "--key",
        action="append",
        dest="keys",
        metavar="KEY",
        help="accepted API key (repeatable); without any, keys are not checked",
    )
    p.add_argument(
        "--sign-secret",
        metavar="SECRET",
        help="require signed requests (ts, nonce, sig metadata) made with this secret",
    )
    p.add_argument("--tls-cert", metavar="FILE", help="TLS certificate chain (PEM)")
    p.add_argument("--tls-key", metavar="FILE", help="TLS private key (PEM)")
    p.add_argument(
        "--stream-buffer",
        type=int,
        default=DEFAULT_STREAM_BUFFER_SIZE,
        metavar="N",
        help="events buffered per stream before a slow subscriber is cut off"
        " (default: %(default)s)",
    )
    p.add_argument("--log-level", default="INFO", help="logging level (default: %(default)s)")
    return p


async def _run(args: argparse.Namespace) -> None:
    ssl = server_ssl_context(args.tls_cert, args.tls_key) if args.tls_cert else None
    async with anyio.create_task_group() as tg:

        async def stop_on_signal() -> None:
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for signum in signals:
                    logging.getLogger(__name__).info(
                        "%s received, stopping", signal.Signals(signum).name
                    )
                    tg.cancel_scope.cancel()
                    return

        tg.start_soon(stop_on_signal)
        await serve(
            host=args.host,
            port=args.port,
            db=args.db,
            keys=args.keys,
            sign_secret=args.sign_secret,
            ssl=ssl,
            stream_buffer_size=args.stream_buffer,
        )


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments and serve until interrupted; return the exit status."""
    p = parser()
    args = p.parse_args(argv)
    if bool(args.tls_cert) != bool(args.tls_key):
        p.error("--tls-cert and --tls-key go together")
    if args.stream_buffer < 1:
        p.error("--stream-buffer must be at least 1")
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    anyio.run(_run, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
