"""Fixtures: a real server on loopback, a real SQLite file, and a leak scan."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from secretsvc.store import tables
from tests import postgres
from tests.helpers import (
    FakeClock,
    LogCollector,
    RunningServer,
    running_server,
    sqlite_url,
)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "secrets.db"


@pytest.fixture(params=["sqlite", "postgresql"])
async def db_url(request: pytest.FixtureRequest, db_path: Path) -> AsyncIterator[str]:
    """Give each test an empty store: a SQLite file, or a PostgreSQL database."""
    if request.param == "sqlite":
        yield sqlite_url(db_path)
        return
    postgres.require_postgres()
    name, url = await postgres.create_database()
    try:
        yield url
    finally:
        await postgres.drop_database(name)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(autouse=True)
def logs() -> Iterator[LogCollector]:
    """Collect every log record of the test, at every level."""
    collector = LogCollector()
    root = logging.getLogger()
    previous = root.level
    root.addHandler(collector)
    root.setLevel(logging.DEBUG)
    yield collector
    root.removeHandler(collector)
    root.setLevel(previous)


async def secret_values(running: RunningServer) -> list[str]:
    """Open every stored version of every secret, straight from the store."""
    manager = running.server.manager
    values = []
    async with running.server.store.read() as tx:
        records = await tx.secrets()
    for record in records:
        for version in record.versions.values():
            if version.sealed_value is not None:
                plain = await manager._open(
                    record.name, version.version, version.sealed_value
                )
                values.append(plain.decode())
    return values


async def audit_text(running: RunningServer) -> str:
    async with running.server.store.engine.connect() as conn:
        rows = (await conn.execute(sa.select(tables.audit_records))).all()
    return "\n".join(repr(tuple(row)) for row in rows)


@pytest.fixture
async def running(
    db_url: str, clock: FakeClock, logs: LogCollector
) -> AsyncIterator[RunningServer]:
    """Run a real server on a SQLite file, then check no value reached a log."""
    async with running_server(db_url, clock=clock) as server:
        yield server
        values = await secret_values(server)
        await server.server.manager.audit.flush()
        trail = await audit_text(server)
    assert_no_leak(values, logs.text(), trail)


def assert_no_leak(values: list[str], *texts: str) -> None:
    """Fail when any secret value appears in any of ``texts``."""
    for value in values:
        for text in texts:
            assert value not in text, "a secret value reached a log or audit record"
