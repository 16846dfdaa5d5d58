"""The audit trail: every initialization, read, rotation and denial, no value."""

from __future__ import annotations

from datetime import datetime

import pytest
import sqlalchemy as sa
from secretsvc_client import NotFoundError, PermissionDeniedError

from secretsvc.store import tables
from tests.helpers import RunningServer


async def trail(running: RunningServer) -> list[sa.Row[tuple[object, ...]]]:
    await running.server.manager.audit.flush()
    a = tables.audit_records
    async with running.server.store.engine.connect() as conn:
        return list((await conn.execute(sa.select(a).order_by(a.c.id))).all())


async def test_every_operation_leaves_a_record(running: RunningServer) -> None:
    """Initialization, reads, rotations and refusals are each recorded."""
    await running.client.initialize("alice")
    await running.client.get("JWT_SECRET")
    await running.client.rotate("CSRF_SECRET")
    with pytest.raises(PermissionDeniedError):
        await running.client.get("PASSWORD_MASTER_KEY")
    with pytest.raises(NotFoundError):
        await running.client.get("JWT_SECRET", 9)

    records = [
        (r.action, r.secret_name, r.version, r.outcome) for r in await trail(running)
    ]

    assert ("create", "JWT_SECRET", 1, "ok") in records
    assert ("initialize", None, None, "ok") in records
    assert ("read", "JWT_SECRET", 1, "ok") in records
    assert ("rotate", "CSRF_SECRET", 2, "ok") in records
    assert ("read", "PASSWORD_MASTER_KEY", None, "denied") in records
    assert ("read", "JWT_SECRET", 9, "not_found") in records


async def test_records_name_the_caller_and_time(running: RunningServer) -> None:
    """Each record says who called, when, and the master user's id on init."""
    await running.client.initialize("alice")

    records = await trail(running)
    init = next(r for r in records if r.action == "initialize")

    # Without authentication configured, every caller is the local one.
    assert {r.actor for r in records} == {"local"}
    assert all(isinstance(r.at, datetime) and r.at.tzinfo for r in records)
    assert init.detail == "user_id=alice, master"


async def test_malformed_name_is_recorded_without_it(running: RunningServer) -> None:
    """A refused name that breaks the grammar is described, not stored as a name."""
    with pytest.raises(Exception, match="secret name"):
        await running.client.get("x" * 10_000)

    (record,) = [r for r in await trail(running) if r.action == "read"]

    assert record.secret_name is None
    assert record.outcome == "invalid"
    assert len(record.detail or "") < 200


@pytest.mark.parametrize(
    "stamp",
    [{"seconds": 2**62}, {"seconds": -(2**62)}, {"seconds": 1, "nanos": -5}],
    ids=["far-future", "far-past", "negative-nanos"],
)
async def test_an_impossible_time_is_invalid_and_recorded(
    running: RunningServer, stamp: dict[str, int]
) -> None:
    """A raw request with a time no calendar has: INVALID_ARGUMENT, on the trail."""
    import grpc
    from google.protobuf.timestamp_pb2 import Timestamp
    from secretsvc_client._proto import secrets_pb2 as pb
    from secretsvc_client._proto import secrets_pb2_grpc as pb_grpc

    await running.client.initialize("alice")
    async with grpc.aio.insecure_channel(running.target) as channel:
        stub = pb_grpc.SecretServiceStub(channel)  # type: ignore[no-untyped-call]
        request = pb.ListAuditEventsRequest(since=Timestamp(**stamp))
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub.ListAuditEvents(request)

    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "since is not a time" in (raised.value.details() or "")
    trail = await running.client.audit(action="audit", outcome="invalid")
    assert len(trail.events) == 1
