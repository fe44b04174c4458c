"""Shared test configuration: async tests run on anyio's pytest plugin.

PostgreSQL: `postgres_server` starts one real PostgreSQL server for the whole
session (Debian's `postgresql` package: initdb + pg_ctl into a temporary
directory, on a free port). Without the binaries or the driver the tests that
need it are skipped with the reason in the summary (`-rs`); under CI (`CI`
set) they fail instead, so CI never skips them silently.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

# Emptying by DELETE is several times faster than TRUNCATE on tables this small.
_EMPTY_DATABASE = (
    "DELETE FROM dispatches; DELETE FROM dispatch_events; DELETE FROM used_nonces;"
    " ALTER TABLE dispatches ALTER COLUMN id RESTART;"
    " ALTER TABLE dispatch_events ALTER COLUMN seq RESTART"
)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"PostgreSQL tests cannot run in CI: {reason}")
    pytest.skip(f"PostgreSQL tests skipped: {reason}")


def require_postgresql_driver() -> None:
    """At the top of a module that imports the PostgreSQL store: skip it (fail under CI)
    when the `postgresql` extra is missing."""
    try:
        import psycopg  # noqa: F401

        import dispatch_client.server.pg_store  # noqa: F401
    except ImportError as error:
        reason = f"the postgresql extra is not installed ({error})"
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL tests cannot run in CI: {reason}", pytrace=False)
        pytest.skip(f"PostgreSQL tests skipped: {reason}", allow_module_level=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[Any]:
    """A real PostgreSQL server for the session (a `TemporaryPostgres`)."""
    try:
        import psycopg  # noqa: F401

        from dispatch_client.server.pgtemp import PostgresUnavailableError, TemporaryPostgres
    except ImportError as error:
        _unavailable(f"the postgresql extra is not installed ({error})")
        raise
    try:
        server = TemporaryPostgres()
        server.start()
    except PostgresUnavailableError as error:
        _unavailable(str(error))
        raise
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def migrated_postgres(postgres_server: Any) -> str:
    """URL of a database with the dispatch schema, shared by the session's tests."""
    from dispatch_client.server.pg_store import migrate

    url: str = postgres_server.create_database("dispatch_tests")
    migrate(url)
    return url


@pytest.fixture
def postgres_url(migrated_postgres: str) -> str:
    """URL of the migrated test database, emptied (ids restart at 1) for this test."""
    import psycopg

    with psycopg.connect(migrated_postgres, autocommit=True) as conn:
        conn.execute(_EMPTY_DATABASE)
    return migrated_postgres
