"""Tell replicas about new rotation events with PostgreSQL's LISTEN/NOTIFY."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import asyncpg
from sqlalchemy.engine import URL
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    wait_exponential,
    wait_random,
)

logger = logging.getLogger(__name__)

CHANNEL = "secretsvc_events"
# Names the listening connection in pg_stat_activity.
APPLICATION_NAME = "secretsvc-listener"
# How often a quiet listening connection is checked, in seconds.
HEARTBEAT_SECONDS = 5.0
CONNECT_TIMEOUT_SECONDS = 5.0

_CONNECTION_ERRORS = (
    OSError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    TimeoutError,
)


class EventListener:
    """Keep one connection LISTENing, and call back on each notification.

    The callback also runs after every (re)connection: a notification sent
    while the connection was down is lost, so the listener's owner reads
    the event log again instead.
    """

    def __init__(self, url: URL, on_change: Callable[[], None]) -> None:
        self._dsn = url.set(drivername="postgresql", query={}).render_as_string(
            hide_password=False
        )
        self._on_change = on_change
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start listening in the background."""
        self._task = asyncio.create_task(self._run(), name="secretsvc-listen")

    async def stop(self) -> None:
        """Stop listening and close the connection."""
        if self._task is None:
            return
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None

    async def _run(self) -> None:
        connect = AsyncRetrying(
            retry=retry_if_exception_type(_CONNECTION_ERRORS),
            wait=wait_exponential(multiplier=0.1, max=5.0) + wait_random(0, 0.1),
            before_sleep=self._log_retry,
        )
        while True:
            connection: Any = await connect(
                asyncpg.connect,
                self._dsn,
                timeout=CONNECT_TIMEOUT_SECONDS,
                server_settings={"application_name": APPLICATION_NAME},
            )
            try:
                await self._listen(connection)
            except _CONNECTION_ERRORS:
                logger.warning("event listener lost its connection; reconnecting")
            finally:
                connection.terminate()

    async def _listen(self, connection: Any) -> None:
        lost = asyncio.Event()
        connection.add_termination_listener(lambda _conn: lost.set())
        await connection.add_listener(CHANNEL, self._notified)
        logger.debug("listening for rotation events on %s", CHANNEL)
        self._on_change()

        while not lost.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(lost.wait(), HEARTBEAT_SECONDS)
            if not lost.is_set():
                # A connection cut without a word is only found by using it.
                await asyncio.wait_for(
                    connection.fetchval("SELECT 1"), HEARTBEAT_SECONDS
                )
        logger.warning("event listener's connection was closed; reconnecting")

    def _notified(self, *_args: object) -> None:
        self._on_change()

    @staticmethod
    def _log_retry(state: Any) -> None:
        logger.warning(
            "event listener cannot reach the store (attempt %d); retrying",
            state.attempt_number,
        )
