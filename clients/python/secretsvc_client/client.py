"""The asyncio client of secretsvc."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Sequence
from types import TracebackType
from typing import Any

import grpc

from secretsvc_client._proto import secrets_pb2 as pb
from secretsvc_client._proto import secrets_pb2_grpc as pb_grpc
from secretsvc_client.errors import NotFoundError, from_rpc_error
from secretsvc_client.models import (
    InitializeResult,
    RotationEvent,
    Secret,
    SecretInfo,
    VersionInfo,
)

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 10.0
RECONNECT_FIRST_DELAY = 0.05
RECONNECT_MAX_DELAY = 5.0

# A watch stream that fails with one of these is opened again from the last
# event seen; any other status is the caller's to handle.
_RESUMABLE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.CANCELLED,
    }
)


class SecretsClient:
    """Talk to a secretsvc server: initialize, read, rotate, list and watch.

    Use it as ``async with SecretsClient("127.0.0.1:50051") as client``.
    Every failed call raises a :class:`~secretsvc_client.SecretsError`.
    """

    def __init__(
        self,
        target: str,
        *,
        timeout: float | None = DEFAULT_TIMEOUT,
        wait_for_ready: bool = False,
        channel: grpc.aio.Channel | None = None,
    ) -> None:
        """Open a channel to ``target`` (``host:port``).

        Args:
            target: the server's address.
            timeout: seconds each unary call may take; None for no limit.
            wait_for_ready: while the server cannot be reached, wait for it
                (within the timeout) instead of failing at once.
            channel: a channel to use instead of a plaintext one, for TLS.
        """
        self.target = target
        self.timeout = timeout
        self.wait_for_ready = wait_for_ready
        self._channel = channel or grpc.aio.insecure_channel(target)
        self._stub = pb_grpc.SecretServiceStub(self._channel)  # type: ignore[no-untyped-call]

    async def __aenter__(self) -> SecretsClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the channel; open watches end."""
        await self._channel.close()

    async def initialize(self, user_id: str) -> InitializeResult:
        """Report a login of ``user_id``; the first one makes it master."""
        request = pb.InitializeSecretsRequest(user_id=user_id)
        reply = await self._call(self._stub.InitializeSecrets, request)
        return InitializeResult.from_proto(reply)

    async def get(self, name: str, version: int | None = None) -> Secret:
        """Read a secret: its current version, or the version given."""
        request = pb.GetSecretRequest(name=name, version=version or 0)
        reply = await self._call(self._stub.GetSecret, request)
        return Secret.from_proto(reply)

    async def get_or_default(self, name: str, default: str) -> str:
        """Return the current value of a secret, or ``default`` if it has none."""
        try:
            secret = await self.get(name)
        except NotFoundError:
            return default
        return secret.value

    async def rotate(self, name: str) -> VersionInfo:
        """Replace a secret's current version; return the new one's metadata."""
        request = pb.RotateSecretRequest(name=name)
        reply = await self._call(self._stub.RotateSecret, request)
        return VersionInfo.from_proto(reply.version)

    async def list(self) -> list[SecretInfo]:
        """Describe every secret, without values."""
        reply = await self._call(self._stub.ListSecrets, pb.ListSecretsRequest())
        return [SecretInfo.from_proto(info) for info in reply.secrets]

    async def watch(
        self,
        since_event_id: int = 0,
        names: Sequence[str] | None = None,
    ) -> AsyncGenerator[RotationEvent]:
        """Yield rotation events after ``since_event_id``, then new ones, forever.

        When the stream breaks, or the server ends it on shutdown, the
        iterator reconnects and resumes after the last event it yielded, so
        no event is missed or repeated. Stop by breaking out of the loop.
        """
        cursor = since_event_id
        delay = RECONNECT_FIRST_DELAY
        while True:
            request = pb.WatchRotationsRequest(since_event_id=cursor, names=names)
            # A stream waits for the server to come back rather than spin.
            call = self._stub.WatchRotations(request, wait_for_ready=True)
            try:
                async for message in call:
                    event = RotationEvent.from_proto(message)
                    cursor = event.event_id
                    delay = RECONNECT_FIRST_DELAY
                    yield event
            except grpc.aio.AioRpcError as error:
                if error.code() not in _RESUMABLE:
                    raise from_rpc_error(error) from None
                logger.warning(
                    "watch of %s broke (%s); resuming after event %d",
                    self.target,
                    error.code().name,
                    cursor,
                )
            finally:
                call.cancel()

            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX_DELAY)

    async def _call(self, method: Any, request: Any) -> Any:
        try:
            return await method(
                request, timeout=self.timeout, wait_for_ready=self.wait_for_ready
            )
        except grpc.aio.AioRpcError as error:
            raise from_rpc_error(error) from None
