"""A throwaway PostgreSQL server for tests and benchmarks.

`TemporaryPostgres` runs Debian's (or any) PostgreSQL binaries: `initdb` into a
temporary directory, `pg_ctl start` on a free loopback port, trust
authentication, durability switched off (fsync, synchronous commit: a crash
loses nothing a test cares about). As root it runs them as the `postgres`
user, since `initdb` refuses to run as root.

    with TemporaryPostgres() as pg:
        url = pg.create_database("dispatches")   # postgresql://postgres@127.0.0.1:PORT/dispatches

`find_binaries()` says where the binaries are, or why there are none, so a
caller can skip with the reason instead of failing.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

__all__ = ["PostgresUnavailableError", "TemporaryPostgres", "find_binaries", "free_port"]

_SEARCH = ("/usr/lib/postgresql/*/bin", "/usr/local/pgsql/bin")
_START_TIMEOUT_S = 30


class PostgresUnavailableError(RuntimeError):
    """PostgreSQL binaries are missing or the server could not be started."""


def find_binaries() -> Path:
    """Return the directory holding `initdb` and `pg_ctl`.

    Looks only at `$PG_BIN` when it is set; otherwise at Debian's
    `/usr/lib/postgresql/<version>/bin` (newest version first), then `PATH`.

    Raises:
        PostgresUnavailableError: no such directory; the message says what to install.
    """
    chosen = os.environ.get("PG_BIN")
    if chosen:
        # Authoritative when set: PG_BIN=/nonexistent shows how the tests
        # behave on a machine without PostgreSQL.
        path = Path(chosen)
        if (path / "initdb").is_file() and (path / "pg_ctl").is_file():
            return path
        raise PostgresUnavailableError(
            f"PostgreSQL server binaries (initdb, pg_ctl) not found in $PG_BIN={chosen};"
            " unset PG_BIN to search the usual places"
        )
    candidates: list[str] = []
    for pattern in _SEARCH:
        candidates += sorted(glob.glob(pattern), key=_version_key, reverse=True)
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(str(Path(on_path).resolve().parent))
    for candidate in candidates:
        path = Path(candidate)
        if (path / "initdb").is_file() and (path / "pg_ctl").is_file():
            return path
    raise PostgresUnavailableError(
        "PostgreSQL server binaries (initdb, pg_ctl) not found in $PG_BIN, "
        + ", ".join(_SEARCH)
        + " or PATH; install them with `apt-get install -y postgresql`"
    )


def _version_key(path: str) -> tuple[int, ...]:
    parts = Path(path).parent.name.split(".")
    return tuple(int(p) for p in parts if p.isdigit())


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that was free on `host` a moment ago."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


class TemporaryPostgres:
    """One PostgreSQL server in a temporary directory, on a free port of 127.0.0.1.

    Args:
        bin_dir: directory of `initdb`/`pg_ctl` (default: `find_binaries()`).
        port: TCP port (default: a free one).
        max_connections: the server's `max_connections`.

    Use as a context manager, or call `start()` / `stop()`.
    """

    def __init__(
        self, bin_dir: Path | None = None, *, port: int | None = None, max_connections: int = 200
    ) -> None:
        self.bin_dir = bin_dir if bin_dir is not None else find_binaries()
        self.host = "127.0.0.1"
        self.port = port if port is not None else free_port()
        self.user = "postgres"
        self.max_connections = max_connections
        self._dir: Path | None = None
        self._run_as: str | None = None
        self._options = ""

    def __enter__(self) -> TemporaryPostgres:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"TemporaryPostgres({self.url('postgres')!r})"

    def url(self, database: str) -> str:
        """Return the connection URL of `database` on this server."""
        return f"postgresql://{self.user}@{self.host}:{self.port}/{database}"

    @property
    def data_dir(self) -> Path:
        """The cluster's data directory (exists between `start()` and `stop()`)."""
        if self._dir is None:
            raise RuntimeError("the temporary PostgreSQL server is not started")
        return self._dir / "data"

    def start(self) -> None:
        """Create the cluster and start the server; returns once it accepts connections.

        Raises:
            PostgresUnavailableError: `initdb` or `pg_ctl start` failed (with their output).
        """
        if self._dir is not None:
            return
        self._dir = Path(tempfile.mkdtemp(prefix="dispatch-pg-"))
        if os.geteuid() == 0:
            # initdb refuses root: hand the directory to the postgres account.
            try:
                account = pwd.getpwnam("postgres")
            except KeyError:
                self._cleanup()
                raise PostgresUnavailableError(
                    "running as root, and there is no 'postgres' user to run initdb as"
                ) from None
            os.chown(self._dir, account.pw_uid, account.pw_gid)
            self._run_as = "postgres"
        try:
            self._run(
                "initdb",
                "-D",
                str(self.data_dir),
                "-U",
                self.user,
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            )
            self._options = " ".join(
                [
                    f"-p {self.port}",
                    f"-c listen_addresses={self.host}",
                    f"-c unix_socket_directories={self._dir}",
                    f"-c max_connections={self.max_connections}",
                    "-c fsync=off",
                    "-c synchronous_commit=off",
                    "-c full_page_writes=off",
                ]
            )
            self._run(
                "pg_ctl",
                "start",
                "-D",
                str(self.data_dir),
                "-w",
                "-t",
                str(_START_TIMEOUT_S),
                "-l",
                str(self._dir / "server.log"),
                "-o",
                self._options,
            )
        except BaseException:
            self._cleanup()
            raise

    def stop(self) -> None:
        """Stop the server (fast shutdown) and delete its directory; idempotent."""
        if self._dir is None:
            return
        try:
            if (self.data_dir / "postmaster.pid").exists():
                self._run("pg_ctl", "stop", "-D", str(self.data_dir), "-m", "fast", "-w")
        finally:
            self._cleanup()

    def pause(self) -> None:
        """Stop the server but keep its data, so `resume()` brings it back (outage tests)."""
        self._run("pg_ctl", "stop", "-D", str(self.data_dir), "-m", "fast", "-w")

    def resume(self) -> None:
        """Start the server again after `pause()`, on the same port with the same data."""
        self._run(
            "pg_ctl",
            "start",
            "-D",
            str(self.data_dir),
            "-w",
            "-t",
            str(_START_TIMEOUT_S),
            "-l",
            str(self.data_dir.parent / "server.log"),
            "-o",
            self._options,
        )

    def create_database(self, name: str) -> str:
        """Create database `name` (a plain identifier) and return its URL."""
        if not name.replace("_", "").isalnum():
            raise ValueError(f"database name must be letters, digits and _, got {name!r}")
        self._run("createdb", "-h", self.host, "-p", str(self.port), "-U", self.user, name)
        return self.url(name)

    def _run(self, program: str, *args: str) -> None:
        command = [str(self.bin_dir / program), *args]
        if self._run_as is not None:
            command = ["runuser", "-u", self._run_as, "--", *command]
        started = time.monotonic()
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=_START_TIMEOUT_S * 2, check=False
        )
        if result.returncode != 0:
            log = ""
            if self._dir is not None and (self._dir / "server.log").exists():
                log = (self._dir / "server.log").read_text(errors="replace")[-2000:]
            raise PostgresUnavailableError(
                f"{program} failed (exit {result.returncode},"
                f" {time.monotonic() - started:.1f} s): {result.stderr.strip()[-2000:]}"
                + (f"\nserver log: {log}" if log else "")
            )

    def _cleanup(self) -> None:
        directory, self._dir = self._dir, None
        if directory is not None:
            with contextlib.suppress(OSError):
                shutil.rmtree(directory)
