"""Fixtures: a real server on loopback, a real SQLite file, and a leak scan."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests import helpers, postgres
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
    helpers.LOGS = collector
    yield collector
    helpers.LOGS = None
    root.removeHandler(collector)
    root.setLevel(previous)


@pytest.fixture
async def running(db_url: str, clock: FakeClock) -> AsyncIterator[RunningServer]:
    """Run a real server on an empty store, with the real client connected."""
    async with running_server(db_url, clock=clock) as server:
        yield server
