"""The client that is never stale: cache, stale-if-error, verifying set, environ."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from secretsvc_client import (
    InvalidArgumentError,
    NotFoundError,
    Secret,
    SecretsClient,
    UnavailableError,
)

from tests.helpers import (
    FakeClock,
    LogCollector,
    RunningServer,
    free_port,
    poll_until,
    running_server,
)


@pytest.fixture
def environ() -> Iterator[None]:
    """Leave os.environ as the test found it."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


async def test_cached_get_costs_no_network_call(running: RunningServer) -> None:
    """After the first read, get is answered from memory: the server sees one read."""
    await running.client.initialize("alice")
    async with SecretsClient(running.target, cache=True) as cached:
        values = {(await cached.get("JWT_SECRET")).value for _ in range(100)}

    trail = await running.client.audit(action="read", name="JWT_SECRET")

    assert len(values) == 1
    assert len(trail.events) == 1


async def test_rotation_elsewhere_reaches_the_cache(running: RunningServer) -> None:
    """A rotation made by another client replaces the held value by itself."""
    await running.client.initialize("alice")
    async with SecretsClient(running.target, cache=True) as cached:
        first = await cached.get("JWT_SECRET")
        await running.client.rotate("JWT_SECRET")

        async def refreshed() -> bool:
            return (await cached.get("JWT_SECRET")).version == 2

        await poll_until(refreshed)
        fresh = await cached.get("JWT_SECRET")

    assert fresh.value != first.value


async def test_a_get_after_a_watched_event_returns_its_version(
    running: RunningServer,
) -> None:
    """The README's loop: on each event, get gives the version it announced."""
    await running.client.initialize("alice")
    async with SecretsClient(running.target, cache=True) as cached:
        await cached.get("JWT_SECRET")
        seen: list[tuple[int, int]] = []
        async for event in cached.watch(names=["JWT_SECRET"]):
            if event.new_version < 4:
                await running.client.rotate("JWT_SECRET")
            if event.reason == "MANUAL":
                got = await cached.get(event.name)
                seen.append((event.new_version, got.version))
            if event.new_version == 4:
                break

    assert seen == [(2, 2), (3, 3), (4, 4)]


async def test_a_refresh_that_fails_is_tried_again(
    running: RunningServer, logs: LogCollector
) -> None:
    """A rotation whose version could not be fetched is fetched at the next get."""
    await running.client.initialize("alice")
    async with SecretsClient(running.target, cache=True) as cached:
        await cached.get("JWT_SECRET")
        cache = cached._cache
        assert cache is not None
        fetch = cache._fetch
        failures = [UnavailableError("the network blinked", code="UNAVAILABLE")]

        async def blinking(name: str, stage: str) -> Secret:
            if failures:
                raise failures.pop()
            return await fetch(name, stage)

        cache._fetch = blinking
        await running.client.rotate("JWT_SECRET")

        async def failed() -> bool:
            return "kept version 1 of JWT_SECRET: refresh failed" in logs.text()

        await poll_until(failed)
        fresh = await cached.get("JWT_SECRET")

    assert fresh.version == 2


async def test_stale_if_error_window(db_url: str, clock: FakeClock) -> None:
    """With the server gone, held values are served for the window, then refused."""
    now = [0.0]
    url = f"127.0.0.1:{free_port()}"
    client = SecretsClient(
        url, cache=True, stale_if_error=30, monotonic=lambda: now[0], timeout=2
    )
    try:
        async with running_server(db_url, clock=clock, listen=url) as server:
            await server.client.initialize("alice")
            held = await client.get("JWT_SECRET")

        now[0] = 10.0
        within = await client.get("JWT_SECRET")
        now[0] = 100.0

        async def refused() -> bool:
            try:
                await client.get("JWT_SECRET")
            except UnavailableError as error:
                return "stale-if-error window of 30s" in str(error)
            return False

        await poll_until(refused)
        # Back again: reads ask the server rather than wait for the follower.
        async with running_server(db_url, clock=clock, listen=url):

            async def answered() -> Secret | None:
                try:
                    return await client.get("JWT_SECRET")
                except UnavailableError:
                    return None

            back = await poll_until(answered)
    finally:
        await client.close()

    assert within.value == held.value
    assert back is not None
    assert back.value == held.value


async def test_verifying_set_follows_the_grace_period(
    running: RunningServer, clock: FakeClock
) -> None:
    """The set holds current and previous while the grace lasts, then current only."""
    await running.client.initialize("alice")
    first = await running.client.get("JWT_SECRET")
    await running.client.rotate("JWT_SECRET")
    async with SecretsClient(running.target, cache=True, clock=clock) as cached:
        during = await cached.verifying_set("JWT_SECRET")
        clock.advance(hours=25)
        after = await cached.verifying_set("JWT_SECRET")

    assert [(s.version, s.stage) for s in during] == [(2, "CURRENT"), (1, "PREVIOUS")]
    assert during[1].value == first.value
    assert [s.version for s in after] == [2]


async def test_exported_secrets_follow_rotation(
    running: RunningServer, environ: None
) -> None:
    """Exported secrets are in os.environ and change there when they rotate."""
    await running.client.initialize("alice")
    async with SecretsClient(running.target, cache=True) as cached:
        await cached.export_to_environ("JWT_SECRET")
        first = os.environ["JWT_SECRET"]
        await running.client.rotate("JWT_SECRET")

        async def updated() -> bool:
            return os.environ["JWT_SECRET"] != first

        await poll_until(updated)
        current = await running.client.get("JWT_SECRET")

    assert os.environ["JWT_SECRET"] == current.value


async def test_get_or_default_can_fall_back_to_environ(
    running: RunningServer, environ: None
) -> None:
    """A missing secret falls back to the variable of the same name when asked."""
    os.environ["NOT_IN_STORE"] = "from-the-environment"

    plain = await running.client.get_or_default("NOT_IN_STORE", "default")
    bridged = await running.client.get_or_default(
        "NOT_IN_STORE", "default", from_environ=True
    )

    assert (plain, bridged) == ("default", "from-the-environment")


async def test_list_shows_which_versions_consumers_use(running: RunningServer) -> None:
    """Cached clients report their versions; ListSecrets counts them per version."""
    await running.client.initialize("alice")
    one = SecretsClient(running.target, cache=True, consumer_id="billing-1")
    two = SecretsClient(running.target, cache=True, consumer_id="billing-2")
    try:
        await one.get("JWT_SECRET")
        await two.get("JWT_SECRET")
        before = {s.name: s.consumers for s in await running.client.list()}
        await running.client.rotate("JWT_SECRET")

        async def all_moved() -> bool:
            listed = {s.name: s.consumers for s in await running.client.list()}
            return listed["JWT_SECRET"] == {2: 2}

        await poll_until(all_moved)
    finally:
        await one.close()
        await two.close()

    assert before["JWT_SECRET"] == {1: 2}
    assert before["CSRF_SECRET"] == {}


async def test_tokens_verify_through_the_grace_period(
    running: RunningServer, clock: FakeClock
) -> None:
    """A JWT signed just before rotation verifies; one of an expired key does not."""
    import jwt

    await running.client.initialize("alice")
    async with SecretsClient(running.target, cache=True, clock=clock) as secrets:

        async def sign(claims: dict[str, str]) -> str:
            key = await secrets.get("JWT_SECRET")
            headers = {"kid": str(key.version)}
            return jwt.encode(claims, key.value, algorithm="HS256", headers=headers)

        async def verify(token: str) -> dict[str, str]:
            kid = int(jwt.get_unverified_header(token)["kid"])
            keys = {
                s.version: s.value for s in await secrets.verifying_set("JWT_SECRET")
            }
            if kid not in keys:
                raise jwt.InvalidTokenError(f"key version {kid} is not accepted")
            decoded: dict[str, str] = jwt.decode(token, keys[kid], algorithms=["HS256"])
            return decoded

        before = await sign({"sub": "alice"})
        await running.client.rotate("JWT_SECRET")

        async def adopted() -> bool:
            return (await secrets.get("JWT_SECRET")).version == 2

        await poll_until(adopted)
        after = await sign({"sub": "bob"})
        assert (await verify(before))["sub"] == "alice"
        assert (await verify(after))["sub"] == "bob"

        clock.advance(hours=25)
        with pytest.raises(jwt.InvalidTokenError, match="version 1"):
            await verify(before)
        assert (await verify(after))["sub"] == "bob"


async def test_reports_of_unknown_versions_are_refused(running: RunningServer) -> None:
    """A consumer cannot report a version or secret that does not exist."""
    await running.client.initialize("alice")

    with pytest.raises(NotFoundError, match="no version 999"):
        await running.client.report_versions({"JWT_SECRET": 999})
    with pytest.raises(NotFoundError, match="'NOPE_KEY' does not exist"):
        await running.client.report_versions({"NOPE_KEY": 1})

    listed = {s.name: s.consumers for s in await running.client.list()}
    assert listed["JWT_SECRET"] == {}


async def test_value_that_is_not_text_is_refused_without_echo(
    running: RunningServer,
) -> None:
    """A value the wire cannot carry is an InvalidArgumentError, not echoed."""
    value = "sk_live_" + "\udcff" * 30

    with pytest.raises(InvalidArgumentError) as raised:
        await running.client.put("STRIPE_KEY", value)

    assert "\udcff" not in str(raised.value)
