"""InitializeSecrets: the first login makes the master user and every secret."""

from __future__ import annotations

import asyncio

import pytest
from secretsvc_client import InvalidArgumentError, SecretsClient

from tests.helpers import (
    FakeClock,
    LogCollector,
    RunningServer,
    assert_no_leak,
    running_server,
)

REQUIRED = {"JWT_SECRET", "CSRF_SECRET", "PASSWORD_MASTER_KEY"}


async def test_first_login_generates_required_secrets(running: RunningServer) -> None:
    """The first caller becomes master and every generated secret is created."""
    result = await running.client.initialize("alice")

    assert result.master_user_id == "alice"
    assert result.is_master
    assert set(result.generated) == REQUIRED
    assert result.already_present == ()
    assert [(s.name, s.reason) for s in result.skipped] == [
        ("DATABASE_URL", "DATABASE_URL is not set in the server's environment")
    ]


async def test_generated_values_are_long_and_distinct(running: RunningServer) -> None:
    """Generated values have at least 32 characters and never repeat."""
    await running.client.initialize("alice")

    jwt = await running.client.get("JWT_SECRET")
    csrf = await running.client.get("CSRF_SECRET")

    assert len(jwt.value) >= 32
    assert len(csrf.value) >= 32
    assert jwt.value != csrf.value
    assert jwt.version == csrf.version == 1


async def test_later_logins_regenerate_nothing(running: RunningServer) -> None:
    """A second login, by anyone, reports the master and changes no value."""
    await running.client.initialize("alice")
    before = await running.client.get("JWT_SECRET")

    again = await running.client.initialize("bob")
    after = await running.client.get("JWT_SECRET")

    assert again.master_user_id == "alice"
    assert not again.is_master
    assert again.generated == ()
    assert set(again.already_present) == REQUIRED
    assert (after.version, after.value) == (before.version, before.value)


async def test_initialization_survives_restart(db_url: str, clock: FakeClock) -> None:
    """After a restart the master and the values are the same."""
    async with running_server(db_url, clock=clock) as first:
        await first.client.initialize("alice")
        value = (await first.client.get("CSRF_SECRET")).value

    async with running_server(db_url, clock=clock) as second:
        result = await second.client.initialize("bob")
        assert result.master_user_id == "alice"
        assert result.generated == ()
        assert (await second.client.get("CSRF_SECRET")).value == value


async def test_concurrent_first_logins_make_one_master(
    running: RunningServer,
) -> None:
    """50 users logging in at once on an empty store: one master, one version 1."""
    clients = [SecretsClient(running.target) for _ in range(50)]
    try:
        results = await asyncio.gather(
            *(c.initialize(f"user-{i}") for i, c in enumerate(clients))
        )
    finally:
        await asyncio.gather(*(c.close() for c in clients))

    masters = {r.master_user_id for r in results}
    assert len(masters) == 1
    assert sum(r.is_master for r in results) == 1
    generated = [name for r in results for name in r.generated]
    assert sorted(generated) == sorted(REQUIRED)
    secrets = await running.client.list()
    assert {s.name: s.current_version for s in secrets} == dict.fromkeys(REQUIRED, 1)


async def test_database_url_is_imported_when_set(
    db_url: str, clock: FakeClock, logs: LogCollector
) -> None:
    """DATABASE_URL from the server's environment is imported as it is."""
    url = "postgresql://app:s3cr3t-imported-password@db.internal:5432/app"
    async with running_server(
        db_url, clock=clock, environ={"DATABASE_URL": url}
    ) as server:
        result = await server.client.initialize("alice")
        secret = await server.client.get("DATABASE_URL")
        listed = {s.name: s for s in await server.client.list()}

    assert "DATABASE_URL" in result.generated
    assert result.skipped == ()
    assert secret.value == url
    assert listed["DATABASE_URL"].imported
    # The scan at the server's stop covers the whole URL; this covers its password.
    assert_no_leak(["s3cr3t-imported-password"], logs.text())


async def test_database_url_imported_on_a_later_login(
    db_url: str, clock: FakeClock
) -> None:
    """A server restarted with DATABASE_URL set imports it on the next login."""
    async with running_server(db_url, clock=clock) as first:
        await first.client.initialize("alice")

    env = {"DATABASE_URL": "postgresql://app:pw@db/app"}
    async with running_server(db_url, clock=clock, environ=env) as second:
        result = await second.client.initialize("alice")

    assert result.generated == ("DATABASE_URL",)
    assert result.is_master


@pytest.mark.parametrize(
    "user_id",
    ["", "   ", "x" * 257, "line\nbreak"],
    ids=["empty", "blank", "too-long", "control-character"],
)
async def test_bad_user_id_is_refused(running: RunningServer, user_id: str) -> None:
    """A malformed user id is INVALID_ARGUMENT and creates nothing."""
    with pytest.raises(InvalidArgumentError, match="user_id"):
        await running.client.initialize(user_id)

    assert await running.client.list() == []
