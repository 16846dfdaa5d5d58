"""RotateSecret and the rotation loop share one path: new current, old previous."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from pathlib import Path

import pytest
import sqlalchemy as sa
from prometheus_client import REGISTRY
from secretsvc_client import (
    DeadlineExceededError,
    FailedPreconditionError,
    NotFoundError,
    SecretsClient,
)

from secretsvc.access import Caller
from secretsvc.model import Reason
from secretsvc.rotation.scheduler import RotationScheduler
from secretsvc.store import tables
from tests.helpers import (
    FakeClock,
    LogCollector,
    RunningServer,
    execute_sql,
    poll_until,
    running_server,
    sqlite_url,
)


async def test_rotation_keeps_previous_readable(running: RunningServer) -> None:
    """After a rotation the new version is current and the old one previous."""
    await running.client.initialize("alice")
    old = await running.client.get("JWT_SECRET")

    info = await running.client.rotate("JWT_SECRET")
    current = await running.client.get("JWT_SECRET")
    previous = await running.client.get("JWT_SECRET", 1)

    assert (info.name, info.version, info.stage, info.reason) == (
        "JWT_SECRET",
        2,
        "CURRENT",
        "MANUAL",
    )
    assert current.version == 2
    assert current.value != old.value
    assert (previous.version, previous.stage, previous.value) == (
        1,
        "PREVIOUS",
        old.value,
    )


async def test_older_versions_stay_readable_by_number(running: RunningServer) -> None:
    """Versions older than previous are retired and still readable by number."""
    await running.client.initialize("alice")
    first = await running.client.get("CSRF_SECRET")
    await running.client.rotate("CSRF_SECRET")
    await running.client.rotate("CSRF_SECRET")

    retired = await running.client.get("CSRF_SECRET", 1)

    assert (retired.stage, retired.value) == ("RETIRED", first.value)
    assert (await running.client.get("CSRF_SECRET", 2)).stage == "PREVIOUS"


async def test_rotation_writes_version_event_and_audit_together(
    running: RunningServer,
) -> None:
    """When RotateSecret returns, its version, event and audit record are stored."""
    await running.client.initialize("alice")

    await running.client.rotate("JWT_SECRET")

    v, s = tables.secret_versions, tables.application_secrets
    e, a = tables.rotation_events, tables.audit_records
    async with running.server.store.engine.connect() as conn:
        stages = dict(
            (
                await conn.execute(
                    sa.select(v.c.version, v.c.stage)
                    .join(s, s.c.id == v.c.secret_id)
                    .where(s.c.name == "JWT_SECRET")
                )
            ).all()
        )
        event = (
            await conn.execute(sa.select(e).order_by(e.c.id.desc()).limit(1))
        ).one()
        audit = (await conn.execute(sa.select(a).where(a.c.action == "rotate"))).one()

    assert stages == {1: "PREVIOUS", 2: "CURRENT"}
    assert (event.secret_name, event.old_version, event.new_version) == (
        "JWT_SECRET",
        1,
        2,
    )
    assert event.reason == "MANUAL"
    assert (audit.secret_name, audit.version, audit.outcome) == ("JWT_SECRET", 2, "ok")


async def test_rotating_unknown_secret_is_not_found(running: RunningServer) -> None:
    """Rotating a secret that does not exist is NOT_FOUND and creates nothing."""
    await running.client.initialize("alice")

    with pytest.raises(NotFoundError):
        await running.client.rotate("NO_SUCH_SECRET")

    assert "NO_SUCH_SECRET" not in {s.name for s in await running.client.list()}


async def test_imported_secret_is_not_rotated_on_demand(
    db_url: str, clock: FakeClock
) -> None:
    """An imported DATABASE_URL is never replaced by a random value."""
    env = {"DATABASE_URL": "postgresql://app:pw@db/app"}
    async with running_server(db_url, clock=clock, environ=env) as server:
        await server.client.initialize("alice")

        with pytest.raises(FailedPreconditionError, match="imported"):
            await server.client.rotate("DATABASE_URL")
        secret = await server.client.get("DATABASE_URL")

    assert (secret.version, secret.value) == (1, env["DATABASE_URL"])


async def sealed_terms(running: RunningServer, name: str) -> dict[int, int]:
    v, s = tables.secret_versions, tables.application_secrets
    async with running.server.store.engine.connect() as conn:
        rows = await conn.execute(
            sa.select(v.c.version, v.c.key_term)
            .join(s, s.c.id == v.c.secret_id)
            .where(s.c.name == name)
        )
        return dict(rows.all())


async def test_data_key_rotation_adds_a_term_and_reseals(
    running: RunningServer,
) -> None:
    """Rotating PASSWORD_MASTER_KEY adds a term; every version moves to it."""
    await running.client.initialize("alice")
    old = await running.client.get("JWT_SECRET")

    info = await running.client.rotate("PASSWORD_MASTER_KEY")
    await running.client.rotate("JWT_SECRET")

    async def all_on_term_2() -> bool:
        terms = await sealed_terms(running, "JWT_SECRET")
        return terms == {1: 2, 2: 2} and await sealed_terms(running, "CSRF_SECRET") == {
            1: 2
        }

    await poll_until(all_on_term_2)
    async with running.server.store.engine.connect() as conn:
        terms = list((await conn.execute(sa.select(tables.keyring.c.term))).scalars())

    assert info.version == 2
    assert terms == [1, 2]
    assert (await running.client.get("JWT_SECRET", 1)).value == old.value
    assert REGISTRY.get_sample_value("secretsvc_reseal_pending_versions") == 0


async def test_reseal_racing_rotations_finishes_and_loses_nothing(
    running: RunningServer,
) -> None:
    """Rotations during a re-seal neither deadlock it nor leave versions behind."""
    await running.client.initialize("alice")
    for _ in range(5):
        await running.client.rotate("JWT_SECRET")
        await running.client.rotate("CSRF_SECRET")

    await running.client.rotate("PASSWORD_MASTER_KEY")
    await asyncio.gather(
        *(running.client.rotate(name) for name in ["JWT_SECRET", "CSRF_SECRET"] * 10)
    )

    async def all_on_term_2() -> bool:
        v = tables.secret_versions
        async with running.server.store.engine.connect() as conn:
            rows = await conn.execute(
                sa.select(v.c.key_term).where(v.c.sealed_value.is_not(None))
            )
            return set(rows.scalars()) == {2}

    await poll_until(all_on_term_2)
    for version in await running.client.versions("JWT_SECRET"):
        if version.value_kept:
            await running.client.get("JWT_SECRET", version.version)


async def test_scheduler_rotates_what_falls_due(db_url: str, clock: FakeClock) -> None:
    """Past 90 days only JWT_SECRET is rotated, with reason SCHEDULED."""
    async with running_server(db_url, clock=clock, rotation_interval=0.05) as server:
        await server.client.initialize("alice")
        clock.advance(days=91)

        async def jwt_rotated() -> bool:
            return (await server.client.get("JWT_SECRET")).version == 2

        await poll_until(jwt_rotated)
        events = []
        async for event in server.client.watch(since_event_id=0):
            events.append(event)
            if event.reason == "SCHEDULED":
                break
        listed = {s.name: s.current_version for s in await server.client.list()}

    assert listed == {"CSRF_SECRET": 1, "JWT_SECRET": 2, "PASSWORD_MASTER_KEY": 1}
    assert (events[-1].name, events[-1].new_version) == ("JWT_SECRET", 2)


async def test_scheduler_leaves_imported_secret_and_says_so(
    db_url: str, clock: FakeClock, logs: LogCollector
) -> None:
    """An imported secret that falls due is logged once and left as it is."""
    env = {"DATABASE_URL": "postgresql://app:pw@db/app"}
    async with running_server(
        db_url, clock=clock, environ=env, rotation_interval=0.05
    ) as server:
        await server.client.initialize("alice")
        clock.advance(days=181)

        async def csrf_rotated() -> bool:
            return (await server.client.get("CSRF_SECRET")).version == 2

        await poll_until(csrf_rotated)
        await asyncio.sleep(0.2)  # a few more ticks, to see it is logged once
        secret = await server.client.get("DATABASE_URL")

    assert (secret.version, secret.value) == (1, env["DATABASE_URL"])
    warnings = [line for line in logs.lines if "DATABASE_URL fell due" in line]
    assert len(warnings) == 1


async def test_failed_tick_is_logged_and_retried(
    db_url: str, clock: FakeClock, logs: LogCollector
) -> None:
    """A tick that cannot read the store is logged; the next one rotates."""
    async with running_server(db_url, clock=clock, rotation_interval=0.05) as server:
        await server.client.initialize("alice")
        await execute_sql(
            db_url, sa.text("ALTER TABLE application_secrets RENAME TO hidden")
        )
        clock.advance(days=91)

        async def tick_failed() -> bool:
            return "rotation tick failed" in logs.text()

        await poll_until(tick_failed)
        await execute_sql(
            db_url, sa.text("ALTER TABLE hidden RENAME TO application_secrets")
        )

        async def jwt_rotated() -> bool:
            return (await server.client.get("JWT_SECRET")).version == 2

        await poll_until(jwt_rotated)


async def test_scheduler_stops_promptly(running: RunningServer) -> None:
    """A loop waiting out an hour-long period stops as soon as it is asked."""
    manager = running.server.manager
    scheduler = RotationScheduler(manager, period=3600, clock=FakeClock())
    scheduler.start()
    await asyncio.sleep(0)

    await asyncio.wait_for(scheduler.stop(), timeout=5)


async def test_scheduler_and_rpc_share_the_rotation_path(
    running: RunningServer, clock: FakeClock
) -> None:
    """A scheduled rotation produces the same records as a manual one."""
    await running.client.initialize("alice")
    clock.advance(days=366)
    scheduler = RotationScheduler(running.server.manager, period=3600, clock=clock)

    rotated = await scheduler.tick()

    assert sorted(rotated) == ["CSRF_SECRET", "JWT_SECRET", "PASSWORD_MASTER_KEY"]
    for name in ("JWT_SECRET", "CSRF_SECRET"):
        secret = await running.client.get(name)
        assert (secret.version, secret.stage) == (2, "CURRENT")
    events = running.server.manager.watch(3, [], caller=Caller.system("test"))
    reasons = [(await anext(events)).reason for _ in range(3)]
    await events.aclose()
    assert reasons == [Reason.SCHEDULED] * 3


async def test_cancelled_rotations_release_the_store(
    db_path: Path, clock: FakeClock
) -> None:
    """Rotations whose callers give up still finish; the write lock is freed."""
    async with running_server(sqlite_url(db_path), clock=clock) as server:
        await server.client.initialize("alice")
        async with SecretsClient(server.target, timeout=0.004) as hasty:
            for _ in range(20):
                with contextlib.suppress(DeadlineExceededError):
                    await hasty.rotate("JWT_SECRET")

        def lock_is_free() -> bool:
            conn = sqlite3.connect(db_path, timeout=0, isolation_level=None)
            try:
                conn.execute("BEGIN IMMEDIATE")
                conn.execute("ROLLBACK")
                return True
            except sqlite3.OperationalError:
                return False
            finally:
                conn.close()

        async def free() -> bool:
            return lock_is_free()

        await poll_until(free, within=5)
        info = await server.client.rotate("JWT_SECRET")
        listed = {s.name: s.current_version for s in await server.client.list()}

    assert info.version == listed["JWT_SECRET"]
