"""The SecretService servicer: requests in, domain calls, replies out."""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from datetime import datetime
from typing import Any, TypeVar

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from secretsvc_client._proto import secrets_pb2 as pb
from secretsvc_client._proto import secrets_pb2_grpc as pb_grpc

from secretsvc.errors import SecretsError
from secretsvc.model import Reason, RotationEventRecord, Stage
from secretsvc.server.status import INTERNAL_MESSAGE, status_for
from secretsvc.service import SecretManager

logger = logging.getLogger(__name__)

Request = TypeVar("Request")
Reply = TypeVar("Reply")
Context = grpc.aio.ServicerContext[Any, Any]

_STAGES = {
    Stage.CURRENT: pb.STAGE_CURRENT,
    Stage.PREVIOUS: pb.STAGE_PREVIOUS,
    Stage.PENDING: pb.STAGE_PENDING,
    Stage.RETIRED: pb.STAGE_RETIRED,
}
_REASONS = {
    Reason.INITIAL: pb.ROTATION_REASON_INITIAL,
    Reason.SCHEDULED: pb.ROTATION_REASON_SCHEDULED,
    Reason.MANUAL: pb.ROTATION_REASON_MANUAL,
}


def _timestamp(moment: datetime | None) -> Timestamp | None:
    if moment is None:
        return None
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def _log_call(
    method: str,
    code: grpc.StatusCode,
    started: float,
    context: Context,
    detail: str = "",
) -> None:
    if not logger.isEnabledFor(logging.INFO):
        return
    elapsed_ms = (time.perf_counter() - started) * 1000
    logger.info(
        "rpc %s status=%s duration_ms=%.2f peer=%s%s",
        method,
        code.name,
        elapsed_ms,
        context.peer(),
        f" detail={detail!r}" if detail else "",
    )


def _failure(method: str, error: Exception) -> tuple[grpc.StatusCode, str]:
    if isinstance(error, SecretsError):
        return status_for(error), str(error)
    logger.error("%s failed", method, exc_info=error)
    return grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE


def unary(
    method: Callable[[Any, Request, Context], Awaitable[Reply]],
) -> Callable[[Any, Request, Context], Awaitable[Reply]]:
    """Log one line per call and turn errors into status codes."""

    @functools.wraps(method)
    async def handler(self: Any, request: Request, context: Context) -> Reply:
        started = time.perf_counter()
        try:
            reply = await method(self, request, context)
        except Exception as error:
            code, message = _failure(method.__name__, error)
        else:
            _log_call(method.__name__, grpc.StatusCode.OK, started, context)
            return reply

        _log_call(method.__name__, code, started, context, message)
        await context.abort(code, message)

    return handler


def streaming(
    method: Callable[[Any, Request, Context], AsyncGenerator[Reply]],
) -> Callable[[Any, Request, Context], AsyncGenerator[Reply]]:
    """Log one line per stream when it ends and turn errors into status codes."""

    @functools.wraps(method)
    async def handler(
        self: Any, request: Request, context: Context
    ) -> AsyncGenerator[Reply]:
        started = time.perf_counter()
        try:
            async with contextlib.aclosing(method(self, request, context)) as replies:
                async for reply in replies:
                    yield reply
        except Exception as error:
            code, message = _failure(method.__name__, error)
        except BaseException:
            _log_call(method.__name__, grpc.StatusCode.CANCELLED, started, context)
            raise
        else:
            _log_call(method.__name__, grpc.StatusCode.OK, started, context)
            return

        _log_call(method.__name__, code, started, context, message)
        await context.abort(code, message)

    return handler


class SecretServicer(pb_grpc.SecretServiceServicer):
    """Serve secretsvc.v1.SecretService from a :class:`SecretManager`."""

    def __init__(self, manager: SecretManager) -> None:
        self._manager = manager

    @unary
    async def InitializeSecrets(
        self, request: pb.InitializeSecretsRequest, context: Context
    ) -> pb.InitializeSecretsResponse:
        """Make the first user master and create every required secret."""
        outcome = await self._manager.initialize(request.user_id, actor=context.peer())
        skipped = [pb.SkippedSecret(name=n, reason=r) for n, r in outcome.skipped]
        return pb.InitializeSecretsResponse(
            master_user_id=outcome.master_user_id,
            is_master=outcome.is_master,
            generated=outcome.generated,
            already_present=outcome.already_present,
            skipped=skipped,
        )

    @unary
    async def GetSecret(
        self, request: pb.GetSecretRequest, context: Context
    ) -> pb.GetSecretResponse:
        """Open one version of a secret."""
        secret = await self._manager.get(
            request.name, request.version, actor=context.peer()
        )
        return pb.GetSecretResponse(
            name=secret.name,
            value=secret.value,
            version=secret.version,
            stage=_STAGES[secret.stage],
            created_at=_timestamp(secret.created_at),
            next_rotation_due=_timestamp(secret.next_rotation_due),
        )

    @unary
    async def RotateSecret(
        self, request: pb.RotateSecretRequest, context: Context
    ) -> pb.RotateSecretResponse:
        """Replace a secret's current version with a new one."""
        meta = await self._manager.rotate(
            request.name, Reason.MANUAL, actor=context.peer()
        )
        version = pb.VersionInfo(
            name=meta.name,
            version=meta.version,
            stage=_STAGES[meta.stage],
            created_at=_timestamp(meta.created_at),
            reason=_REASONS[meta.reason],
            next_rotation_due=_timestamp(meta.next_rotation_due),
        )
        return pb.RotateSecretResponse(version=version)

    @unary
    async def ListSecrets(
        self, request: pb.ListSecretsRequest, context: Context
    ) -> pb.ListSecretsResponse:
        """Describe every secret, without values."""
        summaries = await self._manager.list_secrets(actor=context.peer())
        secrets = [
            pb.SecretInfo(
                name=s.name,
                current_version=s.current_version,
                rotation_interval_days=s.rotation_interval_days or 0,
                last_rotated_at=_timestamp(s.last_rotated_at),
                next_rotation_due=_timestamp(s.next_rotation_due),
                imported=s.imported,
            )
            for s in summaries
        ]
        return pb.ListSecretsResponse(secrets=secrets)

    @streaming
    async def WatchRotations(
        self, request: pb.WatchRotationsRequest, context: Context
    ) -> AsyncGenerator[pb.RotationEvent]:
        """Replay rotation events after an id, then stream new ones."""
        events = self._manager.watch(
            request.since_event_id, list(request.names), actor=context.peer()
        )
        async with contextlib.aclosing(events):
            async for event in events:
                yield _event(event)


def _event(event: RotationEventRecord) -> pb.RotationEvent:
    return pb.RotationEvent(
        event_id=event.event_id,
        name=event.name,
        old_version=event.old_version,
        new_version=event.new_version,
        reason=_REASONS[event.reason],
        rotated_at=_timestamp(event.created_at),
    )
