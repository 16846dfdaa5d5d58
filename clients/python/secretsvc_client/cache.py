"""The client's memory of what it read, kept current by WatchRotations."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from secretsvc_client.errors import (
    FailedPreconditionError,
    NotFoundError,
    SecretsError,
    UnavailableError,
)
from secretsvc_client.models import RotationEvent, Secret

logger = logging.getLogger(__name__)

Fetch = Callable[[str, str], Awaitable[Secret]]
Report = Callable[[dict[str, int]], Awaitable[None]]
# Held versions are reported again this often, so the server can tell live
# consumers from gone ones.
REPORT_EVERY_SECONDS = 60.0


class SecretCache:
    """Hold current (and previous) versions; refresh them on rotation events.

    A failed refresh keeps what is held. While the server cannot be reached,
    held values are served for ``stale_if_error`` seconds, then refused.
    """

    def __init__(
        self,
        fetch: Fetch,
        *,
        report: Report | None = None,
        stale_if_error: float,
        monotonic: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._fetch = fetch
        self._report = report
        self._reporter: asyncio.Task[None] | None = None
        self.stale_if_error = stale_if_error
        self._monotonic = monotonic
        self._now = now
        self._current: dict[str, Secret] = {}
        self._previous: dict[str, Secret | None] = {}
        self._exported: set[str] = set()
        # Names whose announced version could not be fetched yet.
        self._behind: set[str] = set()
        self._unreachable_since: float | None = None
        self.follower: asyncio.Task[None] | None = None
        # False once the server refuses to stream rotations to this caller:
        # then every read asks the server.
        self.following = True

    # -- reads -----------------------------------------------------------------

    async def current(self, name: str) -> Secret:
        """Return the held current version, reading it the first time."""
        held = self._current.get(name)
        if held is None or not self.following:
            held = await self._fetch(name, "CURRENT")
            self._current[name] = held
            await self.report()
            return held
        if name in self._behind:
            # A rotation was announced but its version not fetched: try now.
            with contextlib.suppress(SecretsError):
                return await self.refresh(name)
        try:
            self._check_fresh(name)
        except UnavailableError as stale:
            # Past the window: ask the server itself before refusing, as it
            # may be back before the follower reconnects.
            try:
                held = await self._fetch(name, "CURRENT")
            except SecretsError:
                raise stale from None
            self._current[name] = held
            self.connection_back()
        return held

    async def verifying(self, name: str) -> list[Secret]:
        """Return the current version and the previous one while its grace lasts."""
        current = await self.current(name)
        if name not in self._previous:
            self._previous[name] = await self._fetch_previous(name)
        previous = self._previous[name]
        expires_at = previous.expires_at if previous is not None else None
        if expires_at is not None and expires_at <= self._now():
            self._previous[name] = previous = None
        return [current] if previous is None else [current, previous]

    async def _fetch_previous(self, name: str) -> Secret | None:
        try:
            return await self._fetch(name, "PREVIOUS")
        except (NotFoundError, FailedPreconditionError):
            return None

    def _check_fresh(self, name: str) -> None:
        since = self._unreachable_since
        if since is None:
            return
        down_for = self._monotonic() - since
        if down_for > self.stale_if_error:
            raise UnavailableError(
                f"the server has been unreachable for {down_for:.0f}s; the held "
                f"value of '{name}' is past its stale-if-error window of "
                f"{self.stale_if_error:g}s",
                code="UNAVAILABLE",
            )

    # -- keeping current -------------------------------------------------------

    def export(self, names: list[str]) -> None:
        """Keep these secrets' current values in os.environ."""
        self._exported.update(names)
        for name in names:
            os.environ[name] = self._current[name].value

    def connection_lost(self) -> None:
        """Note that the server cannot be reached (from the watch stream)."""
        if self._unreachable_since is None:
            self._unreachable_since = self._monotonic()

    def connection_back(self) -> None:
        """Note that the server answers again."""
        self._unreachable_since = None

    async def refresh(self, name: str) -> Secret:
        """Read the current version from the server; hold it if it is newer."""
        fresh = await self._fetch(name, "CURRENT")
        held = self._current.get(name)
        if held is None or fresh.version > held.version:
            self._current[name] = fresh
            self._previous[name] = await self._fetch_previous(name)
            if name in self._exported:
                os.environ[name] = fresh.value
        self._behind.discard(name)
        return fresh

    async def catch_up(self) -> None:
        """Fetch the versions announced while a refresh failed."""
        for name in sorted(self._behind):
            try:
                await self.refresh(name)
            except SecretsError as error:
                logger.warning(
                    "%s is still behind its latest version: refresh failed (%s)",
                    name,
                    error.code,
                )

    async def apply(self, event: RotationEvent) -> None:
        """Refresh what an event changed; keep the held values on failure."""
        held = self._current.get(event.name)
        if held is None or event.new_version <= held.version:
            return
        try:
            fresh = await self._fetch(event.name, "CURRENT")
            previous = await self._fetch_previous(event.name)
        except SecretsError as error:
            # Fetched again at the next read of it, or when the follower
            # reconnects: the stream will not announce this version again.
            self._behind.add(event.name)
            logger.warning(
                "kept version %d of %s: refresh failed (%s); retrying",
                held.version,
                event.name,
                error.code,
            )
            return
        self._behind.discard(event.name)
        self._current[event.name] = fresh
        self._previous[event.name] = previous
        if event.name in self._exported:
            os.environ[event.name] = fresh.value
        await self.report()

    async def report(self) -> None:
        """Tell the server which versions are held; a failure only logs."""
        if self._report is None:
            return
        if self._reporter is None:
            self._reporter = asyncio.create_task(self._report_periodically())
        versions = {name: s.version for name, s in self._current.items()}
        try:
            await self._report(versions)
        except SecretsError as error:
            logger.debug("version report failed: %s", error.code)

    async def _report_periodically(self) -> None:
        while True:
            await asyncio.sleep(REPORT_EVERY_SECONDS)
            await self.report()

    async def stop(self) -> None:
        """Stop following rotation events."""
        for task in (self.follower, self._reporter):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
