"""DATABASE_URL rotated for real: the role's password changes with the URL.

The target is a throwaway PostgreSQL that checks passwords (the server at
127.0.0.1:5432 trusts every local login). Each test makes its own login roles
and logs in with what the service hands out. One test rotates on the main
server too, and checks the password verifiers it stores.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import unquote, urlsplit

import asyncpg
import pytest
from secretsvc_client import (
    BlockingSecretsClient,
    ConflictError,
    FailedPreconditionError,
    NotFoundError,
    SecretsClient,
)

from secretsvc.service import utc_now
from tests import postgres
from tests.helpers import (
    ROOT_KEY,
    FakeClock,
    LogCollector,
    ServerProcess,
    TcpProxy,
    poll_until,
    running_server,
    sqlite_url,
)
from tests.pgcluster import PasswordCluster

# Short enough to wait out in a test.
GRACE_SECONDS = 3.0


@dataclass
class Target:
    """A database with login roles that only the rotator gives passwords to."""

    cluster: PasswordCluster
    roles: list[str]

    def catalog(
        self,
        directory: Path,
        *,
        roles: list[str] | None = None,
        grace_seconds: float | None = None,
        admin_url_secret: str | None = None,
        retry_backoff_seconds: float = 0.05,
    ) -> Path:
        """Write a catalog whose DATABASE_URL is rotated on this target."""
        lines = [
            "[secrets.DATABASE_URL]",
            'rotator = "postgres"',
            "max_attempts = 3",
            f"retry_backoff_seconds = {retry_backoff_seconds!r}",
        ]
        if grace_seconds is not None:
            lines.append(f"grace_period_hours = {grace_seconds / 3600!r}")
        lines.append("[secrets.DATABASE_URL.postgres]")
        if admin_url_secret is None:
            lines.append(f"admin_url = {json.dumps(self.cluster.admin_url())}")
        else:
            lines.append(f"admin_url_secret = {json.dumps(admin_url_secret)}")
            lines += [
                f'host = "{self.cluster.host}"',
                f"port = {self.cluster.port}",
                'database = "postgres"',
                f"[secrets.{admin_url_secret}]",
                'source = "written"',
                "min_length = 8",
                "servable = false",
            ]
        lines.insert(
            lines.index("[secrets.DATABASE_URL.postgres]") + 1,
            f"roles = {json.dumps(roles or self.roles)}",
        )
        path = directory / "catalog.toml"
        path.write_text("\n".join(lines) + "\n")
        return path

    def hidden(self) -> list[str]:
        """Return what must never be logged: the administrator's URL, password."""
        return [self.cluster.admin_url(), self.cluster.admin_password]


@pytest.fixture
async def target(pg_cluster: PasswordCluster) -> AsyncIterator[Target]:
    """Two login roles of the test's own, with no password yet."""
    suffix = secrets.token_hex(4)
    roles = [f"app_a_{suffix}", f"app_b_{suffix}"]
    admin = await asyncpg.connect(pg_cluster.admin_url())
    try:
        for role in roles:
            await admin.execute(f'CREATE ROLE "{role}" LOGIN')
        yield Target(pg_cluster, roles)
        for role in roles:
            await drop_role(admin, role)
    finally:
        await admin.close()


def quoted(role: str) -> str:
    """Quote a role name for the tests' own SQL."""
    return '"' + role.replace('"', '""') + '"'


async def drop_role(admin: asyncpg.Connection, role: str) -> None:
    """End a test role's sessions and drop it."""
    await admin.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1",
        role,
    )
    await admin.execute(f"DROP ROLE IF EXISTS {quoted(role)}")


async def login(url: str) -> str:
    """Log in with a URL the service handed out; return who the server says."""
    connection = await asyncpg.connect(url, timeout=10)
    try:
        return str(await connection.fetchval("SELECT current_user"))
    finally:
        await connection.close()


async def refused(url: str) -> bool:
    """Tell whether the server refuses the URL's password."""
    try:
        await login(url)
    except asyncpg.InvalidPasswordError:
        return True
    return False


def assert_hidden(text: str, *secrets_: str) -> None:
    for secret in secrets_:
        assert secret not in text, "a password or the admin URL reached a log"


def password_of(url: str) -> str:
    password = urlsplit(url).password
    assert password
    return unquote(password)


async def test_two_roles_alternate_and_the_previous_url_lasts_its_grace(
    db_url: str, target: Target, tmp_path: Path, logs: LogCollector
) -> None:
    """Each rotation moves to the other role; the previous URL lasts its grace."""
    catalog = target.catalog(tmp_path, grace_seconds=GRACE_SECONDS)
    a, b = target.roles
    async with running_server(db_url, clock=utc_now, catalog=catalog) as server:
        client = server.client
        first = await client.initialize("alice")
        assert "DATABASE_URL" in first.generated
        v1 = await client.get("DATABASE_URL")
        assert await login(v1.value) == a
        # A connection that stays open through every rotation.
        running = await asyncpg.connect(v1.value)

        await client.rotate("DATABASE_URL")
        v2 = await client.get("DATABASE_URL")
        assert (v2.version, await login(v2.value)) == (2, b)
        assert await login(v1.value) == a
        previous = await client.get("DATABASE_URL", stage="PREVIOUS")
        assert previous.value == v1.value

        # Once its grace is over the previous URL no longer logs in.
        await poll_until(lambda: refused(v1.value), within=GRACE_SECONDS + 10)
        assert await running.fetchval("SELECT 1") == 1
        await running.close()

        await client.rotate("DATABASE_URL")
        v3 = await client.get("DATABASE_URL")
        assert await login(v3.value) == a
        assert await login(v2.value) == b
        assert await refused(v1.value)

        # v1 logs in as v3's role: restoring it would cut v3 off at once.
        with pytest.raises(FailedPreconditionError, match="as the current one"):
            await client.rollback("DATABASE_URL", 1)
        # v2's role is the other one: it logs in again, and v3 keeps its grace.
        await client.rollback("DATABASE_URL", 2)
        v4 = await client.get("DATABASE_URL")
        assert (v4.version, v4.value) == (4, v2.value)
        assert await login(v3.value) == a
        listed = {s.name: s for s in await client.list()}
        urls = [v1.value, v2.value, v3.value]

    info = listed["DATABASE_URL"]
    assert (info.rotator, info.current_version, info.rotation_failed) == (
        "postgres",
        4,
        False,
    )
    assert listed["JWT_SECRET"].rotator == "random"
    assert len({password_of(url) for url in urls}) == 3
    assert_hidden(logs.text(), *target.hidden(), *map(password_of, urls))
    assert "trust authentication" not in logs.text()


async def test_one_role_changes_in_place_and_the_client_reads_again(
    pg_cluster: PasswordCluster, tmp_path: Path, logs: LogCollector
) -> None:
    """With one role the old URL dies at once; with_fresh_secret bridges the gap.

    The role's name needs quoting, and the admin URL is itself a secret.
    """
    role = f"app \"quoted\" 'role' {secrets.token_hex(3)}"
    admin = await asyncpg.connect(pg_cluster.admin_url())
    await admin.execute(f"CREATE ROLE {quoted(role)} LOGIN")
    target = Target(pg_cluster, [role])
    catalog = target.catalog(tmp_path, admin_url_secret="DATABASE_ADMIN_URL")
    db = sqlite_url(tmp_path / "secrets.db")
    try:
        async with running_server(
            db, clock=utc_now, catalog=catalog, rotation_interval=0.05, rotation_lease=1
        ) as server:
            first = await server.client.initialize("alice")
            # No admin URL yet: the first version waits for the rotation loop.
            assert "DATABASE_URL" in [s.name for s in first.skipped]
            await server.client.put("DATABASE_ADMIN_URL", pg_cluster.admin_url())
            # Made now, or by the rotation loop if an attempt is still due.
            await server.client.initialize("alice")

            async def made() -> bool:
                listed = {s.name: s for s in await server.client.list()}
                return listed["DATABASE_URL"].current_version == 1

            await poll_until(made)
            v1 = await server.client.get("DATABASE_URL")
            assert await login(v1.value) == role

            # Hold the rotation between applying the password and promoting it.
            server.server.manager.pause_rotations_after("applied")
            rotation = asyncio.create_task(server.client.rotate("DATABASE_URL"))
            await asyncio.wait_for(server.server.manager.paused.wait(), 10)
            assert await refused(v1.value)

            target_address = f"127.0.0.1:{server.server.port}"
            blocking = BlockingSecretsClient(target_address)
            async with SecretsClient(target_address) as app:
                assert (await app.get("DATABASE_URL")).version == 1
                connecting = asyncio.create_task(
                    app.with_fresh_secret(
                        "DATABASE_URL",
                        login,
                        retry_on=(asyncpg.InvalidPasswordError,),
                    )
                )
                # The blocking client, for a synchronous service, does the same.
                connecting_blocking = asyncio.create_task(
                    asyncio.to_thread(
                        blocking.with_fresh_secret,
                        "DATABASE_URL",
                        lambda url: asyncio.run(login(url)),
                        retry_on=(asyncpg.InvalidPasswordError,),
                    )
                )
                # Longer than the lease: the paused rotation is still held.
                await asyncio.sleep(1.5)
                assert not connecting.done() and not connecting_blocking.done()
                server.server.manager.release.set()
                assert await asyncio.wait_for(connecting, 10) == role
                assert await asyncio.wait_for(connecting_blocking, 10) == role
                assert (await app.get("DATABASE_URL")).version == 2
            await asyncio.to_thread(blocking.close)
            assert (await rotation).version == 2
            v2 = await server.client.get("DATABASE_URL")
    finally:
        await drop_role(admin, role)
        await admin.close()

    assert_hidden(logs.text(), *target.hidden(), password_of(v1.value))
    assert_hidden(logs.text(), password_of(v2.value))
    # Held past its lease while paused, the rotation was not taken over.
    assert "resuming the rotation of DATABASE_URL to version 2" not in logs.text()


async def test_with_fresh_secret_keeps_up_with_back_to_back_rotations(
    target: Target, tmp_path: Path
) -> None:
    """One role rotated without a pause: every connection still gets through."""
    catalog = target.catalog(tmp_path, roles=target.roles[:1])
    db = sqlite_url(tmp_path / "secrets.db")
    async with running_server(db, clock=utc_now, catalog=catalog) as server:
        await server.client.initialize("alice")
        rotating = True

        async def rotate() -> int:
            count = 0
            while rotating:
                with contextlib.suppress(ConflictError):
                    await server.client.rotate("DATABASE_URL")
                    count += 1
            return count

        async def connect(client: SecretsClient) -> int:
            done = 0
            for _ in range(15):
                await client.with_fresh_secret(
                    "DATABASE_URL", login, retry_on=(asyncpg.InvalidPasswordError,)
                )
                done += 1
            return done

        rotations = asyncio.create_task(rotate())
        async with (
            SecretsClient(server.target, cache=True) as cached,
            SecretsClient(server.target, cache=False) as direct,
        ):
            done = await asyncio.gather(connect(cached), connect(direct))
        rotating = False
        rotated = await rotations

    assert list(done) == [15, 15]
    assert rotated > 5


async def test_a_refusing_target_is_given_up_and_the_schedule_goes_on(
    db_url: str, pg_cluster: PasswordCluster, tmp_path: Path, logs: LogCollector
) -> None:
    """A missing role: three attempts, then ROTATION_FAILED; JWT_SECRET rotates."""
    target = Target(pg_cluster, [f"missing_{secrets.token_hex(4)}"])
    catalog = target.catalog(tmp_path)
    clock = FakeClock(datetime.now(UTC))
    env = {"DATABASE_URL": "postgresql://app:imported-password@db:5432/app"}
    async with running_server(
        db_url, clock=clock, environ=env, catalog=catalog, rotation_interval=0.05
    ) as server:
        await server.client.initialize("alice")
        clock.advance(days=181)

        async def given_up() -> bool:
            clock.advance(seconds=1)
            listed = {s.name: s for s in await server.client.list()}
            return listed["DATABASE_URL"].rotation_failed

        await poll_until(given_up)
        listed = {s.name: s for s in await server.client.list()}
        events = []
        async for event in server.client.watch(since_event_id=0):
            events.append((event.name, event.reason))
            if event.reason == "ROTATION_FAILED":
                break
        audit = await server.client.audit(name="DATABASE_URL", action="rotate")

        with pytest.raises(FailedPreconditionError, match="does not exist") as refusal:
            await server.client.rotate("DATABASE_URL")
        # While it waits for its next attempt, a new rotation is not begun.
        with pytest.raises(ConflictError, match="waiting for its next attempt"):
            await server.client.rotate("DATABASE_URL")

    info = listed["DATABASE_URL"]
    assert info.current_version == 1
    assert "does not exist" in info.rotation_failure
    assert info.next_rotation_due is not None and info.next_rotation_due > clock()
    assert listed["JWT_SECRET"].current_version == 2
    assert ("DATABASE_URL", "ROTATION_FAILED") in events
    outcomes = [e.outcome for e in audit.events]
    assert (outcomes.count("retrying"), outcomes.count("failed")) == (2, 1)
    assert "attempt 1 of 3" in str(refusal.value)
    assert "given up after 3 attempts" in logs.text()
    assert_hidden(logs.text(), *target.hidden())


@pytest.mark.parametrize("two_roles", [False, True], ids=["one-role", "two-roles"])
async def test_a_new_url_that_cannot_log_in_leaves_the_old_ones_working(
    two_roles: bool, target: Target, tmp_path: Path, logs: LogCollector
) -> None:
    """Applied but not verified: the role gets its old password back, and keeps it.

    Clients reach the database through a proxy that the test cuts, while the
    administrator's connection goes straight to it.
    """
    proxy = await TcpProxy(target.cluster.port).start()
    roles = target.roles if two_roles else target.roles[:1]
    catalog = tmp_path / "catalog.toml"
    catalog.write_text(
        "[secrets.DATABASE_URL]\nrotator = 'postgres'\nmax_attempts = 2\n"
        "retry_backoff_seconds = 0.05\n[secrets.DATABASE_URL.postgres]\n"
        f"roles = {json.dumps(roles)}\n"
        f"admin_url = {json.dumps(target.cluster.admin_url())}\n"
        f"host = '127.0.0.1'\nport = {proxy.port}\nconnect_timeout_seconds = 2\n"
    )
    db = sqlite_url(tmp_path / "secrets.db")
    try:
        async with running_server(
            db, clock=utc_now, catalog=catalog, rotation_interval=0.05
        ) as server:
            client = server.client
            await client.initialize("alice")
            if two_roles:
                await client.rotate("DATABASE_URL")
            working = [s.value for s in await client.verifying_set("DATABASE_URL")]

            await proxy.cut()
            with pytest.raises(FailedPreconditionError, match="attempt 1 of 2"):
                await client.rotate("DATABASE_URL")

            async def given_up() -> bool:
                listed = {s.name: s for s in await client.list()}
                return listed["DATABASE_URL"].rotation_failed

            await poll_until(given_up)
            await proxy.restore()
            current = await client.get("DATABASE_URL")
            logged_in = [await login(url) for url in working]
    finally:
        await proxy.cut()

    assert current.version == (2 if two_roles else 1)
    assert current.value == working[0]
    assert logged_in == roles[::-1] if two_roles else roles
    assert "given up after 2 attempts" in logs.text()
    assert_hidden(logs.text(), *target.hidden(), *map(password_of, working))


async def test_rolling_back_to_an_imported_url_is_refused_at_once(
    target: Target, tmp_path: Path
) -> None:
    """The imported URL's role is not the rotator's: refused, nothing attempted."""
    env = {"DATABASE_URL": "postgresql://creator:imported-pw@db:5432/app"}
    catalog = target.catalog(tmp_path)
    db = sqlite_url(tmp_path / "secrets.db")
    async with running_server(
        db, clock=utc_now, environ=env, catalog=catalog
    ) as server:
        await server.client.initialize("alice")
        await server.client.rotate("DATABASE_URL")
        with pytest.raises(FailedPreconditionError, match="not a role this rotator"):
            await server.client.rollback("DATABASE_URL", 1)
        listed = {s.name: s for s in await server.client.list()}
        versions = await server.client.versions("DATABASE_URL")

    info = listed["DATABASE_URL"]
    assert (info.current_version, info.rotation_failed) == (2, False)
    assert [v.version for v in versions] == [2, 1]


async def test_an_admin_url_that_parsers_read_apart_is_refused_unquoted(
    target: Target, tmp_path: Path, logs: LogCollector
) -> None:
    """A written admin URL with a raw '/' in its password: refused, never echoed."""
    catalog = target.catalog(tmp_path, admin_url_secret="DATABASE_ADMIN_URL")
    leaky = f"postgresql://admin:Zk9Qw7LmXq/uR2abc+d=@{target.cluster.host}:1/postgres"
    db = sqlite_url(tmp_path / "secrets.db")
    async with running_server(
        db, clock=utc_now, catalog=catalog, rotation_interval=0.05
    ) as server:
        await server.client.initialize("alice")
        await server.client.put("DATABASE_ADMIN_URL", leaky)

        async def refused_plainly() -> bool:
            listed = {s.name: s for s in await server.client.list()}
            return "percent-encoded" in listed["DATABASE_URL"].rotation_failure

        await poll_until(refused_plainly)
        listed = await server.client.list()
        audit = await server.client.audit(name="DATABASE_URL")

    everything = logs.text() + repr(listed) + repr(audit)
    assert "Zk9Qw7LmXq" not in everything
    assert "uR2abc" not in everything


async def test_the_login_after_the_admin_url_is_written_makes_the_first_url(
    target: Target, tmp_path: Path, logs: LogCollector
) -> None:
    """As the README's start-up order says: init, put the admin URL, init again.

    The first attempt's backoff is an hour: only the second login can make it.
    """
    catalog = target.catalog(
        tmp_path, admin_url_secret="DATABASE_ADMIN_URL", retry_backoff_seconds=3600
    )
    db = sqlite_url(tmp_path / "secrets.db")
    async with running_server(db, clock=utc_now, catalog=catalog) as server:
        client = server.client
        first = await client.initialize("alice")
        with pytest.raises(NotFoundError, match="has no version yet") as absent:
            await client.get("DATABASE_URL")
        with pytest.raises(NotFoundError, match="has no version yet"):
            await client.versions("DATABASE_URL")
        await client.put("DATABASE_ADMIN_URL", target.cluster.admin_url())
        second = await client.initialize("alice")
        url = await client.get("DATABASE_URL")
        assert await login(url.value) == target.roles[0]

    assert "DATABASE_URL" in [s.name for s in first.skipped]
    assert "ListSecrets shows how far it is" in str(absent.value)
    assert "DATABASE_URL" in second.generated
    assert_hidden(logs.text(), *target.hidden(), password_of(url.value))


async def test_logins_retry_a_waiting_first_version_but_its_attempts_count(
    target: Target, tmp_path: Path, logs: LogCollector
) -> None:
    """Each login attempts a waiting first version now; the third failure ends it.

    Its backoff is an hour: only the logins make the attempts.
    """
    catalog = target.catalog(
        tmp_path, admin_url_secret="DATABASE_ADMIN_URL", retry_backoff_seconds=3600
    )
    db = sqlite_url(tmp_path / "secrets.db")
    async with running_server(db, clock=utc_now, catalog=catalog) as server:
        for _ in range(3):
            await server.client.initialize("alice")
        info = {s.name: s for s in await server.client.list()}["DATABASE_URL"]
        # Given up, it starts afresh at the next login, as the README says.
        await server.client.initialize("alice")
        again = {s.name: s for s in await server.client.list()}["DATABASE_URL"]

    said = [
        line
        for line in logs.text().splitlines()
        if line.startswith("secretsvc.") and "given up after 3 attempts" in line
    ]
    assert len(said) == 1
    assert (info.current_version, info.rotation_failed) == (0, True)
    assert (again.rotation_pending, again.rotation_failed) == (True, False)


async def test_concurrent_logins_on_three_replicas_make_one_working_first_url(
    target: Target, tmp_path: Path, logs: LogCollector
) -> None:
    """Logins racing on three replicas, once the admin URL is written: one v1."""
    postgres.require_postgres()
    catalog = target.catalog(
        tmp_path,
        roles=target.roles[:1],
        admin_url_secret="DATABASE_ADMIN_URL",
        retry_backoff_seconds=3600,
    )
    name, db = await postgres.create_database()
    try:
        async with (
            running_server(db, clock=utc_now, catalog=catalog) as a,
            running_server(db, clock=utc_now, catalog=catalog) as b,
            running_server(db, clock=utc_now, catalog=catalog) as c,
        ):
            replicas = (a, b, c)
            await a.client.initialize("alice")
            await a.client.put("DATABASE_ADMIN_URL", target.cluster.admin_url())
            await asyncio.gather(
                *(replicas[i % 3].client.initialize(f"user-{i}") for i in range(30))
            )

            async def settled() -> bool:
                listed = {s.name: s for s in await b.client.list()}
                info = listed["DATABASE_URL"]
                return info.current_version >= 1 and not info.rotation_pending

            await poll_until(settled, within=20)
            versions = await a.client.versions("DATABASE_URL")
            urls = [(await r.client.get("DATABASE_URL")).value for r in replicas]
    finally:
        await postgres.drop_database(name)

    assert [v.version for v in versions] == [1]
    assert len(set(urls)) == 1
    assert await login(urls[0]) == target.roles[0]
    assert "Traceback" not in logs.text()
    assert "deadlock" not in logs.text()


async def test_an_admin_url_secret_never_written_is_given_up_untouched(
    target: Target, tmp_path: Path, logs: LogCollector
) -> None:
    """No admin URL: nothing reached the database, so nothing is put back."""
    catalog = target.catalog(tmp_path, admin_url_secret="DATABASE_ADMIN_URL")
    db = sqlite_url(tmp_path / "secrets.db")
    async with running_server(
        db, clock=utc_now, catalog=catalog, rotation_interval=0.05
    ) as server:
        await server.client.initialize("alice")

        async def given_up() -> bool:
            return "given up after 3 attempts" in logs.text()

        await poll_until(given_up)
        info = {s.name: s for s in await server.client.list()}["DATABASE_URL"]

    assert (info.current_version, info.rotation_failed) == (0, True)
    assert "'DATABASE_ADMIN_URL', which should hold the administrator URL, has no" in (
        info.rotation_failure
    )
    assert "put back" not in logs.text()


@pytest.mark.parametrize("spelling", ["query", "environment"])
async def test_the_administrators_own_role_is_never_changed(
    pg_cluster: PasswordCluster,
    tmp_path: Path,
    logs: LogCollector,
    monkeypatch: pytest.MonkeyPatch,
    spelling: str,
) -> None:
    """An admin URL, given as a secret, that logs in as a managed role: refused.

    The user is in the query string, or comes from PGUSER: only the server,
    asked who the administrator is, can tell in the second case.
    """
    suffix = secrets.token_hex(4)
    owner, other = f"owner_{suffix}", f"other_{suffix}"
    password = secrets.token_urlsafe(16)
    admin = await asyncpg.connect(pg_cluster.admin_url())
    await admin.execute(
        f"CREATE ROLE {quoted(owner)} LOGIN CREATEROLE PASSWORD '{password}'"
    )
    await admin.execute(f"CREATE ROLE {quoted(other)} LOGIN")
    owner_url = f"postgresql://{pg_cluster.host}:{pg_cluster.port}/postgres"
    if spelling == "query":
        owner_url += f"?user={owner}&password={password}"
    else:
        monkeypatch.setenv("PGUSER", owner)
        monkeypatch.setenv("PGPASSWORD", password)
    target = Target(pg_cluster, [owner, other])
    catalog = target.catalog(tmp_path, admin_url_secret="DATABASE_ADMIN_URL")
    db = sqlite_url(tmp_path / "secrets.db")
    try:
        async with running_server(db, clock=utc_now, catalog=catalog) as server:
            await server.client.initialize("alice")
            await server.client.put("DATABASE_ADMIN_URL", owner_url)
            again = await server.client.initialize("alice")
        still = await login(pg_cluster.url(owner, password))
    finally:
        await drop_role(admin, owner)
        await drop_role(admin, other)
        await admin.close()

    reasons = dict((s.name, s.reason) for s in again.skipped)
    assert "is the administrator's own" in reasons["DATABASE_URL"]
    assert still == owner
    assert_hidden(logs.text(), password)


async def test_a_first_version_given_up_is_made_at_the_next_login(
    pg_cluster: PasswordCluster, tmp_path: Path, logs: LogCollector
) -> None:
    """No role yet at first login: given up; once it exists, a login makes it."""
    role = f"late_{secrets.token_hex(4)}"
    target = Target(pg_cluster, [role])
    clock = FakeClock(datetime.now(UTC))
    db = sqlite_url(tmp_path / "secrets.db")
    admin = await asyncpg.connect(pg_cluster.admin_url())
    try:
        async with running_server(
            db, clock=clock, catalog=target.catalog(tmp_path), rotation_interval=0.05
        ) as server:
            first = await server.client.initialize("alice")

            async def given_up() -> bool:
                clock.advance(seconds=1)
                return "given up after 3 attempts" in logs.text()

            await poll_until(given_up)
            listed = {s.name: s for s in await server.client.list()}
            await admin.execute(f'CREATE ROLE "{role}" LOGIN')
            again = await server.client.initialize("alice")
            url = await server.client.get("DATABASE_URL")
            assert await login(url.value) == role
    finally:
        await drop_role(admin, role)
        await admin.close()

    assert "DATABASE_URL" in [s.name for s in first.skipped]
    assert "DATABASE_URL" in again.generated
    # Before it existed, the list showed it as version 0, given up, and why.
    info = listed["DATABASE_URL"]
    assert (info.current_version, info.rotation_failed) == (0, True)
    assert "does not exist" in info.rotation_failure


async def test_the_previous_role_is_expired_before_any_new_rotation(
    target: Target, tmp_path: Path, logs: LogCollector
) -> None:
    """Expiring the previous password is retried until done; nothing overtakes it."""
    catalog = target.catalog(tmp_path, admin_url_secret="DATABASE_ADMIN_URL")
    db = sqlite_url(tmp_path / "secrets.db")
    admin_url = target.cluster.admin_url()
    wrong = target.cluster.url(target.cluster.admin_user, "not-the-password")
    async with running_server(
        db, clock=utc_now, catalog=catalog, rotation_interval=0.05
    ) as server:
        client, manager = server.client, server.server.manager
        await client.initialize("alice")
        await client.put("DATABASE_ADMIN_URL", admin_url)
        await client.initialize("alice")

        async def made() -> bool:
            listed = {s.name: s for s in await client.list()}
            return listed["DATABASE_URL"].current_version == 1

        await poll_until(made)
        # Promoted, but the admin URL stops working before the old role expires.
        manager.pause_rotations_after("promoted")
        rotation = asyncio.create_task(client.rotate("DATABASE_URL"))
        await asyncio.wait_for(manager.paused.wait(), 10)
        await client.put("DATABASE_ADMIN_URL", wrong)
        manager.release.set()
        assert (await rotation).version == 2

        async def failing() -> str:
            listed = {s.name: s for s in await client.list()}
            return listed["DATABASE_URL"].rotation_failure

        assert "expiring the previous version" in await poll_until(failing)
        with pytest.raises(ConflictError, match="still to be expired"):
            await client.rotate("DATABASE_URL")
        assert not await expires(target.cluster, target.roles[0])

        # Once the admin URL works again, the loop finishes the duty.
        await client.put("DATABASE_ADMIN_URL", admin_url)

        async def expired() -> bool:
            return await expires(target.cluster, target.roles[0]) and not (
                await failing()
            )

        await poll_until(expired)
        assert (await client.rotate("DATABASE_URL")).version == 3

    assert_hidden(logs.text(), *target.hidden(), "not-the-password")


async def test_a_previous_role_dropped_meanwhile_needs_no_expiry(
    target: Target, tmp_path: Path
) -> None:
    """A role that no longer exists has no password to expire: nothing waits."""
    catalog = target.catalog(tmp_path)
    async with running_server(
        sqlite_url(tmp_path / "secrets.db"), clock=utc_now, catalog=catalog
    ) as server:
        client, manager = server.client, server.server.manager
        await client.initialize("alice")
        manager.pause_rotations_after("promoted")
        rotation = asyncio.create_task(client.rotate("DATABASE_URL"))
        await asyncio.wait_for(manager.paused.wait(), 10)
        admin = await asyncpg.connect(target.cluster.admin_url())
        try:
            await drop_role(admin, target.roles[0])
        finally:
            await admin.close()
        manager.release.set()
        assert (await rotation).version == 2
        listed = {s.name: s for s in await client.list()}

    assert not listed["DATABASE_URL"].rotation_failed


async def test_a_first_login_does_not_wait_on_a_database_that_hangs(
    tmp_path: Path, logs: LogCollector
) -> None:
    """A target that accepts and never answers: the login returns; the loop goes on."""
    accepted: list[asyncio.StreamWriter] = []

    async def hold(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)

    hanging = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = hanging.sockets[0].getsockname()[1]
    catalog = tmp_path / "catalog.toml"
    catalog.write_text(
        "[secrets.DATABASE_URL]\nrotator = 'postgres'\n"
        "[secrets.DATABASE_URL.postgres]\nroles = ['app']\n"
        f"admin_url = 'postgresql://admin:admin-password@127.0.0.1:{port}/app'\n"
        "connect_timeout_seconds = 60\n"
    )
    try:
        async with running_server(
            sqlite_url(tmp_path / "secrets.db"), clock=utc_now, catalog=catalog
        ) as server:
            # The suite's client gives up after 10 s; the target would take 60.
            first = await server.client.initialize("alice")
            listed = {s.name: s for s in await server.client.list()}
    finally:
        hanging.close()
        for writer in accepted:
            writer.close()

    skipped = {s.name: s.reason for s in first.skipped}
    assert skipped["DATABASE_URL"] == "its first version is being made on its target"
    assert "JWT_SECRET" in first.generated
    assert (
        listed["DATABASE_URL"].current_version,
        listed["DATABASE_URL"].rotation_pending,
    ) == (0, True)
    assert_hidden(logs.text(), "admin-password")


@pytest.mark.parametrize(
    ("step", "two_roles"),
    [
        ("created", True),
        ("applied", True),
        ("verified", True),
        ("promoted", True),
        ("applied", False),
    ],
)
async def test_a_crash_at_each_step_is_finished_after_restart(
    step: str, two_roles: bool, target: Target, tmp_path: Path
) -> None:
    """Killed after a step, the server finishes the rotation when it comes back."""
    roles = target.roles if two_roles else target.roles[:1]
    env = {
        "PASSWORD_MASTER_KEY": ROOT_KEY,
        "DATABASE_URL": "",
        "SECRETSVC_CATALOG": str(target.catalog(tmp_path, roles=roles)),
        "SECRETSVC_ROTATION_INTERVAL": "0.2",
        "SECRETSVC_ROTATION_LEASE": "1",
    }
    db = sqlite_url(tmp_path / "secrets.db")
    processes = []

    async def serve(**extra: str) -> tuple[ServerProcess, SecretsClient]:
        process = ServerProcess(tmp_path, db, **env, **extra).start()
        processes.append(process)
        await process.wait_ready()
        return process, SecretsClient(process.target, cache=False, timeout=10)

    try:
        first, client = await serve()
        await client.initialize("alice")
        v1 = await client.get("DATABASE_URL")
        await client.close()
        first.terminate()

        paused, client = await serve(SECRETSVC_TEST_PAUSE_AFTER=step)
        rotation = asyncio.create_task(client.rotate("DATABASE_URL"))
        await poll_until(lambda: _said(paused, f"paused after step {step}"), within=15)
        if two_roles:
            # The current URL logs in at every step boundary.
            assert await login(v1.value) == roles[0]
        paused.kill()
        rotation.cancel()
        with contextlib.suppress(BaseException):
            await rotation
        await client.close()

        restarted, client = await serve()

        async def finished() -> bool:
            listed = {s.name: s for s in await client.list()}
            info = listed["DATABASE_URL"]
            if info.current_version != 2 or info.rotation_pending:
                return False
            # With two roles, the previous one's password is set to expire.
            return not two_roles or await expires(target.cluster, roles[0])

        await poll_until(finished, within=20)
        v2 = await client.get("DATABASE_URL")
        await client.close()
        restarted.terminate()
    finally:
        for process in processes:
            process.kill()

    assert await login(v2.value) == roles[-1]
    if two_roles:
        assert await login(v1.value) == roles[0]
    else:
        assert await refused(v1.value)
    output = "\n".join(process.output() for process in processes)
    assert "resuming the rotation of DATABASE_URL" in output
    assert_hidden(
        output, *target.hidden(), password_of(v1.value), password_of(v2.value)
    )


async def expires(cluster: PasswordCluster, role: str) -> bool:
    """Tell whether a role's password has an end (VALID UNTIL) set."""
    admin = await asyncpg.connect(cluster.admin_url())
    try:
        until = await admin.fetchval(
            "SELECT rolvaliduntil FROM pg_roles WHERE rolname = $1", role
        )
    finally:
        await admin.close()
    # asyncpg reads 'infinity' as datetime.max.
    return until is not None and until.replace(tzinfo=None) != datetime.max


async def _said(process: ServerProcess, text: str) -> bool:
    return text in process.output()


async def test_on_the_main_server_each_role_keeps_the_password_handed_out(
    tmp_path: Path, logs: LogCollector
) -> None:
    """Against the machine's own server, the roles' verifiers match the URLs.

    That server trusts every local login, so a login proves nothing about a
    password there; the SCRAM verifier it stores for each role does.
    """
    postgres.require_postgres()
    suffix = secrets.token_hex(4)
    roles = [f"main_a_{suffix}", f"main_b_{suffix}"]
    admin_url = postgres.ADMIN_DSN
    admin = await asyncpg.connect(admin_url)
    for role in roles:
        await admin.execute(f"CREATE ROLE {quoted(role)} LOGIN")
    catalog = tmp_path / "catalog.toml"
    catalog.write_text(
        '[secrets.DATABASE_URL]\nrotator = "postgres"\n'
        "[secrets.DATABASE_URL.postgres]\n"
        f"admin_url = {json.dumps(admin_url)}\nroles = {json.dumps(roles)}\n"
    )
    db = sqlite_url(tmp_path / "secrets.db")
    try:
        async with running_server(db, clock=utc_now, catalog=catalog) as server:
            await server.client.initialize("alice")
            v1 = await server.client.get("DATABASE_URL")
            await server.client.rotate("DATABASE_URL")
            v2 = await server.client.get("DATABASE_URL")
        verifiers = dict(
            await admin.fetch(
                "SELECT rolname, rolpassword FROM pg_authid WHERE rolname = ANY($1)",
                roles,
            )
        )
        users = [unquote(urlsplit(v.value).username or "") for v in (v1, v2)]
    finally:
        for role in roles:
            await drop_role(admin, role)
        await admin.close()

    assert users == roles
    assert scram_matches(verifiers[roles[0]], password_of(v1.value))
    assert scram_matches(verifiers[roles[1]], password_of(v2.value))
    assert not scram_matches(verifiers[roles[1]], password_of(v1.value))
    assert_hidden(logs.text(), password_of(v1.value), password_of(v2.value))
    # A server that lets anyone in is worth a warning, once.
    assert logs.text().count("with a wrong password (trust authentication?)") == 1


def scram_matches(verifier: str, password: str) -> bool:
    """Tell whether a stored SCRAM-SHA-256 verifier is ``password``'s."""
    method, rest = verifier.split("$", 1)
    assert method == "SCRAM-SHA-256"
    iterations_salt, keys = rest.split("$")
    iterations, salt = iterations_salt.split(":")
    stored_key = base64.b64decode(keys.split(":")[0])
    salted = hashlib.pbkdf2_hmac(
        "sha256", password.encode(), base64.b64decode(salt), int(iterations)
    )
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    return hmac.compare_digest(hashlib.sha256(client_key).digest(), stored_key)
