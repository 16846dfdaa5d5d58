"""Wake watchers when the rotation-event log grows."""

from __future__ import annotations

import asyncio
import contextlib


class EventHub:
    """Tell watchers that new rotation events may be in the log.

    The hub carries no events, only the news that there are some: the log in
    the store stays the one source of truth, so a watcher that misses a wake-up
    still finds every event on its next read.
    """

    def __init__(self) -> None:
        self._changed = asyncio.Event()
        self.closed = False

    @property
    def changed(self) -> asyncio.Event:
        """The event set at the next publication; take it before reading the log."""
        return self._changed

    def publish(self) -> None:
        """Wake every watcher."""
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def close(self) -> None:
        """Wake every watcher for the last time; watches end."""
        self.closed = True
        self.publish()

    async def wait(self, changed: asyncio.Event, at_most: float) -> None:
        """Wait until ``changed`` is set, or ``at_most`` seconds pass."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(changed.wait(), at_most)
