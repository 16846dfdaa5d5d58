"""The async repository: every read and write of the store goes through here."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from secretsvc.errors import StartupError, StoreConflict, StoreUnavailable
from secretsvc.model import (
    AuditQuery,
    AuditRecord,
    MasterUser,
    NewVersion,
    PendingVersion,
    Reason,
    ResealCandidate,
    RotationEventRecord,
    SecretRecord,
    Stage,
    StoreMeta,
    TokenRecord,
    VersionRecord,
)
from secretsvc.store import tables as t
from secretsvc.store.notify import CHANNEL, CONNECT_TIMEOUT_SECONDS, EventListener

logger = logging.getLogger(__name__)

T = TypeVar("T")

SQLITE_BUSY_TIMEOUT_S = 5.0
_IMMEDIATE = "secretsvc_immediate"
# Any constant will do: it names the lock that serializes event ids.
_EVENT_LOCK_ID = 0x5EC7E75


# What a lost, refused or timed-out connection raises, wrapped or not.
_UNREACHABLE = (
    sa.exc.OperationalError,
    sa.exc.InterfaceError,
    OSError,
    TimeoutError,
)


def redact_url(url: str) -> str:
    """Return the database URL with its password hidden, for logs."""
    return make_url(url).render_as_string(hide_password=True)


class Store:
    """The secrets database: SQLite embedded, or PostgreSQL."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        self._listener: EventListener | None = None
        # SQLite takes one writer at a time; queueing writers here instead of
        # on the file lock spares them the busy-wait.
        self._write_lock = asyncio.Lock() if self.dialect == "sqlite" else None

    @classmethod
    def open(cls, url: str) -> Store:
        """Create the engine for ``url``; the file's folder is made for SQLite."""
        try:
            parsed = make_url(url)
            if parsed.get_backend_name() not in ("sqlite", "postgresql"):
                raise sa.exc.ArgumentError(parsed.get_backend_name())
        except sa.exc.ArgumentError:
            # Not echoed: a malformed URL may still hold a password.
            raise StartupError(
                "the database URL is not a sqlite+aiosqlite:// or "
                "postgresql+asyncpg:// URL"
            ) from None
        options: dict[str, Any] = {}
        if parsed.get_backend_name() == "sqlite":
            database = parsed.database
            if database and database != ":memory:":
                Path(database).parent.mkdir(parents=True, exist_ok=True)
            options["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT_S}
        else:
            # After an outage, pooled connections are dead: test each on checkout.
            options["pool_pre_ping"] = True
            options["connect_args"] = {"timeout": CONNECT_TIMEOUT_SECONDS}
        try:
            engine = create_async_engine(parsed, **options)
        except (sa.exc.ArgumentError, ImportError) as error:
            raise StartupError(
                f"the database URL {redact_url(url)} cannot be used: {error}"
            ) from None
        if engine.dialect.name == "sqlite":
            _configure_sqlite(engine)

        return cls(engine)

    @classmethod
    async def open_existing(cls, url: str) -> Store:
        """Open a store that a server, or ``secretsvc migrate``, has made.

        Nothing is created: a command pointed at the wrong place says so
        instead of starting a second, empty store.

        Raises:
            StartupError: there is no secretsvc store at ``url``.
        """
        missing = StartupError(
            f"there is no secretsvc store at {redact_url(url)}: point "
            "SECRETSVC_DATABASE_URL (or --database-url) at the server's store, "
            "or create it first by starting the server or with 'secretsvc migrate'"
        )
        try:
            parsed = make_url(url)
        except (sa.exc.ArgumentError, ValueError):
            parsed = None  # Store.open says what is wrong with it
        sqlite = parsed is not None and parsed.get_backend_name() == "sqlite"
        database = parsed.database if parsed is not None and sqlite else None
        on_file = database not in (None, "", ":memory:")
        if on_file and not await asyncio.to_thread(Path(str(database)).exists):
            raise missing
        store = cls.open(url)
        try:
            if not await store.has_schema():
                raise missing
        except BaseException:
            await store.close()
            raise
        return store

    def listen(self, on_change: Callable[[], None]) -> None:
        """Call ``on_change`` whenever another process may have added events.

        On PostgreSQL this is LISTEN/NOTIFY; SQLite has no such thing, and its
        readers poll the log instead.
        """
        if self.dialect == "postgresql":
            self._listener = EventListener(self.engine.url, on_change)
            self._listener.start()

    async def close(self) -> None:
        """Stop listening and close every pooled connection."""
        if self._listener is not None:
            await self._listener.stop()
        await self.engine.dispose()

    @asynccontextmanager
    async def read(self) -> AsyncIterator[StoreTransaction]:
        """Run reads in one transaction."""
        async with self._connect() as conn, conn.begin():
            yield StoreTransaction(conn)

    @asynccontextmanager
    async def write(self) -> AsyncIterator[StoreTransaction]:
        """Run reads and writes in one transaction, committed on exit."""
        if self._write_lock is None:
            async with self._connect() as conn, conn.begin():
                yield StoreTransaction(conn)
            return
        async with self._write_lock, self._connect() as conn:
            conn = await conn.execution_options(**{_IMMEDIATE: True})
            async with conn.begin():
                yield StoreTransaction(conn)

    @asynccontextmanager
    async def _connect(self) -> AsyncIterator[AsyncConnection]:
        try:
            async with self.engine.connect() as conn:
                yield conn
        except _UNREACHABLE as error:
            raise StoreUnavailable("the store cannot be reached") from error
        except sa.exc.IntegrityError as error:
            # The driver's message quotes the row; the caller names the thing.
            raise StoreConflict("a unique row exists already") from error
        except sa.exc.DBAPIError as error:
            if not error.connection_invalidated:
                raise
            raise StoreUnavailable("the store cannot be reached") from error

    async def has_schema(self) -> bool:
        """Tell whether the store's tables exist yet."""
        async with self._connect() as conn:
            return await conn.run_sync(
                lambda sync: sa.inspect(sync).has_table("store_meta")
            )


def _configure_sqlite(engine: AsyncEngine) -> None:
    """Take transactions in hand: WAL, and BEGIN IMMEDIATE for writers."""

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the driver, decide when a transaction begins.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: sa.Connection) -> None:
        # A writer takes the write lock up front: a deferred transaction that
        # upgrades later can fail at once instead of waiting its turn.
        immediate = conn.get_execution_options().get(_IMMEDIATE, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def _secret_from_row(row: Any) -> SecretRecord:
    return SecretRecord(
        name=row.name,
        min_length=row.min_length,
        rotation_interval_days=row.rotation_interval_days,
        last_rotated_at=row.last_rotated_at,
        next_rotation_due=row.next_rotation_due,
        created_by=row.created_by,
        created_at=row.created_at,
    )


def _version_from_row(row: Any) -> VersionRecord:
    return VersionRecord(
        version=row.version,
        stage=Stage(row.stage),
        sealed_value=row.sealed_value,
        key_term=row.key_term,
        reason=Reason(row.reason),
        created_at=row.created_at,
        created_by=row.created_by,
    )


def _event_from_row(row: Any) -> RotationEventRecord:
    return RotationEventRecord(
        event_id=row.id,
        name=row.secret_name,
        old_version=row.old_version,
        new_version=row.new_version,
        reason=Reason(row.reason),
        created_at=row.created_at,
    )


class StoreTransaction:
    """The store's operations, all inside one open transaction."""

    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn
        self._dialect = conn.dialect.name

    async def run_sync(self, fn: Callable[[sa.Connection], T]) -> T:
        """Run a function of a synchronous connection, such as a migration."""
        return await self._conn.run_sync(fn)

    async def _insert_ignoring_conflict(
        self, table: sa.Table, values: dict[str, Any]
    ) -> None:
        insert: Any
        if self._dialect == "postgresql":
            insert = postgresql.insert(table)
        else:
            insert = sqlite.insert(table)
        await self._conn.execute(insert.values(**values).on_conflict_do_nothing())

    # -- root key and keyring -------------------------------------------------

    async def meta(self, *, lock: bool = False) -> StoreMeta | None:
        """Return the root key's salt and verifier, or None on a new store.

        With ``lock``, hold the row to the end of the transaction: a rekey and
        a new keyring term must not interleave.
        """
        query = sa.select(t.store_meta.c.key_salt, t.store_meta.c.key_verifier)
        if lock:
            query = query.with_for_update()
        row = (await self._conn.execute(query)).one_or_none()
        return None if row is None else StoreMeta(row.key_salt, row.key_verifier)

    async def claim_meta(self, meta: StoreMeta, at: datetime) -> StoreMeta:
        """Write ``meta`` unless the store has one; return what is stored."""
        values = {
            "id": 1,
            "key_salt": meta.key_salt,
            "key_verifier": meta.key_verifier,
            "created_at": at,
        }
        await self._insert_ignoring_conflict(t.store_meta, values)
        stored = await self.meta()
        assert stored is not None

        return stored

    async def replace_meta(self, meta: StoreMeta) -> None:
        """Store a new root-key salt and verifier."""
        m = t.store_meta
        await self._conn.execute(
            sa.update(m)
            .where(m.c.id == 1)
            .values(key_salt=meta.key_salt, key_verifier=meta.key_verifier)
        )

    async def replace_key_term(self, term: int, wrapped_key: bytes) -> None:
        """Store a keyring term's data key wrapped anew."""
        k = t.keyring
        await self._conn.execute(
            sa.update(k).where(k.c.term == term).values(wrapped_key=wrapped_key)
        )

    async def set_encrypted_value(self, name: str, value: bytes) -> None:
        """Set a secret row's encrypted_value column."""
        s = t.application_secrets
        await self._conn.execute(
            sa.update(s).where(s.c.name == name).values(encrypted_value=value)
        )

    async def key_terms(self) -> list[tuple[int, bytes]]:
        """Return every keyring term with its wrapped data key."""
        query = sa.select(t.keyring.c.term, t.keyring.c.wrapped_key).order_by(
            t.keyring.c.term
        )
        return [(row.term, row.wrapped_key) for row in await self._conn.execute(query)]

    async def last_key_term(self) -> int:
        """Return the newest keyring term, 0 when the ring is empty."""
        query = sa.select(sa.func.max(t.keyring.c.term))
        return (await self._conn.execute(query)).scalar_one() or 0

    async def add_key_term(self, term: int, wrapped_key: bytes, at: datetime) -> None:
        """Add a data key to the keyring."""
        values = {"term": term, "wrapped_key": wrapped_key, "created_at": at}
        await self._conn.execute(sa.insert(t.keyring).values(**values))

    # -- master user ----------------------------------------------------------

    async def master_user(self, *, lock: bool = False) -> MasterUser | None:
        """Return the master user, or None before the first login.

        With ``lock``, hold the row until the transaction ends, so that
        initializations run one at a time.
        """
        query = sa.select(t.master_user.c.user_id, t.master_user.c.created_at)
        if lock:
            query = query.with_for_update()
        row = (await self._conn.execute(query)).one_or_none()
        return None if row is None else MasterUser(row.user_id, row.created_at)

    async def claim_master(self, user_id: str, at: datetime) -> MasterUser:
        """Make ``user_id`` master unless someone is; return who is."""
        values = {"id": 1, "user_id": user_id, "created_at": at}
        await self._insert_ignoring_conflict(t.master_user, values)
        master = await self.master_user(lock=True)
        assert master is not None

        return master

    # -- secrets and versions -------------------------------------------------

    async def secrets(self, names: Sequence[str] | None = None) -> list[SecretRecord]:
        """Return the active secrets (or those named) with all their versions."""
        s, v = t.application_secrets, t.secret_versions
        query = sa.select(s).where(s.c.is_active).order_by(s.c.name)
        if names is not None:
            query = query.where(s.c.name.in_(names))
        rows = (await self._conn.execute(query)).all()
        records = {row.id: _secret_from_row(row) for row in rows}
        if not records:
            return []

        versions = sa.select(v).where(v.c.secret_id.in_(records))
        for row in await self._conn.execute(versions):
            records[row.secret_id].versions[row.version] = _version_from_row(row)

        return list(records.values())

    async def secret_names(self) -> set[str]:
        """Return the names of every secret, active or not."""
        query = sa.select(t.application_secrets.c.name)
        return set((await self._conn.execute(query)).scalars())

    async def lock_secret(self, name: str) -> SecretRecord | None:
        """Load one secret and hold its row until the transaction ends."""
        s = t.application_secrets
        query = sa.select(s.c.name).where(s.c.name == name, s.c.is_active)
        # SQLite has no row locks; its writers already run one at a time.
        return await self._locked(query.with_for_update())

    async def claim_due(self, name: str, now: datetime) -> SecretRecord | None:
        """Lock a secret that is due at ``now``, unless another writer holds it.

        Returns None when the secret is not due (any more) or is locked.
        """
        s = t.application_secrets
        query = sa.select(s.c.name).where(
            s.c.name == name, s.c.is_active, s.c.next_rotation_due <= now
        )
        return await self._locked(query.with_for_update(skip_locked=True))

    async def _locked(self, query: sa.Select[Any]) -> SecretRecord | None:
        row = (await self._conn.execute(query)).one_or_none()
        if row is None:
            return None
        found = await self.secrets([row.name])
        return found[0] if found else None

    async def create_secret(
        self,
        first: NewVersion,
        *,
        encrypted_value: bytes,
        min_length: int,
        interval_days: int | None,
    ) -> None:
        """Insert a new secret with its first version, current."""
        values = {
            "name": first.name,
            "encrypted_value": encrypted_value,
            "min_length": min_length,
            "rotation_interval_days": interval_days,
            "last_rotated_at": first.created_at,
            "next_rotation_due": first.next_rotation_due,
            "created_by": first.created_by,
            "is_active": True,
            "created_at": first.created_at,
            "updated_at": first.created_at,
        }
        result = await self._conn.execute(
            sa.insert(t.application_secrets).values(**values)
        )
        assert result.inserted_primary_key is not None
        secret_id = int(result.inserted_primary_key[0])
        await self._insert_version(secret_id, first, Stage.CURRENT)

    async def promote(self, new: NewVersion, *, encrypted_value: bytes) -> None:
        """Make ``new`` current, the current one previous, the previous retired."""
        s, v = t.application_secrets, t.secret_versions
        secret_id = (
            await self._conn.execute(sa.select(s.c.id).where(s.c.name == new.name))
        ).scalar_one()
        for old, demoted in (
            (Stage.PREVIOUS, Stage.RETIRED),
            (Stage.CURRENT, Stage.PREVIOUS),
        ):
            await self._conn.execute(
                sa.update(v)
                .where(v.c.secret_id == secret_id, v.c.stage == old)
                .values(stage=demoted)
            )
        await self._insert_version(secret_id, new, Stage.CURRENT)
        await self._conn.execute(
            sa.update(s)
            .where(s.c.id == secret_id)
            .values(
                encrypted_value=encrypted_value,
                last_rotated_at=new.created_at,
                next_rotation_due=new.next_rotation_due,
                updated_at=new.created_at,
            )
        )

    async def _insert_version(
        self, secret_id: int, new: NewVersion, stage: Stage
    ) -> None:
        values = {
            "secret_id": secret_id,
            "version": new.version,
            "stage": stage.value,
            "sealed_value": new.sealed_value,
            "key_term": new.key_term,
            "reason": new.reason.value,
            "created_at": new.created_at,
            "created_by": new.created_by,
        }
        await self._conn.execute(sa.insert(t.secret_versions).values(**values))

    async def versions_to_reseal(
        self, term: int, after_id: int, limit: int
    ) -> list[ResealCandidate]:
        """Lock up to ``limit`` kept versions sealed under a term older than ``term``.

        Each version is locked with its secret's row, the row every other
        writer locks first, so a re-seal and a rotation never wait on each
        other in a cycle. Versions another writer holds are skipped;
        ``after_id`` pages through.
        """
        s, v = t.application_secrets, t.secret_versions
        query = (
            sa.select(v.c.id, v.c.secret_id, s.c.name, v.c.version, v.c.stage)
            .add_columns(v.c.sealed_value)
            .join(s, s.c.id == v.c.secret_id)
            .where(
                v.c.key_term < term,
                v.c.sealed_value.is_not(None),
                v.c.id > after_id,
            )
            .order_by(v.c.id)
            .limit(limit)
            .with_for_update(skip_locked=True, of=[v, s])
        )
        return [
            ResealCandidate(
                row_id=row.id,
                secret_id=row.secret_id,
                name=row.name,
                version=row.version,
                current=row.stage == Stage.CURRENT.value,
                sealed_value=row.sealed_value,
            )
            for row in await self._conn.execute(query)
        ]

    async def count_to_reseal(self, term: int) -> int:
        """Count the kept versions sealed under a term older than ``term``."""
        v = t.secret_versions
        query = (
            sa.select(sa.func.count())
            .select_from(v)
            .where(v.c.key_term < term, v.c.sealed_value.is_not(None))
        )
        return int((await self._conn.execute(query)).scalar_one())

    async def reseal(
        self, candidate: ResealCandidate, sealed: bytes, term: int
    ) -> None:
        """Replace a version's ciphertext with one sealed under ``term``."""
        s, v = t.application_secrets, t.secret_versions
        await self._conn.execute(
            sa.update(v)
            .where(v.c.id == candidate.row_id)
            .values(sealed_value=sealed, key_term=term)
        )
        if candidate.current:
            await self._conn.execute(
                sa.update(s)
                .where(s.c.id == candidate.secret_id)
                .values(encrypted_value=sealed)
            )

    async def destroy_values_before(self, name: str, version: int) -> int:
        """Destroy the values of a secret's versions older than ``version``.

        Their metadata stays, for the audit trail. Returns how many went.
        """
        s, v = t.application_secrets, t.secret_versions
        secret_id = sa.select(s.c.id).where(s.c.name == name).scalar_subquery()
        result = await self._conn.execute(
            sa.update(v)
            .where(
                v.c.secret_id == secret_id,
                v.c.version < version,
                v.c.sealed_value.is_not(None),
            )
            .values(sealed_value=None)
        )
        return int(result.rowcount or 0)

    async def due_announced(self, name: str) -> bool:
        """Tell whether a ROTATION_DUE event follows the secret's last version."""
        e = t.rotation_events
        last = (
            await self._conn.execute(
                sa.select(e.c.reason)
                .where(e.c.secret_name == name)
                .order_by(e.c.id.desc())
                .limit(1)
            )
        ).scalar_one_or_none()
        return last == Reason.ROTATION_DUE.value

    async def postpone(self, name: str, due: datetime | None) -> None:
        """Set when a secret next falls due, without a new version."""
        s = t.application_secrets
        await self._conn.execute(
            sa.update(s).where(s.c.name == name).values(next_rotation_due=due)
        )

    async def due_secrets(self, now: datetime) -> list[str]:
        """Return the names of active secrets due at ``now``, the most overdue first."""
        s = t.application_secrets
        query = (
            sa.select(s.c.name)
            .where(s.c.is_active, s.c.next_rotation_due <= now)
            .order_by(s.c.next_rotation_due)
        )
        return list((await self._conn.execute(query)).scalars())

    # -- events and audit -----------------------------------------------------

    async def append_event(
        self,
        name: str,
        old_version: int,
        new_version: int,
        reason: Reason,
        at: datetime,
    ) -> RotationEventRecord:
        """Append a rotation event; ids increase in the order of commits."""
        if self._dialect == "postgresql":
            # Sequences hand out ids in call order, not commit order; one
            # appender at a time keeps a reader from skipping a late commit.
            await self._conn.execute(
                sa.select(sa.func.pg_advisory_xact_lock(_EVENT_LOCK_ID))
            )
        values = {
            "secret_name": name,
            "old_version": old_version,
            "new_version": new_version,
            "reason": reason.value,
            "created_at": at,
        }
        result = await self._conn.execute(
            sa.insert(t.rotation_events).values(**values).returning(t.rotation_events)
        )
        event = _event_from_row(result.one())
        if self._dialect == "postgresql":
            # Delivered to the listeners at commit, and only if it commits.
            await self._conn.execute(
                sa.select(sa.func.pg_notify(CHANNEL, str(event.event_id)))
            )

        return event

    async def events_after(
        self,
        event_id: int,
        names: Iterable[str] = (),
        *,
        upto: int | None = None,
        limit: int = 500,
    ) -> list[RotationEventRecord]:
        """Return up to ``limit`` events after ``event_id``, oldest first.

        With ``upto``, no event after that id.
        """
        e = t.rotation_events
        query = sa.select(e).where(e.c.id > event_id).order_by(e.c.id).limit(limit)
        if upto is not None:
            query = query.where(e.c.id <= upto)
        wanted = list(names)
        if wanted:
            query = query.where(e.c.secret_name.in_(wanted))

        return [_event_from_row(row) for row in await self._conn.execute(query)]

    async def last_event_id(self) -> int:
        """Return the newest event id, 0 when the log is empty."""
        query = sa.select(sa.func.max(t.rotation_events.c.id))
        return (await self._conn.execute(query)).scalar_one() or 0

    # -- consumers ------------------------------------------------------------

    async def report_versions(
        self, consumer_id: str, versions: dict[str, int], at: datetime
    ) -> None:
        """Record the version of each secret a consumer says it uses."""
        c = t.consumer_versions
        insert: Any = (
            postgresql.insert(c) if self._dialect == "postgresql" else sqlite.insert(c)
        )
        for name, version in versions.items():
            statement = insert.values(
                consumer_id=consumer_id,
                secret_name=name,
                version=version,
                reported_at=at,
            )
            await self._conn.execute(
                statement.on_conflict_do_update(
                    index_elements=[c.c.consumer_id, c.c.secret_name],
                    set_={"version": version, "reported_at": at},
                )
            )

    async def consumer_counts(self, since: datetime) -> dict[str, dict[int, int]]:
        """Count consumers per secret and version, among reports since ``since``."""
        c = t.consumer_versions
        query = (
            sa.select(c.c.secret_name, c.c.version, sa.func.count())
            .where(c.c.reported_at >= since)
            .group_by(c.c.secret_name, c.c.version)
        )
        counts: dict[str, dict[int, int]] = {}
        for name, version, count in await self._conn.execute(query):
            counts.setdefault(name, {})[version] = count
        return counts

    # -- pending versions -----------------------------------------------------

    async def pending(self, name: str) -> PendingVersion | None:
        """Return a secret's pending (or last given-up) rotation, locking its row."""
        p = t.pending_versions
        query = sa.select(p).where(p.c.secret_name == name).with_for_update()
        row = (await self._conn.execute(query)).one_or_none()
        return _pending(row) if row is not None else None

    async def put_pending(self, pending: PendingVersion) -> None:
        """Store a new pending version in place of any earlier one.

        The earlier row is updated, not deleted: a writer waiting to lock it
        then finds the new pending version, rather than no row at all.
        """
        p = t.pending_versions
        values = dict(
            version=pending.version,
            sealed_value=pending.sealed_value,
            key_term=pending.key_term,
            reason=pending.reason.value,
            step=pending.step,
            attempts=pending.attempts,
            next_attempt_at=pending.next_attempt_at,
            lease_until=pending.lease_until,
            owner=pending.owner,
            created_at=pending.created_at,
            created_by=pending.created_by,
            failed_at=pending.failed_at,
            failure=pending.failure,
        )
        updated = await self._conn.execute(
            sa.update(p).where(p.c.secret_name == pending.name).values(**values)
        )
        if updated.rowcount == 0:
            await self._conn.execute(
                sa.insert(p).values(secret_name=pending.name, **values)
            )

    async def update_pending(self, name: str, owner: str, **values: Any) -> bool:
        """Update the pending version ``owner`` holds; False if it holds none."""
        p = t.pending_versions
        result = await self._conn.execute(
            sa.update(p)
            .where(
                p.c.secret_name == name,
                p.c.owner == owner,
                p.c.failed_at.is_(None),
            )
            .values(**values)
        )
        return bool(result.rowcount)

    async def delete_pending(
        self, name: str, *, owner: str | None = None, step: str | None = None
    ) -> None:
        """Forget a secret's pending version, or the record of its failure.

        With ``owner`` and ``step``, only if it is still that owner's, at that step.
        """
        p = t.pending_versions
        query = sa.delete(p).where(p.c.secret_name == name)
        if owner is not None:
            query = query.where(p.c.owner == owner)
        if step is not None:
            query = query.where(p.c.step == step)
        await self._conn.execute(query)

    async def claim_pending(
        self,
        name: str,
        owner: str,
        now: datetime,
        lease_until: datetime,
        *,
        waiting: bool = False,
    ) -> PendingVersion | None:
        """Take over a pending version nobody holds any more and whose time came.

        With ``waiting``, also one whose next attempt is still to come.
        Returns None when there is none, another process holds it, or it
        waits for a later attempt.
        """
        p = t.pending_versions
        conditions = [
            p.c.secret_name == name,
            p.c.failed_at.is_(None),
            p.c.lease_until <= now,
        ]
        if waiting:
            conditions.append(p.c.sealed_value.is_not(None))
        else:
            conditions.append(p.c.next_attempt_at <= now)
        query = sa.select(p).where(*conditions).with_for_update(skip_locked=True)
        row = (await self._conn.execute(query)).one_or_none()
        if row is None:
            return None
        await self._conn.execute(
            sa.update(p)
            .where(p.c.secret_name == name)
            .values(owner=owner, lease_until=lease_until)
        )
        return replace(_pending(row), owner=owner, lease_until=lease_until)

    async def pending_to_resume(self, now: datetime) -> list[str]:
        """Name the pending versions nobody holds whose next attempt is due."""
        p = t.pending_versions
        query = (
            sa.select(p.c.secret_name)
            .where(
                p.c.failed_at.is_(None),
                p.c.lease_until <= now,
                p.c.next_attempt_at <= now,
            )
            .order_by(p.c.next_attempt_at)
        )
        return list((await self._conn.execute(query)).scalars())

    async def pending_states(self) -> dict[str, PendingVersion]:
        """Return every pending version and every failure record, by secret."""
        p = t.pending_versions
        rows = await self._conn.execute(sa.select(p))
        return {row.secret_name: _pending(row) for row in rows}

    async def set_next_due(self, name: str, due: datetime | None) -> None:
        """Move when a secret next falls due."""
        s = t.application_secrets
        await self._conn.execute(
            sa.update(s).where(s.c.name == name).values(next_rotation_due=due)
        )

    # -- tokens ---------------------------------------------------------------

    async def tokens(self) -> list[TokenRecord]:
        """Return every token, revoked ones too, by name."""
        k = t.access_tokens
        rows = await self._conn.execute(sa.select(k).order_by(k.c.name))
        return [
            TokenRecord(
                token_id=row.token_id,
                name=row.name,
                token_hash=row.token_hash,
                grants_json=row.grants,
                created_at=row.created_at,
                revoked_at=row.revoked_at,
            )
            for row in rows
        ]

    async def tokens_fingerprint(self) -> tuple[object, ...]:
        """Return a value that changes whenever a token is created or revoked.

        Counts, not times: a revocation stamped by a slow clock still shows.
        """
        k = t.access_tokens
        query = sa.select(
            sa.func.count(), sa.func.count(k.c.revoked_at), sa.func.max(k.c.token_id)
        )
        return tuple((await self._conn.execute(query)).one())

    async def add_token(self, record: TokenRecord) -> None:
        """Store a new token's hash and grants."""
        values = {
            "token_id": record.token_id,
            "name": record.name,
            "token_hash": record.token_hash,
            "grants": record.grants_json,
            "created_at": record.created_at,
        }
        await self._conn.execute(sa.insert(t.access_tokens).values(**values))

    async def revoke_token(self, name: str, at: datetime) -> bool:
        """Revoke the live token called ``name``; return whether there was one."""
        k = t.access_tokens
        result = await self._conn.execute(
            sa.update(k)
            .where(k.c.name == name, k.c.revoked_at.is_(None))
            .values(revoked_at=at)
        )
        return bool(result.rowcount)

    async def append_audit(self, records: Sequence[AuditRecord]) -> None:
        """Write audit records."""
        if not records:
            return
        rows = [
            {
                "at": r.at,
                "actor": r.actor,
                "action": r.action,
                "secret_name": r.name,
                "version": r.version,
                "outcome": r.outcome,
                "detail": r.detail,
            }
            for r in records
        ]
        await self._conn.execute(sa.insert(t.audit_records), rows)

    async def audit_page(
        self, query: AuditQuery, before_id: int | None, limit: int
    ) -> list[tuple[int, AuditRecord]]:
        """Return up to ``limit`` matching records, newest first.

        With ``before_id``, only records older than that one.
        """
        a = t.audit_records
        select = sa.select(a).order_by(a.c.id.desc()).limit(limit)
        conditions = [
            (query.name, a.c.secret_name),
            (query.actor, a.c.actor),
            (query.action, a.c.action),
            (query.outcome, a.c.outcome),
        ]
        for wanted, column in conditions:
            if wanted is not None:
                select = select.where(column == wanted)
        if query.since is not None:
            select = select.where(a.c.at >= query.since)
        if query.until is not None:
            select = select.where(a.c.at < query.until)
        if before_id is not None:
            select = select.where(a.c.id < before_id)
        return [
            (
                row.id,
                AuditRecord(
                    at=row.at,
                    actor=row.actor,
                    action=row.action,
                    outcome=row.outcome,
                    name=row.secret_name,
                    version=row.version,
                    detail=row.detail,
                ),
            )
            for row in await self._conn.execute(select)
        ]


def _pending(row: Any) -> PendingVersion:
    return PendingVersion(
        name=row.secret_name,
        version=row.version,
        sealed_value=row.sealed_value,
        key_term=row.key_term,
        reason=Reason(row.reason),
        step=row.step,
        attempts=row.attempts,
        next_attempt_at=row.next_attempt_at,
        lease_until=row.lease_until,
        owner=row.owner,
        created_at=row.created_at,
        created_by=row.created_by,
        failed_at=row.failed_at,
        failure=row.failure,
    )
