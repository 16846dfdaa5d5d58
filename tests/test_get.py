"""GetSecret: reads from memory, the name grammar, versions and refusals."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa
from secretsvc_client import (
    DataLossError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    SecretsError,
)
from sqlalchemy import event

from secretsvc.store import tables
from tests.helpers import FakeClock, RunningServer, execute_sql, running_server

BAD_NAMES = {
    "empty": "",
    "lower-case": "jwt_secret",
    "leading-digit": "1SECRET",
    "ten-thousand": "A" * 10_000,
    "non-ascii": "SECRÉT",
    "emoji": "KEY_🔑",
    "quotes": "JWT_SECRET'\"",
    "sql": "JWT_SECRET'; DROP TABLE application_secrets; --",
    "path": "../JWT_SECRET",
    "nul": "JWT\x00SECRET",
}


async def test_get_returns_current_version(running: RunningServer) -> None:
    """Without a version, the current one is returned with its metadata."""
    await running.client.initialize("alice")

    secret = await running.client.get("JWT_SECRET")

    assert secret.name == "JWT_SECRET"
    assert secret.version == 1
    assert secret.stage == "CURRENT"
    assert secret.created_at is not None
    assert secret.next_rotation_due is not None
    assert (secret.next_rotation_due - secret.created_at).days == 90


async def test_unknown_secret_is_not_found(running: RunningServer) -> None:
    """A well-formed name that no secret has is NOT_FOUND."""
    await running.client.initialize("alice")

    with pytest.raises(NotFoundError, match="'NO_SUCH_SECRET' does not exist"):
        await running.client.get("NO_SUCH_SECRET")


async def test_get_before_initialization_is_not_found(running: RunningServer) -> None:
    """Before the first login no secret exists."""
    with pytest.raises(NotFoundError):
        await running.client.get("JWT_SECRET")


async def test_get_or_default_falls_back(running: RunningServer) -> None:
    """get_or_default returns the default for a missing secret, the value otherwise."""
    await running.client.initialize("alice")

    assert await running.client.get_or_default("MISSING", "fallback") == "fallback"
    value = await running.client.get_or_default("JWT_SECRET", "fallback")
    assert value == (await running.client.get("JWT_SECRET")).value


@pytest.mark.parametrize("name", list(BAD_NAMES.values()), ids=list(BAD_NAMES))
async def test_bad_name_is_invalid_argument(running: RunningServer, name: str) -> None:
    """Names outside the grammar are INVALID_ARGUMENT, never UNKNOWN or INTERNAL."""
    await running.client.initialize("alice")

    with pytest.raises(InvalidArgumentError, match="secret name"):
        await running.client.get(name)
    with pytest.raises(InvalidArgumentError, match="secret name"):
        await running.client.rotate(name)


@pytest.mark.parametrize(
    ("version", "error"),
    [
        (-1, InvalidArgumentError),
        (-(2**63), InvalidArgumentError),
        (2, NotFoundError),
        (2**31 - 1, NotFoundError),
        (2**31, InvalidArgumentError),
        (2**63 - 1, InvalidArgumentError),
    ],
    ids=["minus-one", "int64-min", "next", "int32-max", "past-int32", "int64-max"],
)
async def test_bad_version_is_refused(
    running: RunningServer, version: int, error: type[SecretsError]
) -> None:
    """Negative or absent versions are refused with a precise status."""
    await running.client.initialize("alice")

    with pytest.raises(error):
        await running.client.get("JWT_SECRET", version)


async def test_data_key_is_never_served(running: RunningServer) -> None:
    """PASSWORD_MASTER_KEY is refused with PERMISSION_DENIED, by any version."""
    await running.client.initialize("alice")

    with pytest.raises(PermissionDeniedError, match="never served"):
        await running.client.get("PASSWORD_MASTER_KEY")
    with pytest.raises(PermissionDeniedError):
        await running.client.get("PASSWORD_MASTER_KEY", 1)


async def test_read_costs_no_database_round_trip(running: RunningServer) -> None:
    """Once loaded, reads are answered from memory: no SQL touches a secret."""
    await running.client.initialize("alice")
    # A watcher hears of an event once memory holds its version.
    async for rotation in running.client.watch():
        if rotation.event_id == 3:
            break
    await running.server.manager.audit.flush()
    statements: list[str] = []

    def count(*args: Any) -> None:
        statements.append(str(args[2]))

    engine = running.server.store.engine.sync_engine
    event.listen(engine, "before_cursor_execute", count)
    try:
        for _ in range(20):
            await running.client.get("JWT_SECRET")
            await running.client.get("CSRF_SECRET", 1)
    finally:
        event.remove(engine, "before_cursor_execute", count)

    # The only statements allowed are the follower's polls of the event log.
    touching_secrets = [
        sql
        for sql in statements
        if "rotation_events" not in sql and not sql.startswith("BEGIN")
    ]
    assert touching_secrets == []


def version_row(name: str, version: int = 1) -> sa.ColumnElement[bool]:
    s, v = tables.application_secrets, tables.secret_versions
    secret_id = sa.select(s.c.id).where(s.c.name == name).scalar_subquery()
    return sa.and_(v.c.secret_id == secret_id, v.c.version == version)


def sealed_of(name: str) -> sa.Select[tuple[bytes]]:
    v = tables.secret_versions
    return sa.select(v.c.sealed_value).where(version_row(name))


async def test_flipped_byte_is_data_loss_for_that_secret_only(
    db_url: str, clock: FakeClock
) -> None:
    """A damaged ciphertext fails with DATA_LOSS; other secrets are still served."""
    async with running_server(db_url, clock=clock) as server:
        await server.client.initialize("alice")
        jwt = await server.client.get("JWT_SECRET")

    [[(sealed,)]] = await execute_sql(db_url, sealed_of("CSRF_SECRET"))
    flipped = bytearray(sealed)
    flipped[-5] ^= 0x01
    v = tables.secret_versions
    await execute_sql(
        db_url,
        sa.update(v).where(version_row("CSRF_SECRET")).values(sealed_value=flipped),
    )

    async with running_server(db_url, clock=clock) as server:
        with pytest.raises(DataLossError, match="'CSRF_SECRET' version 1 is damaged"):
            await server.client.get("CSRF_SECRET")
        assert (await server.client.get("JWT_SECRET")).value == jwt.value


async def test_ciphertext_copied_to_another_secret_does_not_open(
    db_url: str, clock: FakeClock
) -> None:
    """JWT_SECRET's ciphertext pasted onto CSRF_SECRET's row is DATA_LOSS."""
    async with running_server(db_url, clock=clock) as server:
        await server.client.initialize("alice")

    [[(sealed,)]] = await execute_sql(db_url, sealed_of("JWT_SECRET"))
    v = tables.secret_versions
    await execute_sql(
        db_url,
        sa.update(v).where(version_row("CSRF_SECRET")).values(sealed_value=sealed),
    )

    async with running_server(db_url, clock=clock) as server:
        with pytest.raises(DataLossError):
            await server.client.get("CSRF_SECRET")
        assert (await server.client.get("JWT_SECRET")).version == 1
