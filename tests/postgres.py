"""A throwaway database per test on the real PostgreSQL server."""

from __future__ import annotations

import os
import socket
import uuid
from urllib.parse import urlsplit

import asyncpg
import pytest

ADMIN_DSN = os.environ.get(
    "SECRETSVC_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres"
)


def require_postgres() -> None:
    """Skip (or, under CI, fail) when the PostgreSQL server cannot be reached."""
    parts = urlsplit(ADMIN_DSN)
    address = (parts.hostname or "127.0.0.1", parts.port or 5432)
    try:
        socket.create_connection(address, timeout=2).close()
    except OSError as error:
        reason = (
            f"PostgreSQL is not reachable at {address[0]}:{address[1]} ({error}); "
            "start it or point SECRETSVC_TEST_POSTGRES at an admin DSN"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)


async def create_database() -> tuple[str, str]:
    """Create an empty database; return its name and SQLAlchemy URL."""
    name = f"secretsvc_test_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(ADMIN_DSN)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    parts = urlsplit(ADMIN_DSN)
    url = f"postgresql+asyncpg://{parts.netloc}/{name}"
    return name, url


async def drop_database(name: str) -> None:
    """Drop a database made by :func:`create_database`, closing its sessions."""
    conn = await asyncpg.connect(ADMIN_DSN)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()
