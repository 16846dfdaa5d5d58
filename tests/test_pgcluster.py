"""The throwaway password cluster: the admin logs in, wrong passwords do not."""

from __future__ import annotations

import asyncpg
import pytest

from tests.pgcluster import PasswordCluster


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
