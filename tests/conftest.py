"""Fixtures: a real server on loopback, a real SQLite file, and a leak scan."""

from __future__ import annotations

import contextlib
import logging
import os
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
from tests.pgcluster import ClusterUnavailable, PasswordCluster, password_cluster


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


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PasswordCluster]:
    """Start a throwaway PostgreSQL that checks passwords, for the session.

    The server at 127.0.0.1:5432 trusts every local login, so it cannot show
    that an old password stops working; this one, from the same binaries, can.
    """
    with contextlib.ExitStack() as stack:
        try:
            cluster = stack.enter_context(password_cluster())
        except ClusterUnavailable as error:
            reason = f"no throwaway PostgreSQL cluster: {error}"
            if os.environ.get("CI") == "true":
                pytest.fail(reason)
            pytest.skip(reason)
        yield cluster


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
