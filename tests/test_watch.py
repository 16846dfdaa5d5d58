"""WatchRotations: replay after an id, then live events; resume without gaps."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from secretsvc_client import InvalidArgumentError, RotationEvent, SecretsClient
from secretsvc_client._proto import secrets_pb2 as pb
from secretsvc_client._proto import secrets_pb2_grpc as pb_grpc

from tests.helpers import (
    FakeClock,
    RunningServer,
    free_port,
    poll_until,
    running_server,
)


async def take(
    client: SecretsClient, count: int, **kwargs: object
) -> list[RotationEvent]:
    events = []
    async for event in client.watch(**kwargs):  # type: ignore[arg-type]
        events.append(event)
        if len(events) == count:
            break
    return events


async def test_watch_replays_the_log(running: RunningServer) -> None:
    """From 0 the stream replays every event, ids strictly increasing."""
    await running.client.initialize("alice")
    await running.client.rotate("JWT_SECRET")

    events = await take(running.client, 4)

    ids = [e.event_id for e in events]
    assert ids == sorted(set(ids))
    assert [(e.name, e.old_version, e.new_version, e.reason) for e in events] == [
        ("PASSWORD_MASTER_KEY", 0, 1, "INITIAL"),
        ("JWT_SECRET", 0, 1, "INITIAL"),
        ("CSRF_SECRET", 0, 1, "INITIAL"),
        ("JWT_SECRET", 1, 2, "MANUAL"),
    ]
    assert all(e.rotated_at is not None for e in events)


async def test_watch_streams_live_rotations(running: RunningServer) -> None:
    """A subscriber that has caught up receives a rotation made afterwards."""
    await running.client.initialize("alice")
    replayed = await take(running.client, 3)
    last = replayed[-1].event_id

    watcher = asyncio.create_task(take(running.client, 1, since_event_id=last))
    await asyncio.sleep(0.1)
    await running.client.rotate("CSRF_SECRET")
    (event,) = await asyncio.wait_for(watcher, timeout=10)

    assert (event.name, event.new_version, event.event_id) == (
        "CSRF_SECRET",
        2,
        last + 1,
    )


async def test_resumed_watch_misses_nothing_and_repeats_nothing(
    running: RunningServer,
) -> None:
    """Dropping and resuming from the last id yields each event exactly once."""
    await running.client.initialize("alice")
    seen: list[RotationEvent] = []
    cursor = 0
    rotations = 0
    for _ in range(5):
        batch = await take(running.client, 2, since_event_id=cursor)
        seen.extend(batch)
        cursor = batch[-1].event_id
        # Rotations made while nobody is subscribed.
        for name in ("JWT_SECRET", "CSRF_SECRET"):
            await running.client.rotate(name)
            rotations += 1

    rest = await take(running.client, 3 + rotations - len(seen), since_event_id=cursor)
    ids = [e.event_id for e in seen + rest]

    assert ids == list(range(1, 3 + rotations + 1))


async def test_watch_filters_by_name(running: RunningServer) -> None:
    """With names given, only those secrets' events are streamed."""
    await running.client.initialize("alice")
    await running.client.rotate("JWT_SECRET")
    await running.client.rotate("CSRF_SECRET")

    events = await take(running.client, 2, names=["CSRF_SECRET"])

    assert [(e.name, e.new_version) for e in events] == [
        ("CSRF_SECRET", 1),
        ("CSRF_SECRET", 2),
    ]


@pytest.mark.parametrize(
    ("since", "names"),
    [(-1, []), (0, ["bad name"])],
    ids=["negative-id", "bad-name"],
)
async def test_bad_watch_request_is_invalid_argument(
    running: RunningServer, since: int, names: list[str]
) -> None:
    """A negative id or a malformed name ends the stream with INVALID_ARGUMENT."""
    with pytest.raises(InvalidArgumentError):
        await take(running.client, 1, since_event_id=since, names=names)


async def test_server_shutdown_ends_open_streams(db_url: str, clock: FakeClock) -> None:
    """Stopping the server ends a live stream cleanly, with status OK."""
    async with running_server(db_url, clock=clock) as server:
        await server.client.initialize("alice")
        channel = grpc.aio.insecure_channel(server.target)
        stub = pb_grpc.SecretServiceStub(channel)  # type: ignore[no-untyped-call]
        call = stub.WatchRotations(pb.WatchRotationsRequest(since_event_id=3))
        await asyncio.sleep(0.1)
        stopping = asyncio.create_task(server.server.stop())
        received = [message async for message in call]
        await stopping

    assert received == []
    assert await call.code() == grpc.StatusCode.OK
    await channel.close()


async def test_client_watch_resumes_across_a_server_restart(
    db_url: str, clock: FakeClock
) -> None:
    """The client's watch reconnects to a restarted server and resumes by id."""
    port = free_port()
    url = f"127.0.0.1:{port}"
    async with running_server(db_url, clock=clock, listen=url) as server:
        await server.client.initialize("alice")

    client = SecretsClient(url)
    events: list[RotationEvent] = []

    async def follow() -> None:
        async for event in client.watch():
            events.append(event)
            if len(events) == 5:
                return

    watcher = asyncio.create_task(follow())
    try:
        async with running_server(db_url, clock=clock, listen=url) as server:
            await server.client.rotate("JWT_SECRET")

            async def caught_up() -> bool:
                return len(events) == 4

            await poll_until(caught_up)
        # The stream ended with the server; the client retries until it is back.
        async with running_server(db_url, clock=clock, listen=url) as server:
            await server.client.rotate("CSRF_SECRET")
            await asyncio.wait_for(watcher, timeout=15)
    finally:
        watcher.cancel()
        await client.close()

    assert [e.event_id for e in events] == [1, 2, 3, 4, 5]
    assert [(e.name, e.new_version) for e in events[3:]] == [
        ("JWT_SECRET", 2),
        ("CSRF_SECRET", 2),
    ]


async def test_closing_the_client_ends_its_watch(running: RunningServer) -> None:
    """A watch whose client is closed ends quietly instead of raising."""
    await running.client.initialize("alice")
    client = SecretsClient(running.target)
    seen: list[RotationEvent] = []

    async def follow() -> None:
        async for event in client.watch():
            seen.append(event)

    watcher = asyncio.create_task(follow())

    async def caught_up() -> bool:
        return len(seen) == 3

    await poll_until(caught_up)
    await client.close()

    await asyncio.wait_for(watcher, timeout=10)
    assert [e.event_id for e in seen] == [1, 2, 3]


async def test_an_event_id_beyond_the_wire_is_refused(running: RunningServer) -> None:
    """since_event_id past a signed 64-bit number: the library's own error."""
    from secretsvc_client import InvalidArgumentError

    with pytest.raises(InvalidArgumentError, match="since_event_id must be"):
        async for _ in running.client.watch(since_event_id=2**64):
            pass
