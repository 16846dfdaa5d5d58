"""Migrations: `secretsvc migrate`, and replicas migrating one store at once."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import sqlalchemy as sa

from secretsvc.store import Store, migrate, tables


def run_migrate(url: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SECRETSVC_")}
    return subprocess.run(
        [sys.executable, "-m", "secretsvc", "migrate", "--database-url", url],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def table_names(url: str) -> set[str]:
    store = Store.open(url)
    try:
        async with store.engine.connect() as conn:
            names = await conn.run_sync(lambda sync: sa.inspect(sync).get_table_names())
    finally:
        await store.close()
    return set(names)


async def test_migrate_command_creates_the_schema(db_url: str) -> None:
    """`secretsvc migrate` creates every table, and a second run changes nothing."""
    first = run_migrate(db_url)
    second = run_migrate(db_url)

    assert first.returncode == 0, first.stderr
    assert second.returncode == 0, second.stderr
    assert "store schema is up to date" in second.stdout
    expected = set(tables.metadata.tables) | {"alembic_version"}
    assert await table_names(db_url) == expected


async def test_concurrent_migrations_do_not_race(db_url: str) -> None:
    """Five stores migrating one empty database at once all succeed."""
    stores = [Store.open(db_url) for _ in range(5)]
    try:
        await asyncio.gather(*(migrate(store) for store in stores))
    finally:
        await asyncio.gather(*(store.close() for store in stores))

    assert "application_secrets" in await table_names(db_url)
