"""Several replicas on one PostgreSQL database, and two processes on one SQLite file.

These start real ``secretsvc serve`` processes.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import pytest
import sqlalchemy as sa
from secretsvc_client import RotationEvent, SecretsClient, UnavailableError

from secretsvc.store import tables
from secretsvc.store.notify import APPLICATION_NAME
from tests import postgres
from tests.helpers import (
    ROOT_KEY,
    FakeClock,
    LogCollector,
    ServerProcess,
    TcpProxy,
    execute_sql,
    poll_until,
    running_server,
    sqlite_url,
)

BULK = [f"BULK_{i:03d}" for i in range(200)]


@pytest.fixture
async def pg_url() -> AsyncIterator[str]:
    """Give the test an empty PostgreSQL database of its own."""
    postgres.require_postgres()
    name, url = await postgres.create_database()
    try:
        yield url
    finally:
        await postgres.drop_database(name)


async def start_replicas(
    tmp_path: Path, url: str, count: int, **env: str
) -> list[ServerProcess]:
    replicas = [
        ServerProcess(tmp_path, url, PASSWORD_MASTER_KEY=ROOT_KEY, **env).start()
        for _ in range(count)
    ]
    try:
        await asyncio.gather(*(r.wait_ready() for r in replicas))
    except BaseException:
        stop_replicas(replicas)
        raise
    return replicas


def stop_replicas(replicas: list[ServerProcess]) -> None:
    for replica in replicas:
        if replica.process is not None and replica.process.poll() is None:
            assert replica.terminate() == 0, replica.output()


async def count_rows(url: str, query: sa.Select[int]) -> int:
    [[(count,)]] = await execute_sql(url, query)
    return int(count)


async def test_due_secrets_are_rotated_once_across_three_replicas(
    tmp_path: Path, pg_url: str
) -> None:
    """200 secrets due at once, three replicas: one version, event, record each."""
    catalog = tmp_path / "catalog.toml"
    catalog.write_text(
        "".join(f"[secrets.{name}]\nrotation_interval_days = 30\n" for name in BULK)
    )
    replicas = await start_replicas(
        tmp_path,
        pg_url,
        3,
        SECRETSVC_ROTATION_INTERVAL="0.2",
        SECRETSVC_CATALOG=str(catalog),
    )
    try:
        async with SecretsClient(replicas[0].target) as client:
            await client.initialize("alice")
        s, v = tables.application_secrets, tables.secret_versions
        due = datetime.now(UTC) - timedelta(seconds=1)
        await execute_sql(
            pg_url,
            sa.update(s).where(s.c.name.like("BULK_%")).values(next_rotation_due=due),
        )

        async def all_rotated() -> bool:
            query = sa.select(sa.func.count()).select_from(v).where(v.c.version == 2)
            return await count_rows(pg_url, query) >= len(BULK)

        await poll_until(all_rotated, within=60)
        await asyncio.sleep(1.0)  # five more ticks on each replica
    finally:
        stop_replicas(replicas)

    e, a = tables.rotation_events, tables.audit_records
    versions = await execute_sql(
        pg_url,
        sa.select(s.c.name, sa.func.count(v.c.id))
        .join(v, v.c.secret_id == s.c.id)
        .where(s.c.name.like("BULK_%"))
        .group_by(s.c.name),
    )
    assert dict(versions[0]) == dict.fromkeys(BULK, 2)
    scheduled = (
        sa.select(sa.func.count()).select_from(e).where(e.c.reason == "SCHEDULED")
    )
    assert await count_rows(pg_url, scheduled) == len(BULK)
    audited = (
        sa.select(sa.func.count())
        .select_from(a)
        .where(a.c.action == "rotate", a.c.detail == "SCHEDULED")
    )
    assert await count_rows(pg_url, audited) == len(BULK)


async def test_first_logins_across_replicas_make_one_master(
    tmp_path: Path, pg_url: str
) -> None:
    """50 logins spread over three replicas: one master, one version 1 each."""
    replicas = await start_replicas(tmp_path, pg_url, 3)
    try:
        clients = [SecretsClient(replicas[i % 3].target) for i in range(50)]
        results = await asyncio.gather(
            *(c.initialize(f"user-{i}") for i, c in enumerate(clients))
        )
        await asyncio.gather(*(c.close() for c in clients))
    finally:
        stop_replicas(replicas)

    assert len({r.master_user_id for r in results}) == 1
    assert sum(r.is_master for r in results) == 1
    v = tables.secret_versions
    assert await count_rows(pg_url, sa.select(sa.func.count()).select_from(v)) == 3


async def collect(
    client: SecretsClient, count: int, into: list[RotationEvent], since: int = 0
) -> None:
    async for event in client.watch(since_event_id=since):
        into.append(event)
        if len(into) == count:
            return


async def terminate_backends(url: str, *, listeners_only: bool) -> int:
    database = urlsplit(url).path.lstrip("/")
    admin = await asyncpg.connect(postgres.ADMIN_DSN)
    try:
        query = (
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = $1 AND pid <> pg_backend_pid()"
        )
        if listeners_only:
            query += f" AND application_name = '{APPLICATION_NAME}'"
        return int(await admin.fetchval(query, database))
    finally:
        await admin.close()


async def test_events_cross_replicas_through_cut_connections(
    tmp_path: Path, pg_url: str
) -> None:
    """A watcher of A gets every rotation made on B, in order, once, cuts or not."""
    a, b = await start_replicas(tmp_path, pg_url, 2)
    received: list[RotationEvent] = []
    try:
        async with SecretsClient(a.target) as on_a, SecretsClient(b.target) as on_b:
            await on_b.initialize("alice")
            total = 3 + 30
            watcher = asyncio.create_task(collect(on_a, total, received))
            names = itertools.cycle(["JWT_SECRET", "CSRF_SECRET"])
            for i in range(30):
                if i in (10, 20):
                    cut = await terminate_backends(pg_url, listeners_only=i == 10)
                    assert cut >= 1
                await on_b.rotate(next(names))
            await asyncio.wait_for(watcher, timeout=30)

            # Once A's watcher has the event, A's reads have the version too.
            latest = received[-1]
            secret = await on_a.get(latest.name)
            assert secret.version == latest.new_version
    finally:
        stop_replicas([a, b])

    assert [e.event_id for e in received] == list(range(1, 34))


async def test_reads_on_a_follow_key_rotations_on_b(
    tmp_path: Path, pg_url: str
) -> None:
    """A data key rotated on B, then a secret sealed with it: A reads it."""
    a, b = await start_replicas(tmp_path, pg_url, 2)
    try:
        async with SecretsClient(a.target) as on_a, SecretsClient(b.target) as on_b:
            await on_a.initialize("alice")
            await on_b.rotate("PASSWORD_MASTER_KEY")
            rotated = await on_b.rotate("JWT_SECRET")
            events: list[RotationEvent] = []
            await asyncio.wait_for(collect(on_a, 5, events), timeout=15)

            secret = await on_a.get("JWT_SECRET")
            expected = await on_b.get("JWT_SECRET")
    finally:
        stop_replicas([a, b])

    assert secret.version == rotated.version == 2
    assert secret.value == expected.value


async def test_outage_keeps_reads_and_recovers_without_restart(
    pg_url: str, logs: LogCollector
) -> None:
    """With the store cut off, cached reads go on, writes say UNAVAILABLE, then heal."""
    port = urlsplit(pg_url).port or 5432
    proxy = await TcpProxy(port).start()
    parts = urlsplit(pg_url)
    proxied = pg_url.replace(parts.netloc, f"{parts.username}@127.0.0.1:{proxy.port}")
    clock = FakeClock(datetime.now(UTC))
    async with running_server(proxied, clock=clock, rotation_interval=0.05) as server:
        client = server.client
        await client.initialize("alice")
        before = await client.get("JWT_SECRET")

        await proxy.cut()
        clock.advance(days=91)
        for _ in range(20):
            assert (await client.get("JWT_SECRET")).value == before.value
        with pytest.raises(UnavailableError, match="the store cannot be reached"):
            await client.rotate("CSRF_SECRET")
        await asyncio.sleep(2.0)
        failed_ticks = logs.text().count("rotation tick failed")

        await proxy.restore()

        async def rotated() -> bool:
            return (await client.get("JWT_SECRET")).version == 2

        await poll_until(rotated, within=90)
        manual = await client.rotate("CSRF_SECRET")
    await proxy.cut()

    # Without backoff a 50 ms loop would have failed about 40 times in 2 s.
    assert 1 <= failed_ticks <= 8
    assert manual.version == 2


async def test_two_processes_on_one_sqlite_file(tmp_path: Path) -> None:
    """Two servers on one SQLite file take 200 concurrent rotations intact."""
    url = sqlite_url(tmp_path / "shared.db")
    first, second = await start_replicas(tmp_path, url, 2)
    try:
        async with (
            SecretsClient(first.target) as one,
            SecretsClient(second.target) as two,
        ):
            await one.initialize("alice")
            calls = [
                (one if i % 2 else two).rotate(
                    "JWT_SECRET" if i % 4 < 2 else "CSRF_SECRET"
                )
                for i in range(200)
            ]
            results = await asyncio.gather(*calls)
    finally:
        stop_replicas([first, second])

    by_name: dict[str, list[int]] = {}
    for info in results:
        by_name.setdefault(info.name, []).append(info.version)
    assert sorted(by_name["JWT_SECRET"]) == list(range(2, 102))
    assert sorted(by_name["CSRF_SECRET"]) == list(range(2, 102))
    [[(check,)]] = await execute_sql(url, sa.text("PRAGMA integrity_check"))
    assert check == "ok"
    e = tables.rotation_events
    [ids] = await execute_sql(url, sa.select(e.c.id).order_by(e.c.id))
    assert [row.id for row in ids] == list(range(1, 204))
    for process in (first, second):
        assert "database is locked" not in process.output()
