"""The PostgreSQL store's schema: the shipped migrations (yoyo) and applying them.

Re-exported by `dispatch_client.server.pg_store`, which is where callers import them from.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from importlib import resources
from typing import Any

import psycopg
import psycopg.sql

_MIGRATION_TABLE = "_yoyo_migration"


def _migrations_folder() -> Any:
    return resources.files("dispatch_client.server").joinpath("migrations", "postgresql")


def known_migrations() -> list[str]:
    """Ids of the migrations this version ships (yoyo's ids: file names without `.sql`)."""
    return sorted(
        entry.name.removesuffix(".sql")
        for entry in _migrations_folder().iterdir()
        if entry.name.endswith(".sql") and not entry.name.endswith(".rollback.sql")
    )


async def _schema_is_current(conn: psycopg.AsyncConnection[Any]) -> bool:
    """Whether every shipped migration is applied (a quick look that spares yoyo's run)."""
    cursor = await conn.execute("SELECT to_regclass(%s) IS NOT NULL", (_MIGRATION_TABLE,))
    if not _one(await cursor.fetchone()):
        return False
    cursor = await conn.execute(
        f"SELECT count(*) FROM {_MIGRATION_TABLE} WHERE migration_id = ANY(%s)",
        (known_migrations(),),
    )
    return _one(await cursor.fetchone()) == len(known_migrations())


async def _check_may_migrate(conn: psycopg.AsyncConnection[Any]) -> None:
    """Refuse at once a role that cannot create the schema (yoyo would wait for its lock)."""
    cursor = await conn.execute(
        "SELECT current_user, current_database(), current_schema(),"
        " has_schema_privilege(current_schema(), 'CREATE')"
    )
    row = await cursor.fetchone()
    assert row is not None
    user, database, schema, may_create = row
    if not may_create:
        where = f"schema {schema}" if schema else "any schema of its search_path"
        raise psycopg.errors.InsufficientPrivilege(
            f"role {user} may not create tables in {where} of database {database}"
        )


def migrate(url: str) -> list[str]:
    """Apply the pending schema migrations to the database at `url` (blocking).

    Runs under yoyo's lock, so concurrent callers (replicas starting together)
    apply each migration once.

    Returns:
        The ids of the migrations applied now (empty when the schema was current).
    """
    from yoyo import get_backend, read_migrations

    backend = get_backend(_yoyo_url(url), migration_table=_MIGRATION_TABLE)
    try:
        with resources.as_file(_migrations_folder()) as folder:
            migrations = read_migrations(str(folder))
            with backend.lock():
                pending = backend.to_apply(migrations)
                backend.apply_migrations(pending)
        return [migration.id for migration in pending]
    finally:
        with contextlib.suppress(Exception):
            backend.connection.close()


def _yoyo_url(url: str) -> str:
    # yoyo picks psycopg 3 (instead of psycopg2) by this scheme.
    return "postgresql+psycopg://" + url.split("://", 1)[1]


def _first(row: Sequence[Any] | None) -> Any:
    assert row is not None
    return row[0]


def _one(row: Sequence[Any] | None) -> int:
    assert row is not None
    return int(row[0])
