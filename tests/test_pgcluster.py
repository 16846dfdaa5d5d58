"""The throwaway password cluster: the admin logs in, wrong passwords do not."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import asyncpg
import pytest

from tests.pgcluster import ClusterUnavailable, PasswordCluster, password_cluster


@pytest.fixture(scope="module")
def pg_cluster() -> Iterator[PasswordCluster]:
    """Start one password-only cluster for the module's tests."""
    with contextlib.ExitStack() as stack:
        try:
            cluster = stack.enter_context(password_cluster())
        except ClusterUnavailable as error:
            reason = f"no throwaway PostgreSQL cluster: {error}"
            if os.environ.get("CI") == "true":
                pytest.fail(reason)
            pytest.skip(reason)
        yield cluster


async def test_admin_url_logs_in_as_the_admin(pg_cluster: PasswordCluster) -> None:
    conn = await asyncpg.connect(pg_cluster.admin_url())
    try:
        assert await conn.fetchval("SELECT current_user") == pg_cluster.admin_user
    finally:
        await conn.close()


async def test_only_the_right_password_logs_in(pg_cluster: PasswordCluster) -> None:
    admin = await asyncpg.connect(pg_cluster.admin_url())
    try:
        await admin.execute("CREATE ROLE \"t_role\" LOGIN PASSWORD 'right'")
    finally:
        await admin.close()

    conn = await asyncpg.connect(pg_cluster.url("t_role", "right"))
    try:
        assert await conn.fetchval("SELECT current_user") == "t_role"
    finally:
        await conn.close()

    with pytest.raises(asyncpg.InvalidPasswordError):
        await asyncpg.connect(pg_cluster.url("t_role", "wrong"))
