"""Versions with grace, retention, rollback, check-and-set, and written secrets."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from secretsvc_client import (
    ConflictError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    RotationEvent,
)

from tests.helpers import FakeClock, LogCollector, RunningServer, running_server

CATALOG = """
[secrets.STRIPE_KEY]
source = "written"
format = "^sk_live_[A-Za-z0-9]{24,}$"
min_length = 32
rotation_interval_days = 30
retain_versions = 3

[secrets.WEBHOOK_KEY]
rotation_interval_days = 7
retain_versions = 3
grace_period_hours = 2

[secrets.BACKTRACKING_KEY]
source = "written"
format = "(x+x+)+y"
"""
STRIPE = "sk_live_" + "A1b2C3d4" * 4


@pytest.fixture
async def lifecycle(
    tmp_path: Path, db_url: str, clock: FakeClock
) -> AsyncIterator[RunningServer]:
    """Run a server whose catalog adds a written and a short-grace secret."""
    catalog = tmp_path / "catalog.toml"
    catalog.write_text(CATALOG)
    async with running_server(db_url, clock=clock, catalog=catalog) as server:
        await server.client.initialize("alice")
        yield server


async def test_previous_is_readable_until_its_grace_ends(
    lifecycle: RunningServer, clock: FakeClock
) -> None:
    """PREVIOUS reads work within the grace period, then fail as expired."""
    client = lifecycle.client
    first = await client.get("JWT_SECRET")
    await client.rotate("JWT_SECRET")

    previous = await client.get("JWT_SECRET", stage="PREVIOUS")
    clock.advance(hours=23, minutes=59)
    still = await client.get("JWT_SECRET", stage="previous")
    clock.advance(minutes=2)

    assert (previous.version, previous.value) == (1, first.value)
    assert previous.expires_at is not None
    assert still.version == 1
    with pytest.raises(FailedPreconditionError, match="version 1 expired at"):
        await client.get("JWT_SECRET", stage="PREVIOUS")
    with pytest.raises(FailedPreconditionError, match="expired"):
        await client.get("JWT_SECRET", 1)
    assert (await client.get("JWT_SECRET", stage="CURRENT")).version == 2


async def test_stage_and_version_together_are_refused(lifecycle: RunningServer) -> None:
    """A read names a version or a stage, not both; PREVIOUS needs a rotation."""
    with pytest.raises(InvalidArgumentError, match="not both"):
        await lifecycle.client.get("JWT_SECRET", 1, stage="CURRENT")
    with pytest.raises(NotFoundError, match="no previous version"):
        await lifecycle.client.get("JWT_SECRET", stage="PREVIOUS")
    with pytest.raises(InvalidArgumentError):
        await lifecycle.client.get("JWT_SECRET", stage="PENDING")


async def test_versions_beyond_retention_lose_their_values(
    lifecycle: RunningServer,
) -> None:
    """With three retained, older versions keep metadata but not values."""
    client = lifecycle.client
    for _ in range(4):
        await client.rotate("WEBHOOK_KEY")

    versions = await client.versions("WEBHOOK_KEY")

    assert [(v.version, v.stage, v.value_kept) for v in versions] == [
        (5, "CURRENT", True),
        (4, "PREVIOUS", True),
        (3, "RETIRED", True),
        (2, "RETIRED", False),
        (1, "RETIRED", False),
    ]
    assert versions[1].expires_at is not None
    assert versions[0].reason == "MANUAL"
    with pytest.raises(FailedPreconditionError, match="no longer kept"):
        await client.get("WEBHOOK_KEY", 2)


async def test_rollback_makes_an_old_value_current_again(
    lifecycle: RunningServer,
) -> None:
    """Rolling back copies a kept version's value into a new current version."""
    client = lifecycle.client
    original = await client.get("WEBHOOK_KEY")
    await client.rotate("WEBHOOK_KEY")

    info = await client.rollback("WEBHOOK_KEY", 1)
    current = await client.get("WEBHOOK_KEY")
    events: list[RotationEvent] = []
    async for event in client.watch(names=["WEBHOOK_KEY"]):
        events.append(event)
        if event.reason == "ROLLBACK":
            break
    trail = await client.audit(action="rollback")

    assert (info.version, info.reason) == (3, "ROLLBACK")
    assert (current.version, current.value) == (3, original.value)
    assert (events[-1].old_version, events[-1].new_version) == (2, 3)
    assert [(e.name, e.version) for e in trail.events] == [("WEBHOOK_KEY", 3)]


@pytest.mark.parametrize(
    ("target", "error"),
    [(9, NotFoundError), (1, FailedPreconditionError)],
    ids=["unknown", "destroyed"],
)
async def test_rollback_to_a_lost_version_changes_nothing(
    lifecycle: RunningServer, target: int, error: type[Exception]
) -> None:
    """Rolling back to an unknown or destroyed version is refused."""
    client = lifecycle.client
    for _ in range(3):
        await client.rotate("WEBHOOK_KEY")
    before = await client.versions("WEBHOOK_KEY")

    with pytest.raises(error):
        await client.rollback("WEBHOOK_KEY", target)

    assert await client.versions("WEBHOOK_KEY") == before


async def test_check_and_set_refuses_a_stale_writer(lifecycle: RunningServer) -> None:
    """With an expected version that is no longer current, ABORTED and no change."""
    client = lifecycle.client
    await client.rotate("JWT_SECRET", expected_version=1)

    with pytest.raises(ConflictError, match="is at version 2, not 1"):
        await client.rotate("JWT_SECRET", expected_version=1)
    await client.put("STRIPE_KEY", STRIPE, expected_version=0)
    with pytest.raises(ConflictError):
        await client.put("STRIPE_KEY", STRIPE + "x", expected_version=0)

    assert (await client.get("JWT_SECRET")).version == 2
    assert (await client.get("STRIPE_KEY")).value == STRIPE


async def test_written_secret_waits_for_an_operator(lifecycle: RunningServer) -> None:
    """A written secret is not generated at login, then PutSecret creates it."""
    client = lifecycle.client
    again = await client.initialize("alice")
    with pytest.raises(NotFoundError):
        await client.get("STRIPE_KEY")

    info = await client.put("STRIPE_KEY", STRIPE)
    secret = await client.get("STRIPE_KEY")

    assert ("STRIPE_KEY", "written by an operator with PutSecret") in [
        (s.name, s.reason) for s in again.skipped
    ]
    assert (info.version, info.reason) == (1, "WRITTEN")
    assert secret.value == STRIPE
    listed = {s.name: s for s in await client.list()}
    assert listed["STRIPE_KEY"].written


@pytest.mark.parametrize(
    ("value", "rule"),
    [
        ("sk_live_short", "at least 32"),
        ("pk_test_" + "A" * 40, "does not match its format"),
        ("x" * 70_000, "longer than"),
        ("sk_live_" + "A" * 30 + "\x00", "NUL character"),
    ],
    ids=["too-short", "wrong-format", "too-long", "nul"],
)
async def test_bad_written_value_is_refused_without_echo(
    lifecycle: RunningServer, logs: LogCollector, value: str, rule: str
) -> None:
    """A value against its policy is INVALID_ARGUMENT naming the rule, not the value."""
    with pytest.raises(InvalidArgumentError, match=rule) as raised:
        await lifecycle.client.put("STRIPE_KEY", value)

    assert value not in str(raised.value)
    assert value not in logs.text()
    trail = await lifecycle.client.audit(action="write")
    assert all(value not in e.detail for e in trail.events)
    with pytest.raises(NotFoundError):
        await lifecycle.client.get("STRIPE_KEY")


async def test_a_format_that_backtracks_without_end_is_cut_short(
    lifecycle: RunningServer,
) -> None:
    """A value the format cannot settle in time is refused, and nothing stalls."""
    value = "x" * 5000

    with pytest.raises(InvalidArgumentError, match="could not be checked") as raised:
        await lifecycle.client.put("BACKTRACKING_KEY", value)

    assert value not in str(raised.value)
    assert (await lifecycle.client.get("JWT_SECRET")).version == 1


async def test_rolling_back_to_the_current_version_is_refused(
    lifecycle: RunningServer,
) -> None:
    """The current version is current already: FAILED_PRECONDITION, no new one."""
    client = lifecycle.client
    await client.rotate("WEBHOOK_KEY")
    before = await client.versions("WEBHOOK_KEY")

    with pytest.raises(FailedPreconditionError, match="is the current one already"):
        await client.rollback("WEBHOOK_KEY", 2)

    assert await client.versions("WEBHOOK_KEY") == before


async def test_an_import_its_policy_refuses_is_skipped_saying_why(
    tmp_path: Path, db_url: str, clock: FakeClock
) -> None:
    """An imported value too short for its policy is not stored; the reason says so."""
    catalog = tmp_path / "catalog.toml"
    catalog.write_text('[secrets.SENTRY_DSN]\nsource = "imported"\nmin_length = 40\n')
    environ = {"SENTRY_DSN": "https://short@example"}
    async with running_server(
        db_url, clock=clock, catalog=catalog, environ=environ
    ) as server:
        result = await server.client.initialize("alice")
        with pytest.raises(NotFoundError):
            await server.client.get("SENTRY_DSN")

    reasons = dict((s.name, s.reason) for s in result.skipped)
    assert reasons["SENTRY_DSN"].startswith(
        "SENTRY_DSN in the server's environment is refused: "
    )
    assert "at least 40" in reasons["SENTRY_DSN"]
    assert environ["SENTRY_DSN"] not in reasons["SENTRY_DSN"]


async def test_a_secret_dropped_from_the_catalog_is_not_served(
    tmp_path: Path, db_url: str, clock: FakeClock
) -> None:
    """Whether a stored secret may be served is the catalog's to say: fail closed."""
    catalog = tmp_path / "catalog.toml"
    catalog.write_text(CATALOG)
    async with running_server(db_url, clock=clock, catalog=catalog) as server:
        await server.client.initialize("alice")
    async with running_server(db_url, clock=clock) as server:
        with pytest.raises(PermissionDeniedError, match="not in this server's catalog"):
            await server.client.get("WEBHOOK_KEY")
        assert (await server.client.get("JWT_SECRET")).version == 1


async def test_generated_secret_cannot_be_written(lifecycle: RunningServer) -> None:
    """PutSecret on a generated secret says to rotate it instead."""
    with pytest.raises(FailedPreconditionError, match="rotate it instead"):
        await lifecycle.client.put("JWT_SECRET", "x" * 64)


async def test_due_written_secret_is_announced_once_and_listed_overdue(
    tmp_path: Path, db_url: str, clock: FakeClock
) -> None:
    """The service streams ROTATION_DUE once and lists the secret as overdue."""
    catalog = tmp_path / "catalog.toml"
    catalog.write_text(CATALOG)
    async with running_server(
        db_url, clock=clock, catalog=catalog, rotation_interval=0.05
    ) as server:
        client = server.client
        await client.initialize("alice")
        await client.put("STRIPE_KEY", STRIPE)
        clock.advance(days=31)

        due: list[RotationEvent] = []
        async for event in client.watch(names=["STRIPE_KEY"]):
            if event.reason == "ROTATION_DUE":
                due.append(event)
                break
        overdue = {s.name: s.overdue for s in await client.list()}
        await client.put("STRIPE_KEY", STRIPE + "B")
        after = {s.name: s.overdue for s in await client.list()}
        count = len((await client.audit(action="due", name="STRIPE_KEY")).events)

    assert (due[0].old_version, due[0].new_version) == (1, 1)
    assert overdue["STRIPE_KEY"]
    assert not after["STRIPE_KEY"]
    assert count == 1


async def test_blocking_client_offers_the_same_calls(
    lifecycle: RunningServer,
) -> None:
    """The blocking wrapper reaches PutSecret, ListVersions and RollbackSecret."""
    import asyncio

    from secretsvc_client import BlockingSecretsClient

    def work() -> list[int]:
        with BlockingSecretsClient(lifecycle.target) as client:
            client.put("STRIPE_KEY", STRIPE)
            client.rotate("WEBHOOK_KEY")
            client.rollback("WEBHOOK_KEY", 1)
            return [v.version for v in client.versions("WEBHOOK_KEY")]

    assert await asyncio.to_thread(work) == [3, 2, 1]


async def test_versions_command_says_expired_once_the_grace_is_over(
    lifecycle: RunningServer, clock: FakeClock
) -> None:
    """`secretsvc versions` says "expires" while the grace lasts, then "expired"."""
    from click.testing import CliRunner

    from secretsvc.cli import main

    client = lifecycle.client
    await client.rotate("WEBHOOK_KEY")
    target = ["--target", lifecycle.target]

    def versions() -> str:
        result = CliRunner().invoke(main, ["versions", "WEBHOOK_KEY", *target])
        assert result.exit_code == 0, result.output
        return result.output

    # v1 was superseded in January (its 2 h grace long over, by the wall
    # clock the command reads); v2 an hour ago, so its grace still runs.
    clock.now = datetime.now(UTC) - timedelta(hours=1)
    await client.rotate("WEBHOOK_KEY")
    during = await asyncio.to_thread(versions)

    lines = {line.split()[0]: line for line in during.splitlines()}
    assert " expires " in lines["v2"]
    assert " expired " in lines["v1"]
