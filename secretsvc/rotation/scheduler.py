"""The rotation loop: rotate every secret that falls due, on a fixed period."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable

from secretsvc.access import Caller
from secretsvc.catalog import Source
from secretsvc.errors import RotationInProgress, StoreUnavailable, TargetRefused
from secretsvc.service import Clock, SecretManager, VersionMeta, utc_now

logger = logging.getLogger(__name__)

SCHEDULER = Caller.system("scheduler")
# After failed ticks the loop waits longer each time, up to this many seconds
# (or the period, if that is longer).
MAX_BACKOFF_SECONDS = 60.0
_WAIT_FOR_OPERATORS = (Source.IMPORTED, Source.WRITTEN)


class RotationScheduler:
    """Own the background task that rotates due secrets every ``period`` seconds."""

    def __init__(
        self, manager: SecretManager, *, period: float, clock: Clock = utc_now
    ) -> None:
        """Prepare the loop; :meth:`start` runs it."""
        if period <= 0:
            raise ValueError("rotation period must be positive")
        self._manager = manager
        self.period = period
        self._clock = clock
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # Rotations that wait on a target run beside the loop, one per secret,
        # so a slow or failing target delays no other secret.
        self._on_target: dict[str, asyncio.Task[VersionMeta | None]] = {}

    def start(self) -> None:
        """Start the loop; the first tick runs at once."""
        self._stop.clear()
        self._task = asyncio.create_task(self._run(), name="secretsvc-rotation")
        logger.info("rotation loop started, every %gs", self.period)

    async def stop(self) -> None:
        """Stop the loop, letting a rotation in progress finish."""
        self._stop.set()
        if self._task is not None:
            await self._task
            self._task = None
        # Cut short, a rotation keeps its pending version; the next start (or
        # another replica) finishes it once this process's hold runs out.
        for task in self._on_target.values():
            task.cancel()
        await asyncio.gather(*self._on_target.values(), return_exceptions=True)
        self._on_target.clear()
        logger.info("rotation loop stopped")

    async def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            delay = self.period
            try:
                await self.tick()
            except Exception as error:
                failures += 1
                delay = self._backoff(failures)
                if isinstance(error, StoreUnavailable):
                    logger.warning(
                        "rotation tick failed: %s; retrying in %gs", error, delay
                    )
                else:
                    logger.exception("rotation tick failed; retrying in %gs", delay)
            else:
                if failures:
                    logger.info("rotation loop recovered after %d failures", failures)
                failures = 0
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)

    def _backoff(self, failures: int) -> float:
        ceiling = max(self.period, MAX_BACKOFF_SECONDS)
        return float(min(self.period * 2**failures, ceiling))

    async def tick(self) -> list[str]:
        """Rotate what is due now; return the names rotated.

        A secret that fails is logged and tried again on the next tick; the
        others are rotated all the same.
        """
        now = self._clock()
        rotated = []
        # First the rotations a crash, a restart or a refusing target left
        # pending: a due secret that has one is not begun again.
        for name in await self._manager.pending_to_resume():
            self._beside(
                name, functools.partial(self._manager.resume, name, caller=SCHEDULER)
            )
        for name in await self._manager.due(now):
            if self._stop.is_set():
                break
            policy = self._manager.policy(name)
            if policy is not None and policy.source in (
                Source.IMPORTED,
                Source.WRITTEN,
            ):
                # The service cannot make these values: tell the operators.
                await self._manager.announce_due(name, caller=SCHEDULER)
                continue
            if self._manager.touches_target(name):
                due = functools.partial(
                    self._manager.rotate_if_due, name, caller=SCHEDULER
                )
                self._beside(name, due)
                continue
            try:
                meta = await self._manager.rotate_if_due(name, caller=SCHEDULER)
            except StoreUnavailable:
                # No other secret will fare better: end the tick.
                raise
            except Exception:
                logger.exception("scheduled rotation of %s failed", name)
                continue
            if meta is not None:
                rotated.append(name)

        return rotated

    def _beside(
        self, name: str, rotation: Callable[[], Awaitable[VersionMeta | None]]
    ) -> None:
        """Run a rotation that waits on a target as its own task, once at a time."""
        running = self._on_target.get(name)
        if running is not None and not running.done():
            return

        async def run() -> VersionMeta | None:
            try:
                return await rotation()
            except (TargetRefused, RotationInProgress) as error:
                # Logged where it happened, with the next attempt's time.
                logger.debug("rotation of %s: %s", name, error)
            except StoreUnavailable as error:
                logger.warning("rotation of %s paused: %s", name, error)
            except Exception:
                logger.exception("rotation of %s failed", name)
            return None

        self._on_target[name] = asyncio.create_task(
            run(), name=f"secretsvc-rotate-{name}"
        )
