"""A blocking wrapper of the client, for scripts and synchronous services."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import queue
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from types import TracebackType
from typing import Any, TypeVar

from secretsvc_client.client import (
    DEFAULT_TIMEOUT,
    FRESH_POLL_SECONDS,
    SecretsClient,
    TLSConfig,
)
from secretsvc_client.models import (
    AuditPage,
    InitializeResult,
    RotationEvent,
    Secret,
    SecretInfo,
    VersionInfo,
)

T = TypeVar("T")


class BlockingSecretsClient:
    """The same calls as :class:`SecretsClient`, each blocking until it returns.

    The asyncio client runs on an event loop in a private thread.
    """

    def __init__(
        self,
        target: str,
        *,
        timeout: float | None = DEFAULT_TIMEOUT,
        token: str | None = None,
        tls: TLSConfig | None = None,
        cache: bool = True,
    ) -> None:
        """Start the private loop and open a channel to ``target``."""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="secretsvc-client", daemon=True
        )
        self._thread.start()
        self._client = self._run(self._open(target, timeout, token, tls, cache))

    @staticmethod
    async def _open(
        target: str,
        call_timeout: float | None,
        token: str | None,
        tls: TLSConfig | None,
        cache: bool,
    ) -> SecretsClient:
        # The channel must be made on the loop that will drive it.
        return SecretsClient(
            target, timeout=call_timeout, token=token, tls=tls, cache=cache
        )

    def __enter__(self) -> BlockingSecretsClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the channel and stop the private loop."""
        if not self._loop.is_running():
            return
        self._run(self._client.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def initialize(self, user_id: str) -> InitializeResult:
        """Report a login of ``user_id``; the first one makes it master."""
        return self._run(self._client.initialize(user_id))

    def get(
        self, name: str, version: int | None = None, *, stage: str | None = None
    ) -> Secret:
        """Read a secret: its current version, the version given, or the stage."""
        return self._run(self._client.get(name, version, stage=stage))

    def refresh(self, name: str) -> Secret:
        """Read a secret's current version from the server, past the cache."""
        return self._run(self._client.refresh(name))

    def with_fresh_secret(
        self,
        name: str,
        use: Callable[[str], T],
        *,
        retry_on: tuple[type[BaseException], ...],
        wait: float = 10.0,
    ) -> T:
        """Call ``use`` with the secret's value, and again with a fresher one if stale.

        As :meth:`SecretsClient.with_fresh_secret`, for a blocking ``use`` such
        as ``psycopg.connect``.
        """
        secret = self.get(name)
        deadline = time.monotonic() + wait
        while True:
            try:
                return use(secret.value)
            except retry_on:
                while True:
                    fresh = self.refresh(name)
                    if fresh.version != secret.version:
                        break
                    if time.monotonic() >= deadline:
                        raise
                    time.sleep(FRESH_POLL_SECONDS)
                secret = fresh

    def get_or_default(self, name: str, default: str) -> str:
        """Return the current value of a secret, or ``default`` if it has none."""
        return self._run(self._client.get_or_default(name, default))

    def rotate(self, name: str, *, expected_version: int | None = None) -> VersionInfo:
        """Replace a secret's current version; return the new one's metadata."""
        return self._run(self._client.rotate(name, expected_version=expected_version))

    def put(
        self, name: str, value: str, *, expected_version: int | None = None
    ) -> VersionInfo:
        """Write a new current version of an operator-written secret."""
        return self._run(
            self._client.put(name, value, expected_version=expected_version)
        )

    def versions(self, name: str) -> list[VersionInfo]:
        """Describe every version of a secret, newest first."""
        return self._run(self._client.versions(name))

    def rollback(self, name: str, version: int) -> VersionInfo:
        """Make a kept earlier version's value current again."""
        return self._run(self._client.rollback(name, version))

    def list(self) -> list[SecretInfo]:
        """Describe every secret, without values."""
        return self._run(self._client.list())

    def audit(self, **filters: Any) -> AuditPage:
        """Return one page of the audit trail, as :meth:`SecretsClient.audit`."""
        return self._run(self._client.audit(**filters))

    def watch(
        self, since_event_id: int = 0, names: Sequence[str] | None = None
    ) -> Iterator[RotationEvent]:
        """Yield rotation events as :meth:`SecretsClient.watch` does.

        The stream lives on the private loop and hands events over through a
        queue, so an interrupt (Ctrl-C) between events leaves nothing behind.
        """
        events: queue.Queue[RotationEvent | None] = queue.Queue()

        async def pump() -> None:
            stream = self._client.watch(since_event_id, names)
            async with contextlib.aclosing(stream):
                async for event in stream:
                    events.put(event)

        future = self._submit(pump())
        future.add_done_callback(lambda _done: events.put(None))
        try:
            while (event := events.get()) is not None:
                yield event
            future.result()
        finally:
            future.cancel()
            concurrent.futures.wait([future], timeout=5)

    def _run(self, awaitable: Awaitable[T]) -> T:
        return self._submit(awaitable).result()

    def _submit(self, awaitable: Awaitable[T]) -> concurrent.futures.Future[T]:
        async def wrapped() -> T:
            return await awaitable

        return asyncio.run_coroutine_threadsafe(wrapped(), self._loop)
