"""The audit trail: who did what to which secret, and how it ended."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from datetime import datetime

from secretsvc.errors import StoreUnavailable
from secretsvc.model import AuditRecord
from secretsvc.store import Store

logger = logging.getLogger(__name__)

# While the store is down, records wait in memory up to this many; beyond it
# the oldest are dropped, with an error in the log, so memory stays bounded.
MAX_PENDING = 100_000


class AuditTrail:
    """Buffer audit records of reads and refusals, and write them in batches.

    Reads are served from memory; writing their records in batches keeps a
    database round trip off each read. Rotations and initialization write
    their records in their own transactions instead.
    """

    def __init__(
        self,
        store: Store,
        clock: Callable[[], datetime],
        *,
        flush_interval: float = 0.5,
        max_batch: int = 500,
    ) -> None:
        self._store = store
        self._clock = clock
        self._flush_interval = flush_interval
        self._max_batch = max_batch
        self._pending: deque[AuditRecord] = deque(maxlen=MAX_PENDING)
        self._dropped = 0
        self._wake = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None

    def make(
        self,
        actor: str,
        action: str,
        outcome: str,
        name: str | None = None,
        version: int | None = None,
        detail: str | None = None,
    ) -> AuditRecord:
        """Return a record stamped now, for a transaction to write itself."""
        return AuditRecord(
            at=self._clock(),
            actor=actor,
            action=action,
            outcome=outcome,
            name=name,
            version=version,
            detail=detail,
        )

    def record(
        self,
        actor: str,
        action: str,
        outcome: str,
        name: str | None = None,
        version: int | None = None,
        detail: str | None = None,
    ) -> AuditRecord:
        """Queue one record; it reaches the store within the flush interval."""
        record = self.make(actor, action, outcome, name, version, detail)
        if len(self._pending) == MAX_PENDING:
            # The deque drops its oldest record to take this one.
            self._dropped += 1
            if self._dropped == 1:
                logger.error(
                    "audit records are being dropped: %d wait for the store",
                    MAX_PENDING,
                )
        self._pending.append(record)
        if len(self._pending) >= self._max_batch:
            self._wake.set()

        return record

    def start(self) -> None:
        """Start writing queued records in the background."""
        self._task = asyncio.create_task(self._run(), name="secretsvc-audit")

    async def stop(self) -> None:
        """Stop the background writer, after writing what is queued."""
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            await self._task
        try:
            await self.flush()
        except StoreUnavailable:
            logger.error(
                "%d audit records were not written: the store cannot be reached",
                len(self._pending),
            )

    async def flush(self) -> None:
        """Write every queued record now."""
        batch = list(self._pending)
        self._pending.clear()
        if not batch:
            return
        if self._dropped:
            logger.error("%d audit records were dropped in all", self._dropped)
            self._dropped = 0
        try:
            async with self._store.write() as tx:
                await tx.append_audit(batch)
        except StoreUnavailable:
            # Keep the records for the next flush rather than lose them.
            self._pending.extendleft(reversed(batch))
            raise
        except Exception:
            # One bad record must not hold back the rest forever.
            await self._write_one_by_one(batch)

    async def _write_one_by_one(self, batch: list[AuditRecord]) -> None:
        for record in batch:
            try:
                async with self._store.write() as tx:
                    await tx.append_audit([record])
            except StoreUnavailable:
                self._pending.append(record)
            except Exception:
                logger.exception(
                    "audit record of %s %s could not be written; dropped",
                    record.action,
                    record.name,
                )

    async def _run(self) -> None:
        while not self._stopping:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._flush_interval)
            self._wake.clear()
            try:
                await self.flush()
            except Exception:
                logger.warning(
                    "audit records not written yet (%d queued); retrying",
                    len(self._pending),
                    exc_info=True,
                )
