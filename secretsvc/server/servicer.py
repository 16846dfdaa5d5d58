"""The SecretService servicer: requests in, domain calls, replies out."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from secretsvc_client._proto import secrets_pb2 as pb
from secretsvc_client._proto import secrets_pb2_grpc as pb_grpc

from secretsvc.access import Authenticator, Caller, Credentials
from secretsvc.catalog import NAME_PATTERN
from secretsvc.errors import InvalidRequest, SecretsError
from secretsvc.model import AuditQuery, Reason, RotationEventRecord, Stage
from secretsvc.server.status import INTERNAL_MESSAGE, status_for
from secretsvc.service import SecretManager, VersionMeta

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
_STAGE_OF = {
    pb.STAGE_CURRENT: Stage.CURRENT,
    pb.STAGE_PREVIOUS: Stage.PREVIOUS,
}
_REASONS = {
    Reason.INITIAL: pb.ROTATION_REASON_INITIAL,
    Reason.SCHEDULED: pb.ROTATION_REASON_SCHEDULED,
    Reason.MANUAL: pb.ROTATION_REASON_MANUAL,
    Reason.WRITTEN: pb.ROTATION_REASON_WRITTEN,
    Reason.ROLLBACK: pb.ROTATION_REASON_ROLLBACK,
    Reason.ROTATION_DUE: pb.ROTATION_REASON_ROTATION_DUE,
    Reason.ROTATION_FAILED: pb.ROTATION_REASON_ROTATION_FAILED,
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
    peer: str,
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
        peer,
        f" detail={detail!r}" if detail else "",
    )


def _failure(method: str, error: Exception) -> tuple[grpc.StatusCode, str]:
    if isinstance(error, SecretsError):
        return status_for(error), str(error)
    logger.error("%s failed", method, exc_info=error)
    return grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE


# The audit trail's action for a call refused before the domain saw it, in
# the words the domain uses for the calls it refuses itself.
AUDIT_ACTIONS = {
    "InitializeSecrets": "initialize",
    "GetSecret": "read",
    "RotateSecret": "rotate",
    "PutSecret": "write",
    "RollbackSecret": "rollback",
    "ListSecrets": "list",
    "ListVersions": "list_versions",
    "ReportVersions": "report",
    "ListAuditEvents": "audit",
    "WatchRotations": "watch",
}


def _credentials(context: Context) -> Credentials:
    """Return what the call presents: bearer headers and certificate names."""
    headers = [
        value
        for key, value in context.invocation_metadata() or ()
        if key == "authorization" and isinstance(value, str)
    ]
    peer = context.auth_context() or {}
    names = peer.get("x509_common_name") or []
    return Credentials(
        authorization=tuple(headers),
        certificate=bool(peer.get("x509_pem_cert")),
        # gRPC reports an empty common name for a subject without one.
        common_names=tuple(n.decode(errors="replace") for n in names if n),
    )


Handler = Callable[[Any, Request, Context, Caller], Awaitable[Reply]]
StreamHandler = Callable[[Any, Request, Context, Caller], AsyncGenerator[Reply]]


def unary(
    method: Handler[Request, Reply],
) -> Callable[[Any, Request, Context], Awaitable[Reply]]:
    """Authenticate, log one line per call, and turn errors into status codes."""

    @functools.wraps(method)
    async def handler(
        self: SecretServicer, request: Request, context: Context
    ) -> Reply:
        started = time.perf_counter()
        # Read once: a cancelled call's context must not be touched again.
        peer = context.peer()
        try:
            caller = self.authenticate(context, peer, method.__name__, request)
            reply = await method(self, request, context, caller)
        except asyncio.CancelledError:
            _log_call(method.__name__, grpc.StatusCode.CANCELLED, started, peer)
            raise
        except Exception as error:
            code, message = _failure(method.__name__, error)
        else:
            _log_call(method.__name__, grpc.StatusCode.OK, started, peer)
            return reply

        _log_call(method.__name__, code, started, peer, message)
        await context.abort(code, message)

    return handler


def streaming(
    method: StreamHandler[Request, Reply],
) -> Callable[[Any, Request, Context], AsyncGenerator[Reply]]:
    """Authenticate, log one line per stream as it ends, map errors to statuses."""

    @functools.wraps(method)
    async def handler(
        self: SecretServicer, request: Request, context: Context
    ) -> AsyncGenerator[Reply]:
        started = time.perf_counter()
        # Read once: a cancelled call's context must not be touched again.
        peer = context.peer()
        try:
            caller = self.authenticate(context, peer, method.__name__, request)
            replies = method(self, request, context, caller)
            async with contextlib.aclosing(replies):
                async for reply in replies:
                    yield reply
        except Exception as error:
            code, message = _failure(method.__name__, error)
        except BaseException:
            _log_call(method.__name__, grpc.StatusCode.CANCELLED, started, peer)
            raise
        else:
            _log_call(method.__name__, grpc.StatusCode.OK, started, peer)
            return

        _log_call(method.__name__, code, started, peer, message)
        await context.abort(code, message)

    return handler


class SecretServicer(pb_grpc.SecretServiceServicer):
    """Serve secretsvc.v1.SecretService from a :class:`SecretManager`."""

    def __init__(self, manager: SecretManager, authenticator: Authenticator) -> None:
        self._manager = manager
        self._authenticator = authenticator

    def authenticate(
        self, context: Context, peer: str, method: str, request: object
    ) -> Caller:
        """Return the caller of this call, from its token or certificate."""
        name = getattr(request, "name", None)
        return self._authenticator.authenticate(
            _credentials(context),
            peer,
            AUDIT_ACTIONS[method],
            # A malformed name is not echoed, not even into the audit trail.
            name if isinstance(name, str) and NAME_PATTERN.fullmatch(name) else None,
        )

    @unary
    async def InitializeSecrets(
        self, request: pb.InitializeSecretsRequest, context: Context, caller: Caller
    ) -> pb.InitializeSecretsResponse:
        """Make the first user master and create every required secret."""
        outcome = await self._manager.initialize(request.user_id, caller=caller)
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
        self, request: pb.GetSecretRequest, context: Context, caller: Caller
    ) -> pb.GetSecretResponse:
        """Open one version of a secret."""
        stage = _STAGE_OF.get(request.stage)
        if request.stage and stage is None:
            raise InvalidRequest("stage must be CURRENT or PREVIOUS")
        secret = await self._manager.get(
            request.name, request.version, caller=caller, stage=stage
        )
        return pb.GetSecretResponse(
            name=secret.name,
            value=secret.value,
            version=secret.version,
            stage=_STAGES[secret.stage],
            created_at=_timestamp(secret.created_at),
            next_rotation_due=_timestamp(secret.next_rotation_due),
            expires_at=_timestamp(secret.expires_at),
        )

    @unary
    async def RotateSecret(
        self, request: pb.RotateSecretRequest, context: Context, caller: Caller
    ) -> pb.RotateSecretResponse:
        """Replace a secret's current version with a new one."""
        meta = await self._manager.rotate(
            request.name,
            Reason.MANUAL,
            caller=caller,
            expected_version=_expected(request),
        )
        return pb.RotateSecretResponse(version=_version(meta))

    @unary
    async def PutSecret(
        self, request: pb.PutSecretRequest, context: Context, caller: Caller
    ) -> pb.PutSecretResponse:
        """Write a new current version of an operator-written secret."""
        meta = await self._manager.put(
            request.name,
            request.value,
            caller=caller,
            expected_version=_expected(request),
        )
        return pb.PutSecretResponse(version=_version(meta))

    @unary
    async def ReportVersions(
        self, request: pb.ReportVersionsRequest, context: Context, caller: Caller
    ) -> pb.ReportVersionsResponse:
        """Record which versions a consumer has adopted."""
        await self._manager.report_versions(
            request.consumer_id, dict(request.versions), caller=caller
        )
        return pb.ReportVersionsResponse()

    @unary
    async def ListVersions(
        self, request: pb.ListVersionsRequest, context: Context, caller: Caller
    ) -> pb.ListVersionsResponse:
        """Describe every version of a secret, newest first."""
        versions = await self._manager.list_versions(request.name, caller=caller)
        return pb.ListVersionsResponse(versions=[_version(v) for v in versions])

    @unary
    async def RollbackSecret(
        self, request: pb.RollbackSecretRequest, context: Context, caller: Caller
    ) -> pb.RollbackSecretResponse:
        """Make a kept earlier version's value current again."""
        meta = await self._manager.rollback(
            request.name, request.version, caller=caller
        )
        return pb.RollbackSecretResponse(version=_version(meta))

    @unary
    async def ListSecrets(
        self, request: pb.ListSecretsRequest, context: Context, caller: Caller
    ) -> pb.ListSecretsResponse:
        """Describe every secret, without values."""
        summaries = await self._manager.list_secrets(caller=caller)
        secrets = [
            pb.SecretInfo(
                name=s.name,
                current_version=s.current_version,
                rotation_interval_days=s.rotation_interval_days or 0,
                last_rotated_at=_timestamp(s.last_rotated_at),
                next_rotation_due=_timestamp(s.next_rotation_due),
                imported=s.imported,
                written=s.written,
                overdue=s.overdue,
                consumers_by_version=dict(s.consumers),
                rotator=s.rotator,
                rotation_pending=s.rotation_pending,
                rotation_failed=s.failure is not None,
                rotation_failure=s.failure or "",
            )
            for s in summaries
        ]
        return pb.ListSecretsResponse(secrets=secrets)

    @unary
    async def ListAuditEvents(
        self, request: pb.ListAuditEventsRequest, context: Context, caller: Caller
    ) -> pb.ListAuditEventsResponse:
        """Page through the audit trail, newest first."""
        try:
            since, until = _datetime(request, "since"), _datetime(request, "until")
        except InvalidRequest as error:
            self._manager.audit.record(
                caller.identity, "audit", error.outcome, None, detail=str(error)
            )
            raise
        query = AuditQuery(
            name=request.name or None,
            actor=request.caller or None,
            action=request.action or None,
            outcome=request.outcome or None,
            since=since,
            until=until,
        )
        page = await self._manager.list_audit(
            query, request.page_size, request.page_token, caller=caller
        )
        events = [
            pb.AuditEvent(
                id=record_id,
                at=_timestamp(record.at),
                caller=record.actor,
                action=record.action,
                name=record.name or "",
                version=record.version or 0,
                outcome=record.outcome,
                detail=record.detail or "",
            )
            for record_id, record in page.records
        ]
        return pb.ListAuditEventsResponse(
            events=events, next_page_token=page.next_page_token
        )

    @streaming
    async def WatchRotations(
        self, request: pb.WatchRotationsRequest, context: Context, caller: Caller
    ) -> AsyncGenerator[pb.RotationEvent]:
        """Replay rotation events after an id, then stream new ones."""
        events = self._manager.watch(
            request.since_event_id, list(request.names), caller=caller
        )
        async with contextlib.aclosing(events):
            async for event in events:
                yield _event(event)


def _expected(request: pb.RotateSecretRequest | pb.PutSecretRequest) -> int | None:
    """Return the version a check-and-set write expects, or None for no check."""
    if request.HasField("expected_version"):
        return request.expected_version
    return None


def _version(meta: VersionMeta) -> pb.VersionInfo:
    return pb.VersionInfo(
        name=meta.name,
        version=meta.version,
        stage=_STAGES[meta.stage],
        created_at=_timestamp(meta.created_at),
        reason=_REASONS[meta.reason],
        next_rotation_due=_timestamp(meta.next_rotation_due),
        value_kept=meta.value_kept,
        expires_at=_timestamp(meta.expires_at),
    )


def _datetime(message: Any, field: str) -> datetime | None:
    if not message.HasField(field):
        return None
    stamp: Timestamp = getattr(message, field)
    try:
        return stamp.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError):
        raise InvalidRequest(
            f"{field} is not a time between the years 1 and 9999"
        ) from None


def _event(event: RotationEventRecord) -> pb.RotationEvent:
    return pb.RotationEvent(
        event_id=event.event_id,
        name=event.name,
        old_version=event.old_version,
        new_version=event.new_version,
        reason=_REASONS[event.reason],
        rotated_at=_timestamp(event.created_at),
    )
