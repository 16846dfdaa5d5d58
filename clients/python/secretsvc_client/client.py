"""The asyncio client of secretsvc."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from secretsvc_client._proto import secrets_pb2 as pb
from secretsvc_client._proto import secrets_pb2_grpc as pb_grpc
from secretsvc_client.cache import SecretCache
from secretsvc_client.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    from_rpc_error,
)
from secretsvc_client.models import (
    AuditPage,
    InitializeResult,
    RotationEvent,
    Secret,
    SecretInfo,
    VersionInfo,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TLSConfig:
    """TLS material: the CA that signed the server, and this client's own."""

    ca: bytes | None = None
    cert: bytes | None = None
    key: bytes | None = None

    @classmethod
    def from_files(
        cls, ca: str | None = None, cert: str | None = None, key: str | None = None
    ) -> TLSConfig:
        """Read PEM files; any may be None."""

        def read(path: str | None) -> bytes | None:
            return Path(path).read_bytes() if path else None

        return cls(ca=read(ca), cert=read(cert), key=read(key))

    def credentials(self) -> grpc.ChannelCredentials:
        """Return gRPC channel credentials for this material."""
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca,
            private_key=self.key,
            certificate_chain=self.cert,
        )


def _timestamp(moment: datetime | None) -> Timestamp | None:
    if moment is None:
        return None
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


DEFAULT_TIMEOUT = 10.0
_STAGE_VALUES = {"CURRENT": pb.STAGE_CURRENT, "PREVIOUS": pb.STAGE_PREVIOUS}
# Event ids are signed 64-bit numbers on the wire.
MAX_EVENT_ID = 2**63 - 1
RECONNECT_FIRST_DELAY = 0.05
RECONNECT_MAX_DELAY = 5.0
# How often with_fresh_secret asks for a newer version while it waits.
FRESH_POLL_SECONDS = 0.1
T = TypeVar("T")

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
        token: str | None = None,
        tls: TLSConfig | None = None,
        channel: grpc.aio.Channel | None = None,
        cache: bool = True,
        stale_if_error: float = 300.0,
        clock: Callable[[], datetime] | None = None,
        monotonic: Callable[[], float] | None = None,
        consumer_id: str | None = None,
    ) -> None:
        """Open a channel to ``target`` (``host:port``).

        Args:
            target: the server's address.
            timeout: seconds each unary call may take; None for no limit.
            wait_for_ready: while the server cannot be reached, wait for it
                (within the timeout) instead of failing at once.
            token: a bearer token, sent with every call.
            tls: the CA to trust and, for mutual TLS, this client's
                certificate and key.
            channel: a ready channel to use instead of opening one.
            cache: keep current values in memory and follow WatchRotations in
                the background, so that ``get`` after the first read costs no
                network call and is never stale. False reads from the server
                every time (each read then reaches the audit trail).
            stale_if_error: with the cache, seconds to keep serving held values
                while the server cannot be reached; then ``get`` raises.
            clock: the wall clock that grace periods are judged by.
            monotonic: the clock that the stale-if-error window is timed by.
            consumer_id: names this process when the cache reports which
                versions it uses; host, pid and a random tag by default.
        """
        self.target = target
        self.timeout = timeout
        self.wait_for_ready = wait_for_ready
        if token is not None:
            # A token read from a file keeps its newline; a header cannot.
            token = token.strip()
            if not all(" " <= c <= "~" for c in token):
                raise InvalidArgumentError(
                    "the token holds characters a call header cannot carry "
                    "(a line break inside it?)",
                    code="INVALID_ARGUMENT",
                )
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self._tls = tls
        # Opened at the first call, on the loop that runs it: a client made
        # at import time still works under asyncio.run().
        self._channel = channel
        self._stub_now: pb_grpc.SecretServiceStub | None = None
        self._closed = False
        self.consumer_id = consumer_id or (
            f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        )
        self._cache: SecretCache | None = None
        if cache:
            extra: dict[str, Any] = {}
            if clock is not None:
                extra["now"] = clock
            if monotonic is not None:
                extra["monotonic"] = monotonic
            self._cache = SecretCache(
                self._fetch,
                report=self.report_versions,
                stale_if_error=stale_if_error,
                **extra,
            )

    @property
    def _stub(self) -> pb_grpc.SecretServiceStub:
        if self._stub_now is None:
            if self._channel is None:
                self._channel = (
                    grpc.aio.secure_channel(self.target, self._tls.credentials())
                    if self._tls is not None
                    else grpc.aio.insecure_channel(self.target)
                )
            self._stub_now = pb_grpc.SecretServiceStub(self._channel)  # type: ignore[no-untyped-call]
        return self._stub_now

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
        self._closed = True
        if self._cache is not None:
            await self._cache.stop()
        if self._channel is not None:
            await self._channel.close()

    async def initialize(self, user_id: str) -> InitializeResult:
        """Report a login of ``user_id``; the first one makes it master."""
        request = pb.InitializeSecretsRequest(user_id=user_id)
        reply = await self._call(self._stub.InitializeSecrets, request)
        return InitializeResult.from_proto(reply)

    async def get(
        self, name: str, version: int | None = None, *, stage: str | None = None
    ) -> Secret:
        """Read a secret: its current version, the version given, or the stage.

        Args:
            name: the secret's name.
            version: a version number.
            stage: "CURRENT" or "PREVIOUS" (readable until its grace ends).
        """
        if self._cache is not None and version is None and stage is None:
            self._follow_rotations()
            return await self._cache.current(name)
        return await self._fetch(name, stage, version)

    async def refresh(self, name: str) -> Secret:
        """Read a secret's current version from the server, past the cache."""
        if self._cache is not None:
            self._follow_rotations()
            return await self._cache.refresh(name)
        return await self._fetch(name, "CURRENT")

    async def with_fresh_secret(
        self,
        name: str,
        use: Callable[[str], Awaitable[T]],
        *,
        retry_on: tuple[type[BaseException], ...],
        wait: float = 10.0,
    ) -> T:
        """Call ``use`` with the secret's value, and again with a fresher one if stale.

        For a credential whose target takes the new value a moment before the
        service makes it current, such as a database password rotated in place
        (one login role): when ``use`` raises one of ``retry_on`` (say
        ``asyncpg.InvalidPasswordError``), the secret is read again from the
        server until a newer version appears, and ``use`` is called again
        with it, as long as newer versions keep coming within ``wait``
        seconds of the first call. Without a newer version in time, the last
        error is raised.
        """
        secret = await self.get(name)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while True:
            try:
                return await use(secret.value)
            except retry_on:
                while True:
                    fresh = await self.refresh(name)
                    if fresh.version != secret.version:
                        break
                    if loop.time() >= deadline:
                        raise
                    await asyncio.sleep(FRESH_POLL_SECONDS)
                secret = fresh

    async def verifying_set(self, name: str) -> list[Secret]:
        """Return the values a signature may have been made with, newest first.

        That is the current version and, while its grace lasts, the previous
        one: verify a token against the one whose version is its ``kid``.
        """
        if self._cache is not None:
            self._follow_rotations()
            return await self._cache.verifying(name)
        current = await self._fetch(name, "CURRENT")
        try:
            return [current, await self._fetch(name, "PREVIOUS")]
        except (NotFoundError, FailedPreconditionError):
            return [current]

    async def export_to_environ(self, *names: str) -> None:
        """Put these secrets in os.environ and keep them current on rotation.

        Needs ``SecretsClient(..., cache=True)``.
        """
        if self._cache is None:
            raise ValueError("export_to_environ needs SecretsClient(cache=True)")
        for name in names:
            await self.get(name)
        self._cache.export(list(names))

    async def report_versions(self, versions: dict[str, int]) -> None:
        """Tell the server which version of each secret this process uses."""
        request = pb.ReportVersionsRequest(
            consumer_id=self.consumer_id,
            versions=versions,
        )
        await self._call(self._stub.ReportVersions, request)

    def _follow_rotations(self) -> None:
        assert self._cache is not None
        if self._cache.follower is None:
            self._cache.follower = asyncio.create_task(
                self._follow(), name="secretsvc-client-cache"
            )

    async def _follow(self) -> None:
        """Feed rotation events to the cache; note when the server is away."""
        assert self._cache is not None
        cursor, delay = 0, RECONNECT_FIRST_DELAY
        while not self._closed:
            request = pb.WatchRotationsRequest(since_event_id=cursor)
            call = self._stub.WatchRotations(request, metadata=self._metadata)
            try:
                await call.wait_for_connection()
                self._cache.connection_back()
                await self._cache.catch_up()
                async for message in call:
                    event = RotationEvent.from_proto(message)
                    cursor, delay = event.event_id, RECONNECT_FIRST_DELAY
                    await self._cache.apply(event)
            except grpc.aio.AioRpcError as error:
                if error.code() is grpc.StatusCode.PERMISSION_DENIED:
                    logger.warning(
                        "the cache cannot follow rotations: this caller may not "
                        "watch; every get asks the server instead"
                    )
                    self._cache.following = False
                    return
                logger.debug("cache follower: %s", error.code().name)
            finally:
                call.cancel()
            if self._closed:
                return
            self._cache.connection_lost()
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX_DELAY)

    async def _fetch(
        self, name: str, stage: str | None, version: int | None = None
    ) -> Secret:
        """Read from the server, whatever the cache holds."""
        stage_value = _STAGE_VALUES.get((stage or "").upper(), -1) if stage else 0
        if stage_value < 0:
            raise InvalidArgumentError(
                "stage must be CURRENT or PREVIOUS", code="INVALID_ARGUMENT"
            )
        try:
            request = pb.GetSecretRequest(
                name=name,
                version=version or 0,
                stage=stage_value,  # type: ignore[arg-type]
            )
        except ValueError:
            raise InvalidArgumentError(
                f"version {version} is out of range", code="INVALID_ARGUMENT"
            ) from None
        reply = await self._call(self._stub.GetSecret, request)
        return Secret.from_proto(reply)

    async def get_or_default(
        self, name: str, default: str, *, from_environ: bool = False
    ) -> str:
        """Return the current value of a secret, or a fallback if it has none.

        With ``from_environ``, the fallback is the environment variable of the
        same name when it is set, and ``default`` otherwise.
        """
        try:
            secret = await self.get(name)
        except NotFoundError:
            if from_environ:
                return os.environ.get(name, default)
            return default
        return secret.value

    async def rotate(
        self, name: str, *, expected_version: int | None = None
    ) -> VersionInfo:
        """Replace a secret's current version; return the new one's metadata.

        With ``expected_version``, only if that is still the current version
        (otherwise :class:`ConflictError`).
        """
        request = pb.RotateSecretRequest(name=name, expected_version=expected_version)
        reply = await self._call(self._stub.RotateSecret, request)
        return VersionInfo.from_proto(reply.version)

    async def put(
        self, name: str, value: str, *, expected_version: int | None = None
    ) -> VersionInfo:
        """Write a new current version of an operator-written secret.

        With ``expected_version`` (0 for a secret with no version yet), only
        if that is still the current version (otherwise :class:`ConflictError`).
        """
        try:
            request = pb.PutSecretRequest(
                name=name, value=value, expected_version=expected_version
            )
        except (ValueError, UnicodeError):
            # Not echoed: the message of the encoding error would quote it.
            raise InvalidArgumentError(
                f"the value for '{name}' is not valid text or the expected "
                "version is out of range",
                code="INVALID_ARGUMENT",
            ) from None
        reply = await self._call(self._stub.PutSecret, request)
        return VersionInfo.from_proto(reply.version)

    async def versions(self, name: str) -> list[VersionInfo]:
        """Describe every version of a secret, newest first; never a value."""
        request = pb.ListVersionsRequest(name=name)
        reply = await self._call(self._stub.ListVersions, request)
        return [VersionInfo.from_proto(v) for v in reply.versions]

    async def rollback(self, name: str, version: int) -> VersionInfo:
        """Make a kept earlier version's value current again, as a new version."""
        request = pb.RollbackSecretRequest(name=name, version=version)
        reply = await self._call(self._stub.RollbackSecret, request)
        return VersionInfo.from_proto(reply.version)

    async def list(self) -> list[SecretInfo]:
        """Describe every secret, without values."""
        reply = await self._call(self._stub.ListSecrets, pb.ListSecretsRequest())
        return [SecretInfo.from_proto(info) for info in reply.secrets]

    async def audit(
        self,
        *,
        name: str | None = None,
        caller: str | None = None,
        action: str | None = None,
        outcome: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        page_size: int = 0,
        page_token: str = "",
    ) -> AuditPage:
        """Return one page of the audit trail, newest first; needs ``admin``.

        Pass the page's ``next_page_token`` back for the next page.
        """
        request = pb.ListAuditEventsRequest(
            name=name or "",
            caller=caller or "",
            action=action or "",
            outcome=outcome or "",
            since=_timestamp(since),
            until=_timestamp(until),
            page_size=page_size,
            page_token=page_token,
        )
        reply = await self._call(self._stub.ListAuditEvents, request)
        return AuditPage.from_proto(reply)

    async def watch(
        self,
        since_event_id: int = 0,
        names: Sequence[str] | None = None,
    ) -> AsyncGenerator[RotationEvent]:
        """Yield rotation events after ``since_event_id``, then new ones, forever.

        When the stream breaks, or the server ends it on shutdown, the
        iterator reconnects and resumes after the last event it yielded, so
        no event is missed or repeated. With the cache, an event is yielded
        once the cache holds the version it announces. Stop by breaking out
        of the loop.
        """
        if not 0 <= since_event_id <= MAX_EVENT_ID:
            raise InvalidArgumentError(
                f"since_event_id must be from 0 to {MAX_EVENT_ID}",
                code="INVALID_ARGUMENT",
            )
        cursor = since_event_id
        delay = RECONNECT_FIRST_DELAY
        while True:
            request = pb.WatchRotationsRequest(since_event_id=cursor, names=names)
            # A stream waits for the server to come back rather than spin.
            call = self._stub.WatchRotations(
                request, metadata=self._metadata, wait_for_ready=True
            )
            try:
                async for message in call:
                    event = RotationEvent.from_proto(message)
                    cursor = event.event_id
                    delay = RECONNECT_FIRST_DELAY
                    if self._cache is not None:
                        # A get() right after the event returns what it announced.
                        await self._cache.apply(event)
                    yield event
            except asyncio.CancelledError:
                # The channel was closed under the stream: the watch is over.
                if self._closed:
                    return
                raise
            except grpc.aio.AioRpcError as error:
                if self._closed:
                    return
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

            if self._closed:
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX_DELAY)

    async def _call(self, method: Any, request: Any) -> Any:
        try:
            return await method(
                request,
                timeout=self.timeout,
                metadata=self._metadata,
                wait_for_ready=self.wait_for_ready,
            )
        except grpc.aio.AioRpcError as error:
            raise from_rpc_error(error) from None
