"""The domain: initialize, read, rotate, list and watch secrets.

It knows no gRPC and no SQL: the transport calls it, and it calls the store.
Reads are served from sealed versions held in memory; each read opens one.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import hashlib
import logging
import secrets
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Callable,
    Coroutine,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import regex
from prometheus_client import Gauge

from secretsvc import crypto
from secretsvc.access import Action, Caller
from secretsvc.audit import AuditTrail
from secretsvc.catalog import (
    DATA_KEY_NAME,
    DEFAULT_CATALOG,
    NAME_PATTERN,
    SecretPolicy,
    Source,
    check_name,
)
from secretsvc.errors import (
    InvalidRequest,
    NotInitialized,
    NotRotatable,
    ReadForbidden,
    RollbackRefused,
    RootKeyChanged,
    RootKeyMismatch,
    RotationInProgress,
    SecretCorrupted,
    SecretNotFound,
    SecretsError,
    StartupError,
    StoreConflict,
    StoreUnavailable,
    TargetRefused,
    VersionConflict,
    VersionExpired,
    VersionNotFound,
    VersionNotKept,
)
from secretsvc.events import EventHub
from secretsvc.model import (
    AuditQuery,
    AuditRecord,
    NewVersion,
    PendingVersion,
    Reason,
    ResealCandidate,
    RotationEventRecord,
    SecretRecord,
    Stage,
    StoreMeta,
    VersionRecord,
)
from secretsvc.rotation.rotators import Rotator, rotator_for
from secretsvc.store import Store, StoreTransaction, migrate

logger = logging.getLogger(__name__)

T = TypeVar("T")

RESEAL_PENDING = Gauge(
    "secretsvc_reseal_pending_versions",
    "Kept secret versions still sealed under an older keyring term.",
)

Clock = Callable[[], datetime]
MAX_USER_ID_LENGTH = 256
MAX_VERSION = 2**31 - 1
# An idle watcher looks up this often, so that a revoked credential ends its
# stream within a second. It reads nothing from the store when idle.
WATCH_POLL_SECONDS = 0.5
# The follower reads the event log this often when nothing woke it: the
# bound on how late another process's rotation reaches memory when no
# notification arrives (always, on SQLite).
FOLLOW_POLL_SECONDS = 1.0
FOLLOW_BATCH = 500
# How many of the latest events watchers are served from memory.
RECENT_EVENTS = 4096
RESEAL_BATCH = 100
RESEAL_RETRY_SECONDS = 0.5
# A rotation given up is tried again, with a new value, this long after.
FAILED_ROTATION_RETRY = timedelta(days=1)
# Expiring a previous value, or finishing a rotation that cannot be undone,
# is tried again at most this many seconds apart.
MAX_RETRY_DELAY = 3600.0
# The longest wait between attempts of a rotation, whatever its backoff.
LONGEST_BACKOFF_SECONDS = FAILED_ROTATION_RETRY.total_seconds()
# How long a login waits for a first version made on a slow target.
FIRST_VERSION_WAIT_SECONDS = 3.0
# The step of a promoted rotation whose previous value is still to expire.
RETIRING = "retiring"
# Who reads the secret that holds a target's administrator URL.
ROTATOR_ACTOR = "system:rotator"
DEFAULT_AUDIT_PAGE = 100
# A consumer counts for the version it last reported for this long; clients
# report again every minute.
CONSUMER_REPORT_TTL_SECONDS = 300
MAX_AUDIT_PAGE = 1000


def utc_now() -> datetime:
    """Return the current time, aware, in UTC."""
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class SecretValue:
    """One opened version of a secret."""

    name: str
    value: str
    version: int
    stage: Stage
    created_at: datetime
    next_rotation_due: datetime | None
    # For a superseded version: when its grace period ends.
    expires_at: datetime | None = None

    def __repr__(self) -> str:
        return f"SecretValue(name={self.name!r}, version={self.version})"


@dataclass(frozen=True, slots=True)
class VersionMeta:
    """A version's metadata, never its value."""

    name: str
    version: int
    stage: Stage
    created_at: datetime
    reason: Reason
    next_rotation_due: datetime | None
    value_kept: bool = True
    expires_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class SecretSummary:
    """A secret's metadata, without any value."""

    name: str
    current_version: int
    rotation_interval_days: int | None
    last_rotated_at: datetime | None
    next_rotation_due: datetime | None
    imported: bool
    written: bool = False
    overdue: bool = False
    # Consumers that lately reported each version.
    consumers: Mapping[int, int] = field(default_factory=dict)
    rotator: str = ""
    rotation_pending: bool = False
    # Why the last rotation was given up; None when it was not.
    failure: str | None = None


@dataclass(frozen=True, slots=True)
class AuditPage:
    """One page of the audit trail, with the token of the next."""

    records: list[tuple[int, AuditRecord]]
    next_page_token: str


@dataclass(slots=True)
class InitializeOutcome:
    """What an initialization found and did."""

    master_user_id: str
    is_master: bool
    generated: list[str] = field(default_factory=list)
    already_present: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)


class SecretManager:
    """Own the secrets: generate, seal, store, serve and rotate them."""

    def __init__(
        self,
        store: Store,
        root_key: str | bytes,
        *,
        catalog: Sequence[SecretPolicy] = DEFAULT_CATALOG,
        environ: Mapping[str, str] | None = None,
        clock: Clock = utc_now,
        audit: AuditTrail | None = None,
        hub: EventHub | None = None,
        reseal_batch: int = RESEAL_BATCH,
        rotation_lease: float = 60.0,
        pause_after: str | None = None,
    ) -> None:
        """Prepare a manager; :meth:`start` opens the store.

        Args:
            store: where secrets are kept.
            root_key: the operator's root key, which wraps the keyring.
            catalog: the secrets to create at initialization.
            environ: where imported secrets are read from at initialization.
            clock: returns the current aware UTC time.
            audit: the trail that records reads and refusals.
            hub: wakes watchers when events are appended.
            reseal_batch: versions re-sealed in one transaction after the
                data key rotates.
            rotation_lease: seconds a rotation that touches a target is held
                by this process before another may take it over.
            pause_after: a test hook: pause such rotations after this step.
        """
        self._store = store
        self._root_key_secret = root_key
        self._policies = {policy.name: policy for policy in catalog}
        self._environ = environ if environ is not None else {}
        self._clock = clock
        self.audit = audit or AuditTrail(store, clock)
        # Woken when the log may have grown: a local commit, a notification.
        self._log_changed = EventHub()
        # Woken when memory reflects new events, up to ``_applied``.
        self.hub = hub or EventHub()
        self._applied = 0
        # The latest events, shared by every watcher: all those with ids in
        # (_recent_floor, _applied], oldest first.
        self._recent: list[RotationEventRecord] = []
        self._recent_floor = 0
        self._follower: asyncio.Task[None] | None = None
        self._reseal_batch = reseal_batch
        self._reseal_wanted = asyncio.Event()
        self._resealer: asyncio.Task[None] | None = None
        self._root: crypto.RootKey | None = None
        self._keyring = crypto.Keyring()
        self._secrets: dict[str, SecretRecord] = {}
        self._master: str | None = None
        self._rotators: dict[str, Rotator] = {
            policy.name: rotator_for(policy, self._value_for_rotator)
            for policy in catalog
        }
        self._lease = timedelta(seconds=rotation_lease)
        self._pause_after = pause_after
        # The test hook: set when a rotation pauses; a set release lets it go on.
        self.paused = asyncio.Event()
        self.release = asyncio.Event()
        # First versions still being made on their target after a login returned.
        self._background: set[asyncio.Future[VersionMeta | None]] = set()
        # Names this process as the holder of the pending versions it drives.
        self._owner = secrets.token_hex(8)

    # -- lifecycle ------------------------------------------------------------

    async def start(self) -> None:
        """Check the root key, migrate the schema and load the secrets.

        Raises:
            RootKeyMismatch: the store was created with another root key;
                nothing has been written.
        """
        if await self._store.has_schema():
            async with self._store.read() as tx:
                meta = await tx.meta()
            if meta is not None:
                self._root = self._open_root_key(meta)
        await migrate(self._store)

        if self._root is None:
            salt = crypto.new_salt()
            fresh = crypto.RootKey(self._root_key_secret, salt)
            proposal = StoreMeta(salt, fresh.make_verifier())
            async with self._store.write() as tx:
                meta = await tx.claim_meta(proposal, self._clock())
            # Another process may have created the store a moment before.
            self._root = self._open_root_key(meta)

        await self._load()
        self.audit.start()
        self._follower = asyncio.create_task(self._follow(), name="secretsvc-follow")
        # A re-seal cut short by a crash resumes here.
        self._reseal_wanted.set()
        self._resealer = asyncio.create_task(
            self._reseal_loop(), name="secretsvc-reseal"
        )
        self._store.listen(self._log_changed.publish)

    def _open_root_key(self, meta: StoreMeta) -> crypto.RootKey:
        root = crypto.RootKey(self._root_key_secret, meta.key_salt)
        if not root.matches(meta.key_verifier):
            raise RootKeyMismatch(
                "the root key (from PASSWORD_MASTER_KEY or PASSWORD_MASTER_KEY_FILE) "
                "does not match this store"
            )
        return root

    async def _load(self) -> None:
        async with self._store.read() as tx:
            self._applied = await tx.last_event_id()
            self._recent_floor = self._applied
            await self._load_keyring(tx)
            master = await tx.master_user()
            records = await tx.secrets()
        self._master = master.user_id if master else None
        self._secrets = {record.name: record for record in records}
        logger.info(
            "loaded %d secrets; keyring has %d terms",
            len(records),
            self._keyring.active_term or 0,
        )

    async def _load_keyring(self, tx: StoreTransaction) -> None:
        assert self._root is not None
        ring = crypto.Keyring()
        for term, wrapped in await tx.key_terms():
            try:
                ring = ring.with_term(term, self._root.unwrap(term, wrapped))
            except crypto.SealError as error:
                meta = await tx.meta()
                if meta is not None and not self._root.matches(meta.key_verifier):
                    raise RootKeyChanged(
                        "the store's root key was changed; restart this server "
                        "with the new key"
                    ) from None
                message = f"keyring term {term} does not open: the store is damaged"
                raise StartupError(message) from error
        self._keyring = ring

    async def _fresh_keyring(self, tx: StoreTransaction) -> crypto.Keyring:
        """Return the keyring, loading terms another process added since."""
        if await tx.last_key_term() != (self._keyring.active_term or 0):
            await self._load_keyring(tx)
        return self._keyring

    async def _reload(self, names: Sequence[str]) -> None:
        async with self._store.read() as tx:
            records = await tx.secrets(names)
        for record in records:
            self._secrets[record.name] = record

    async def close(self) -> None:
        """End watches, stop following the log, write pending audit records."""
        self.hub.close()
        self._log_changed.close()
        if self._follower is not None:
            await self._follower
        if self._resealer is not None:
            self._reseal_wanted.set()
            await self._resealer
        # Cut short, a first version keeps its pending row for the next start.
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        await self.audit.stop()

    # -- following the event log ----------------------------------------------

    async def _follow(self) -> None:
        """Bring memory up to date with every event in the log, in order.

        Events written by this process and by others are handled alike, so a
        watcher is told of an event only once a read here returns its version.
        """
        failing = False
        while not self._log_changed.closed:
            changed = self._log_changed.changed
            try:
                caught_up = await self._apply_new_events()
            except (StoreUnavailable, RootKeyChanged) as error:
                if not failing:
                    logger.warning(
                        "cannot follow rotation events: %s; serving the secrets "
                        "held in memory",
                        error,
                    )
                failing, caught_up = True, True
            except Exception:
                logger.exception("following rotation events failed; retrying")
                caught_up = True
            else:
                if failing:
                    logger.info("the store is reachable again; following events")
                    failing = False
            if caught_up:
                await self._log_changed.wait(changed, FOLLOW_POLL_SECONDS)

    def _remember(self, events: Sequence[RotationEventRecord]) -> None:
        self._recent.extend(events)
        if len(self._recent) > 2 * RECENT_EVENTS:
            dropped = self._recent[:-RECENT_EVENTS]
            self._recent = self._recent[-RECENT_EVENTS:]
            self._recent_floor = dropped[-1].event_id

    def _recent_events(
        self, cursor: int, upto: int, names: Sequence[str]
    ) -> list[RotationEventRecord] | None:
        """Return the events in (cursor, upto] from memory, or None if too old."""
        if cursor < self._recent_floor:
            return None
        recent = self._recent
        start = bisect.bisect_right(recent, cursor, key=lambda e: e.event_id)
        end = bisect.bisect_right(recent, upto, key=lambda e: e.event_id)
        batch = recent[start:end]
        if names:
            wanted = set(names)
            batch = [event for event in batch if event.name in wanted]
        return batch

    async def _apply_new_events(self) -> bool:
        """Apply the next batch of events; return True when none are left."""
        async with self._store.read() as tx:
            events = await tx.events_after(self._applied, limit=FOLLOW_BATCH)
            if not events:
                return True
            names = sorted({event.name for event in events})
            if DATA_KEY_NAME in names:
                await self._load_keyring(tx)
                self._reseal_wanted.set()
            records = await tx.secrets(names)
            master = await tx.master_user() if self._master is None else None

        for record in records:
            self._secrets[record.name] = record
        if master is not None:
            self._master = master.user_id
        self._applied = events[-1].event_id
        self._remember(events)
        self.hub.publish()

        return len(events) < FOLLOW_BATCH

    # -- re-sealing under a new data key --------------------------------------

    async def _reseal_loop(self) -> None:
        """Re-seal when asked, and again later for what was skipped or failed."""
        retry: float | None = RESEAL_RETRY_SECONDS
        while not self.hub.closed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._reseal_wanted.wait(), retry)
            self._reseal_wanted.clear()
            if self.hub.closed:
                return
            try:
                left = await self.reseal()
            except StoreUnavailable:
                logger.warning("re-sealing paused: the store cannot be reached")
                left = 1
            except Exception:
                logger.exception("re-sealing failed; retrying")
                left = 1
            # Left: versions other writers held, or a batch that failed.
            retry = min((retry or RESEAL_RETRY_SECONDS) * 2, 60.0) if left else None

    async def reseal(self) -> int:
        """Re-seal the kept versions under the active data key in one pass.

        Returns how many are left on older terms: those another writer held.

        Batches are transactions: after a crash, what was done stays done and
        the rest is found again. Older terms stay in the keyring, so every
        version opens before, during and after.
        """
        done, broken, cursor = 0, 0, 0
        term: int | None = None
        while not self.hub.closed:
            async with self._store.write() as tx:
                ring = await self._fresh_keyring(tx)
                term = ring.active_term
                if term is None:
                    return 0
                batch = await tx.versions_to_reseal(term, cursor, self._reseal_batch)
                if not batch:
                    break
                for candidate in batch:
                    sealed = self._reseal_one(ring, candidate)
                    if sealed is None:
                        broken += 1
                    else:
                        await tx.reseal(candidate, sealed, term)
                        done += 1
                remaining = await tx.count_to_reseal(term)
            cursor = batch[-1].row_id
            RESEAL_PENDING.set(remaining)
            await self._reload(sorted({c.name for c in batch}))
            logger.info(
                "re-sealed %d versions under keyring term %d; %d to go",
                done,
                term,
                remaining,
            )
        if term is None:
            return 0
        async with self._store.read() as tx:
            remaining = await tx.count_to_reseal(term)
        # A version that does not open stays as it is; it is not retried.
        return max(remaining - broken, 0)

    def _reseal_one(
        self, ring: crypto.Keyring, candidate: ResealCandidate
    ) -> bytes | None:
        try:
            plain = ring.open(candidate.name, candidate.version, candidate.sealed_value)
        except crypto.SealError:
            logger.error(
                "secret %s version %d does not open; left as it is",
                candidate.name,
                candidate.version,
            )
            return None
        return ring.seal(candidate.name, candidate.version, plain)

    # -- audit ----------------------------------------------------------------

    @contextmanager
    def _audited(
        self, actor: str, action: str, name: str | None, version: int | None
    ) -> Iterator[None]:
        """Record a refusal; successes are recorded by the caller."""
        # A name that breaks the grammar is not fit for the trail's name column;
        # the error message describes it instead.
        if name is not None and not NAME_PATTERN.fullmatch(name):
            name = None
        if version is not None and not 0 < version <= MAX_VERSION:
            version = None
        try:
            yield
        except SecretsError as error:
            self.audit.record(
                actor, action, error.outcome, name, version, detail=str(error)
            )
            raise
        except Exception:
            self.audit.record(actor, action, "error", name, version)
            raise

    # -- initialize -----------------------------------------------------------

    async def initialize(self, user_id: str, *, caller: Caller) -> InitializeOutcome:
        """Make ``user_id`` master on the first call and create every secret.

        The database settles a race between first logins: one master user and
        one first version of each secret, whatever the number of callers.
        """
        actor = caller.identity
        with self._audited(actor, "initialize", None, None):
            _check_user_id(user_id)
            caller.require_everywhere(Action.INITIALIZE)
            missing = [p for p in self._policies.values() if self._needs_creating(p)]
            if self._master is not None and not missing:
                outcome = InitializeOutcome(
                    master_user_id=self._master,
                    is_master=self._master == user_id,
                    already_present=sorted(self._secrets),
                    skipped=self._skipped(),
                )
            else:
                outcome = await _to_the_end(self._initialize(user_id, actor))

        detail = f"user_id={user_id}" + (", master" if outcome.is_master else "")
        self.audit.record(actor, "initialize", "ok", detail=detail)
        return outcome

    def _needs_creating(self, policy: SecretPolicy) -> bool:
        if policy.name in self._secrets or policy.source is Source.WRITTEN:
            return False
        return policy.source is not Source.IMPORTED or self._import(policy) is not None

    def touches_target(self, name: str) -> bool:
        """Tell whether rotating ``name`` changes a system outside the store."""
        rotator = self._rotators.get(name)
        return rotator is not None and rotator.has_target

    def _import(self, policy: SecretPolicy) -> str | None:
        """Return the value to import for ``policy``, if there is a fit one."""
        if self._import_problem(policy) is not None:
            return None
        return self._environ[policy.import_from or policy.name]

    def _import_problem(self, policy: SecretPolicy) -> str | None:
        """Say why ``policy``'s variable cannot be imported, or None if it can."""
        variable = policy.import_from or policy.name
        value = self._environ.get(variable)
        if not value:
            return f"{variable} is not set in the server's environment"
        try:
            _check_value(policy, value)
        except InvalidRequest as error:
            return f"{variable} in the server's environment is refused: {error}"
        return None

    def _why_skipped(self, policy: SecretPolicy) -> str:
        if policy.source is Source.WRITTEN:
            return "written by an operator with PutSecret"
        return self._import_problem(policy) or "it cannot be made yet"

    def _skipped(
        self, policies: Iterable[SecretPolicy] | None = None
    ) -> list[tuple[str, str]]:
        """Name the imported secrets that cannot be created, and why."""
        candidates = self._policies.values() if policies is None else policies
        return [
            (p.name, self._why_skipped(p))
            for p in candidates
            if p.name not in self._secrets and not self._needs_creating(p)
        ]

    async def _initialize(self, user_id: str, actor: str) -> InitializeOutcome:
        assert self._root is not None
        now = self._clock()
        events: list[RotationEventRecord] = []
        # Made through their target, after this transaction.
        deferred: list[SecretPolicy] = []

        async with self._store.write() as tx:
            master = await tx.claim_master(user_id, now)
            ring = await self._fresh_keyring(tx)
            existing = await tx.secret_names()
            outcome = InitializeOutcome(
                master_user_id=master.user_id, is_master=master.user_id == user_id
            )
            # The data key comes first: it seals every other secret.
            policies = sorted(
                self._policies.values(), key=lambda p: p.source is not Source.DATA_KEY
            )
            for policy in policies:
                if policy.name in existing:
                    outcome.already_present.append(policy.name)
                    continue
                if policy.source is Source.DATA_KEY:
                    ring, first, stored = await self._new_data_key(
                        tx, policy, 1, Reason.INITIAL, now, actor
                    )
                else:
                    value = self._import(policy)
                    waits = policy.source is Source.WRITTEN
                    if waits or (policy.source is Source.IMPORTED and value is None):
                        outcome.skipped.extend(self._skipped([policy]))
                        continue
                    if value is None and self.touches_target(policy.name):
                        deferred.append(policy)
                        continue
                    value = value or self._rotators[policy.name].produce(policy, None)
                    stored = ring.seal(policy.name, 1, value.encode())
                    first = _new_version(policy, 1, stored, Reason.INITIAL, now, actor)
                await tx.create_secret(
                    first,
                    encrypted_value=stored,
                    min_length=policy.min_length,
                    interval_days=policy.rotation_interval_days,
                )
                events.append(
                    await tx.append_event(policy.name, 0, 1, Reason.INITIAL, now)
                )
                outcome.generated.append(policy.name)
            await tx.append_audit(
                [
                    self.audit.make(actor, "create", "ok", event.name, 1, "INITIAL")
                    for event in events
                ]
            )

        self._keyring = ring
        self._master = outcome.master_user_id
        for policy in deferred:
            await self._first_on_target(policy, actor, outcome)
        await self._reload(outcome.generated + outcome.already_present)
        if events:
            logger.info(
                "initialized secrets %s; master user is %s",
                ", ".join(outcome.generated),
                outcome.master_user_id,
            )
            self._log_changed.publish()

        return outcome

    async def _first_on_target(
        self, policy: SecretPolicy, actor: str, outcome: InitializeOutcome
    ) -> None:
        """Make a secret's first version through its target, in the four steps."""
        name = policy.name
        making = self._in_background(self._make_first(policy, actor))
        # A slow target does not hold up the login past its deadline.
        await asyncio.wait({making}, timeout=FIRST_VERSION_WAIT_SECONDS)
        if not making.done():
            outcome.skipped.append(
                (name, "its first version is being made on its target")
            )
            return
        try:
            made = making.result()
        except RotationInProgress:
            made = None
        except TargetRefused as error:
            self.audit.record(actor, "create", error.outcome, name, detail=str(error))
            outcome.skipped.append((name, f"{error}; the rotation loop tries again"))
            return
        if made is None:
            if name in self._secrets:
                outcome.already_present.append(name)
            else:
                outcome.skipped.append((name, "its first version is being made"))
            return
        outcome.generated.append(name)

    async def _make_first(self, policy: SecretPolicy, actor: str) -> VersionMeta | None:
        """Begin a first version on its target, or take one waiting for a retry.

        A login asks for the secret now: a first version waiting for its next
        attempt (say, for an admin URL not yet written) is attempted at once.
        Its attempts still count, so one that keeps failing is given up.
        """
        made = await self._rotate_on_target(policy, Reason.INITIAL, actor)
        if made is not None or policy.name in self._secrets:
            return made
        now = self._clock()
        async with self._store.write() as tx:
            pending = await tx.claim_pending(
                policy.name, self._owner, now, now + self._lease, waiting=True
            )
        if pending is None or pending.reason is not Reason.INITIAL:
            return None
        return await self._drive(policy, pending)

    async def _new_data_key(
        self,
        tx: StoreTransaction,
        policy: SecretPolicy,
        version: int,
        reason: Reason,
        now: datetime,
        actor: str,
    ) -> tuple[crypto.Keyring, NewVersion, bytes]:
        """Add a keyring term, recorded as a version of the data key secret.

        Returns the keyring with the new term, the version, and the wrapped
        key that the secret's row keeps; the key itself lives in the keyring.
        """
        assert self._root is not None
        meta = await tx.meta(lock=True)
        if meta is None or not self._root.matches(meta.key_verifier):
            # A key wrapped with the old root key would not open after restart.
            raise RootKeyChanged(
                "the root key of the store was changed; restart with the new one "
                "before rotating the data key",
                name=policy.name,
            )
        term = await tx.last_key_term() + 1
        data_key = crypto.new_data_key()
        wrapped = self._root.wrap(term, data_key)
        await tx.add_key_term(term, wrapped, now)
        ring = self._keyring.with_term(term, data_key)
        new = _new_version(policy, version, None, reason, now, actor)

        return ring, replace(new, key_term=term), wrapped

    # -- read -----------------------------------------------------------------

    async def get(
        self,
        name: str,
        version: int = 0,
        *,
        caller: Caller,
        stage: Stage | None = None,
    ) -> SecretValue:
        """Open one version of a secret: the current one when ``version`` is 0.

        Raises:
            InvalidRequest: the name or version breaks the grammar.
            ReadForbidden: the secret is never served.
            SecretNotFound, VersionNotFound: there is no such secret or version.
            SecretCorrupted: the stored value does not open.
        """
        actor = caller.identity
        with self._audited(actor, "read", name, version or None):
            check_name(name)
            _check_version(version)
            caller.require(Action.READ, name)
            policy = self._policies.get(name)
            record = self._secrets.get(name)
            if record is None:
                raise self._absent(name)
            if policy is None:
                # Whether it may be served is the catalog's to say; fail closed.
                raise ReadForbidden(
                    f"secret '{name}' is not in this server's catalog, so it is "
                    "not served",
                    name=name,
                )
            if not policy.servable:
                raise ReadForbidden(f"secret '{name}' is never served", name=name)
            found = _select(record, version, stage)
            expires_at = self._expiry(record, found)
            if expires_at is not None and self._clock() >= expires_at:
                raise VersionExpired(
                    f"secret '{name}' version {found.version} expired at "
                    f"{expires_at.isoformat(timespec='seconds')}",
                    name=name,
                    version=found.version,
                )
            if found.sealed_value is None:
                raise VersionNotKept(
                    f"the value of secret '{name}' version {found.version} "
                    "is no longer kept",
                    name=name,
                    version=found.version,
                )

            plaintext = await self._open(name, found.version, found.sealed_value)

        self.audit.record(actor, "read", "ok", name, found.version)
        return SecretValue(
            name=name,
            value=plaintext.decode(),
            version=found.version,
            stage=found.stage,
            created_at=found.created_at,
            next_rotation_due=record.next_rotation_due,
            expires_at=expires_at,
        )

    def _expiry(self, record: SecretRecord, found: VersionRecord) -> datetime | None:
        """Return when a superseded version stops being readable, or None."""
        successor = record.versions.get(found.version + 1)
        if found.stage is Stage.CURRENT or successor is None:
            return None
        policy = self._policies.get(record.name)
        hours = policy.grace_period_hours if policy else 24.0
        return successor.created_at + timedelta(hours=hours)

    async def list_versions(self, name: str, *, caller: Caller) -> list[VersionMeta]:
        """Describe every version of a secret, newest first; never a value."""
        with self._audited(caller.identity, "list_versions", name, None):
            check_name(name)
            if not any(caller.allows(a, name) for a in _LISTING_ACTIONS):
                caller.require(Action.READ, name)
            record = self._secrets.get(name)
            if record is None:
                raise self._absent(name)
        self.audit.record(caller.identity, "list_versions", "ok", name)
        data_key = self._source(name) is Source.DATA_KEY
        return [
            VersionMeta(
                name=name,
                version=v.version,
                stage=v.stage,
                created_at=v.created_at,
                reason=v.reason,
                next_rotation_due=(
                    record.next_rotation_due if v.stage is Stage.CURRENT else None
                ),
                value_kept=data_key or v.sealed_value is not None,
                expires_at=self._expiry(record, v),
            )
            for v in sorted(record.versions.values(), key=lambda v: -v.version)
        ]

    async def _open(self, name: str, version: int, sealed: bytes) -> bytes:
        try:
            try:
                return self._keyring.open(name, version, sealed)
            except crypto.UnknownKeyTerm:
                # Another process added a term since this one loaded the ring.
                async with self._store.read() as tx:
                    await self._load_keyring(tx)
                return self._keyring.open(name, version, sealed)
        except (crypto.SealError, UnicodeDecodeError) as error:
            logger.error("secret %s version %d does not open: %s", name, version, error)
            raise SecretCorrupted(
                f"secret '{name}' version {version} is damaged and cannot be opened",
                name=name,
                version=version,
            ) from None

    async def list_secrets(self, *, caller: Caller) -> list[SecretSummary]:
        """Describe every secret the caller may read, rotate or write; no values.

        Each comes with how many consumers lately reported each version.
        """
        self.audit.record(caller.identity, "list", "ok")
        since = self._clock() - timedelta(seconds=CONSUMER_REPORT_TTL_SECONDS)
        try:
            async with self._store.read() as tx:
                consumers = await tx.consumer_counts(since)
                pending = await tx.pending_states()
        except StoreUnavailable:
            consumers, pending = {}, {}
        listed = [
            SecretSummary(
                name=record.name,
                current_version=record.current.version,
                rotation_interval_days=record.rotation_interval_days,
                last_rotated_at=record.last_rotated_at,
                next_rotation_due=record.next_rotation_due,
                imported=self._source(record.name) is Source.IMPORTED,
                written=self._source(record.name) is Source.WRITTEN,
                overdue=self._overdue(record),
                consumers=consumers.get(record.name, {}),
                rotator=self._rotator_kind(record.name),
                rotation_pending=_in_progress(pending.get(record.name)),
                failure=_failure(pending.get(record.name)),
            )
            for record in self._secrets.values()
        ]
        # A first version still being made, or given up: version 0.
        listed += [
            SecretSummary(
                name=name,
                current_version=0,
                rotation_interval_days=policy.rotation_interval_days,
                last_rotated_at=None,
                next_rotation_due=None,
                imported=False,
                rotator=policy.rotator_kind.value,
                rotation_pending=_in_progress(state),
                failure=_failure(state),
            )
            for name, state in pending.items()
            if name not in self._secrets
            and (policy := self._policies.get(name)) is not None
        ]
        return sorted(
            (
                s
                for s in listed
                if any(caller.allows(a, s.name) for a in _LISTING_ACTIONS)
            ),
            key=lambda s: s.name,
        )

    async def report_versions(
        self, consumer_id: str, versions: Mapping[str, int], *, caller: Caller
    ) -> None:
        """Record which version of each secret a consumer has adopted."""
        with self._audited(caller.identity, "report", None, None):
            if (
                not consumer_id
                or len(consumer_id) > 128
                or not consumer_id.isprintable()
            ):
                raise InvalidRequest(
                    "consumer_id must be printable and 1 to 128 characters"
                )
            if len(versions) > 1000:
                raise InvalidRequest("report at most 1000 secrets at once")
            for name, version in versions.items():
                check_name(name)
                _check_version(version)
                caller.require(Action.READ, name)
                record = self._secrets.get(name)
                if record is None:
                    raise self._absent(name)
                if version not in record.versions:
                    raise VersionNotFound(
                        f"secret '{name}' has no version {version}",
                        name=name,
                        version=version,
                    )
            # Keyed by the caller too: one caller cannot overwrite another's.
            key = hashlib.sha256(f"{caller.identity}\n{consumer_id}".encode())
            async with self._store.write() as tx:
                await tx.report_versions(key.hexdigest(), dict(versions), self._clock())

    def _overdue(self, record: SecretRecord) -> bool:
        waits = self._source(record.name) in (Source.IMPORTED, Source.WRITTEN)
        due = record.next_rotation_due
        return waits and due is not None and due <= self._clock()

    def _rotator_kind(self, name: str) -> str:
        policy = self._policies.get(name)
        return policy.rotator_kind.value if policy else ""

    def _source(self, name: str) -> Source:
        policy = self._policies.get(name)
        return policy.source if policy else Source.GENERATED

    # -- rotate ---------------------------------------------------------------

    async def rotate(
        self,
        name: str,
        reason: Reason,
        *,
        caller: Caller,
        expected_version: int | None = None,
    ) -> VersionMeta:
        """Make a newly generated version current; the old one becomes previous.

        The new version, the event and the audit record are written in one
        transaction: after a crash, either all of them exist or none.

        Raises:
            InvalidRequest: the name breaks the grammar.
            SecretNotFound: there is no such secret.
            NotRotatable: the secret's value is not generated by the service.
            VersionConflict: ``expected_version`` is not the current one.
        """
        actor = caller.identity
        with self._audited(actor, "rotate", name, None):
            check_name(name)
            if expected_version is not None:
                _check_version(expected_version)
            caller.require(Action.ROTATE, name)
            policy = self._rotatable(name)
            if self.touches_target(name):
                meta = await asyncio.shield(
                    self._in_background(
                        self._rotate_on_target(
                            policy, reason, actor, expected=expected_version
                        )
                    )
                )
            else:
                meta = await _to_the_end(
                    self._promote(policy, reason, actor, expected=expected_version)
                )
        assert meta is not None
        return meta

    async def rotate_if_due(self, name: str, *, caller: Caller) -> VersionMeta | None:
        """Rotate ``name`` if it is still due and no other replica holds it.

        Several replicas may find the same secret due; the one that claims its
        row rotates it, and the others find it claimed or no longer due.
        """
        actor = caller.identity
        with self._audited(actor, "rotate", name, None):
            caller.require(Action.ROTATE, name)
            policy = self._rotatable(name)
            if self.touches_target(name):
                return await self._rotate_on_target(
                    policy, Reason.SCHEDULED, actor, only_if_due=True
                )
            return await _to_the_end(
                self._promote(policy, Reason.SCHEDULED, actor, only_if_due=True)
            )

    async def put(
        self,
        name: str,
        value: str,
        *,
        caller: Caller,
        expected_version: int | None = None,
    ) -> VersionMeta:
        """Write a new current version of an operator-written or imported secret.

        Raises:
            InvalidRequest: the value breaks the secret's policy (the rule is
                named; the value never is). Nothing is stored.
            NotRotatable: the service generates this secret's values.
            VersionConflict: ``expected_version`` is not the current one.
        """
        actor = caller.identity
        with self._audited(actor, "write", name, None):
            check_name(name)
            if expected_version is not None:
                _check_version(expected_version)
            caller.require(Action.WRITE, name)
            policy = self._policies.get(name)
            if policy is None:
                raise SecretNotFound(
                    f"secret '{name}' is not in the catalog", name=name
                )
            if policy.source not in (Source.WRITTEN, Source.IMPORTED):
                raise NotRotatable(
                    f"secret '{name}' is generated by the service; rotate it instead",
                    name=name,
                )
            _check_value(policy, value)
            meta = await _to_the_end(
                self._promote(
                    policy,
                    Reason.WRITTEN,
                    actor,
                    expected=expected_version,
                    value=value.encode(),
                )
            )
        assert meta is not None
        return meta

    async def rollback(self, name: str, version: int, *, caller: Caller) -> VersionMeta:
        """Make a kept earlier version's value current again, as a new version.

        Raises:
            VersionNotFound: there is no such version.
            VersionNotKept: its value was destroyed. Nothing changes.
        """
        actor = caller.identity
        with self._audited(actor, "rollback", name, version or None):
            check_name(name)
            _check_version(version)
            if version == 0:
                raise InvalidRequest("give the version to roll back to")
            caller.require(Action.ROTATE, name)
            policy = self._policies.get(name)
            if name not in self._secrets:
                raise self._absent(name)
            if policy is None or policy.source is Source.DATA_KEY:
                raise NotRotatable(f"secret '{name}' cannot be rolled back", name=name)
            if self.touches_target(name):
                meta = await asyncio.shield(
                    self._in_background(
                        self._rotate_on_target(
                            policy, Reason.ROLLBACK, actor, rollback_to=version
                        )
                    )
                )
            else:
                meta = await _to_the_end(
                    self._promote(policy, Reason.ROLLBACK, actor, rollback_to=version)
                )
        assert meta is not None
        return meta

    async def announce_due(self, name: str, *, caller: Caller) -> bool:
        """Stream ROTATION_DUE once for a due secret the service cannot rotate.

        Returns whether this call announced it (another replica may have).
        """
        now = self._clock()
        async with self._store.write() as tx:
            record = await tx.claim_due(name, now)
            if record is None or await tx.due_announced(name):
                return False
            current = record.current.version
            await tx.append_event(name, current, current, Reason.ROTATION_DUE, now)
            record_due = self.audit.make(caller.identity, "due", "ok", name, current)
            await tx.append_audit([record_due])

        due = record.next_rotation_due
        logger.warning(
            "secret %s fell due at %s; it is %s, so it waits for an operator "
            "to write a new version",
            name,
            due.isoformat(timespec="seconds") if due else "an unknown time",
            self._source(name).value,
        )
        self._log_changed.publish()
        return True

    def _absent(self, name: str) -> SecretNotFound:
        """Say that ``name`` has no version, and, for a catalog secret, why."""
        policy = self._policies.get(name)
        if policy is None:
            return SecretNotFound(f"secret '{name}' does not exist", name=name)
        if self.touches_target(name):
            how = (
                "its first version is made on its target at InitializeSecrets, or "
                "by the rotation loop; ListSecrets shows how far it is"
            )
        elif policy.source is Source.WRITTEN:
            how = "an operator writes it with PutSecret"
        elif policy.source is Source.IMPORTED:
            how = (
                f"it is imported from {policy.import_from} at InitializeSecrets "
                "when the server's environment holds it"
            )
        else:
            how = "InitializeSecrets makes it"
        return SecretNotFound(f"secret '{name}' has no version yet: {how}", name=name)

    def _rotatable(self, name: str) -> SecretPolicy:
        check_name(name)
        policy = self._policies.get(name)
        if policy is None:
            raise self._absent(name)
        if policy.source in (Source.IMPORTED, Source.WRITTEN):
            raise NotRotatable(
                f"secret '{name}' is {policy.source.value}; the service does not "
                "generate it: write a new value with PutSecret",
                name=name,
            )
        return policy

    async def _promote(
        self,
        policy: SecretPolicy,
        reason: Reason,
        actor: str,
        *,
        only_if_due: bool = False,
        expected: int | None = None,
        value: bytes | None = None,
        rollback_to: int | None = None,
    ) -> VersionMeta | None:
        """Write a new current version: generated, given, or rolled back to."""
        name = policy.name
        now = self._clock()

        async with self._store.write() as tx:
            if only_if_due:
                record = await tx.claim_due(name, now)
                if record is None:
                    return None
            else:
                record = await tx.lock_secret(name)
            if record is None and reason is not Reason.WRITTEN:
                raise self._absent(name)
            _check_expected(record, name, expected)
            ring = await self._fresh_keyring(tx)
            if ring.active_term is None and policy.source is not Source.DATA_KEY:
                raise NotInitialized(
                    f"secret '{name}' cannot be stored before InitializeSecrets "
                    "has run",
                    name=name,
                )
            version = max(record.versions) + 1 if record else 1
            if policy.source is Source.DATA_KEY:
                ring, new, stored = await self._new_data_key(
                    tx, policy, version, reason, now, actor
                )
            else:
                if rollback_to is not None:
                    assert record is not None
                    value = self._rollback_value(ring, policy, record, rollback_to)
                if value is None:
                    value = self._rotators[name].produce(policy, None).encode()
                stored = ring.seal(name, version, value)
                new = _new_version(policy, version, stored, reason, now, actor)
            await self._make_current(tx, policy, record, new, stored)

        self._keyring = ring
        return await self._made_current(new)

    async def _make_current(
        self,
        tx: StoreTransaction,
        policy: SecretPolicy,
        record: SecretRecord | None,
        new: NewVersion,
        stored: bytes,
    ) -> None:
        """Write ``new`` as current, with its event and audit record."""
        name, version, reason = policy.name, new.version, new.reason
        if record is None:
            await tx.create_secret(
                new,
                encrypted_value=stored,
                min_length=policy.min_length,
                interval_days=policy.rotation_interval_days,
            )
        else:
            await tx.promote(new, encrypted_value=stored)
        old = record.current.version if record else 0
        await tx.append_event(name, old, version, reason, new.created_at)
        action = _ACTIONS.get(reason, "rotate")
        await tx.append_audit(
            [self.audit.make(new.created_by, action, "ok", name, version, reason.value)]
        )
        if policy.source is not Source.DATA_KEY:
            await tx.destroy_values_before(name, version - policy.retain_versions + 1)

    async def _made_current(self, new: NewVersion) -> VersionMeta:
        """Bring memory up to a committed new version and tell the watchers."""
        await self._reload([new.name])
        logger.info(
            "%s: %s is now version %d", new.reason.value.lower(), new.name, new.version
        )
        self._log_changed.publish()
        return VersionMeta(
            name=new.name,
            version=new.version,
            stage=Stage.CURRENT,
            created_at=new.created_at,
            reason=new.reason,
            next_rotation_due=new.next_rotation_due,
        )

    # -- rotations that touch a target ----------------------------------------

    def _in_background(
        self, rotation: Coroutine[Any, Any, VersionMeta | None]
    ) -> asyncio.Task[VersionMeta | None]:
        """Run a rotation on a target as a task of the manager's own.

        Awaited through a shield, it goes on when its caller gives up: a
        client's deadline must not stop it between applying a value and
        promoting it. Shutdown cancels it; its pending version stays for the
        rotation loop.
        """
        task = asyncio.ensure_future(rotation)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        # Nobody may be left to read the outcome; take it so it is not reported.
        task.add_done_callback(lambda done: done.cancelled() or done.exception())
        return task

    async def _rotate_on_target(
        self,
        policy: SecretPolicy,
        reason: Reason,
        actor: str,
        *,
        only_if_due: bool = False,
        expected: int | None = None,
        rollback_to: int | None = None,
    ) -> VersionMeta | None:
        """Rotate in four steps: store pending, apply, verify, promote.

        Each step is durable before the next begins, so a process that dies
        anywhere leaves a pending version that the rotation loop finishes.
        Returns None when there was nothing to do (not due, or begun elsewhere).

        Raises:
            TargetRefused: the target refused; the loop tries again, a bounded
                number of times.
            RotationInProgress: another rotation of the secret is under way.
        """
        pending = await _to_the_end(
            self._begin(policy, reason, actor, only_if_due, expected, rollback_to)
        )
        if pending is None:
            return None
        await self._pause("created", policy.name)
        return await self._drive(policy, pending)

    async def resume(self, name: str, *, caller: Caller) -> VersionMeta | None:
        """Take over a pending version nobody holds, and drive it to the end.

        Returns None when there was none to take, or when this attempt failed
        (the failure is logged, and the next attempt scheduled).
        """
        now = self._clock()
        async with self._store.write() as tx:
            pending = await tx.claim_pending(name, self._owner, now, now + self._lease)
        if pending is None:
            return None
        policy = self._policies.get(name)
        if policy is None or not self.touches_target(name):
            async with self._store.write() as tx:
                await tx.delete_pending(name)
            logger.warning("discarded the pending version of %s: no rotator", name)
            return None
        logger.info(
            "resuming the rotation of %s to version %d after step %s",
            name,
            pending.version,
            pending.step,
        )
        if pending.step == RETIRING:
            await self._retire(policy, pending)
            return None
        action = _ACTIONS.get(pending.reason, "rotate")
        with (
            contextlib.suppress(TargetRefused, RotationInProgress),
            self._audited(caller.identity, action, name, pending.version),
        ):
            return await self._drive(policy, pending)
        return None

    async def pending_to_resume(self) -> list[str]:
        """Name the pending versions nobody holds whose next attempt is due."""
        async with self._store.read() as tx:
            return await tx.pending_to_resume(self._clock())

    async def _begin(
        self,
        policy: SecretPolicy,
        reason: Reason,
        actor: str,
        only_if_due: bool,
        expected: int | None,
        rollback_to: int | None,
    ) -> PendingVersion | None:
        """Step one: seal and store the pending version, before the target."""
        name = policy.name
        now = self._clock()
        try:
            async with self._store.write() as tx:
                if only_if_due:
                    record = await tx.claim_due(name, now)
                    if record is None:
                        return None
                else:
                    record = await tx.lock_secret(name)
                if record is None and reason is not Reason.INITIAL:
                    raise self._absent(name)
                earlier = await tx.pending(name)
                if record is None:
                    # Its first version may have been promoted while this
                    # waited for the pending row: look again, without a lock
                    # (locking the secret's row after the pending row would
                    # take the two in the opposite order to every other
                    # writer). Found, a login has nothing left to begin.
                    found = await tx.secrets([name])
                    record = found[0] if found else None
                if not _may_begin(name, reason, only_if_due, record, earlier, now):
                    return None
                old = _check_expected(record, name, expected)
                ring = await self._fresh_keyring(tx)
                current: str | None = None
                if record is not None and record.current.sealed_value is not None:
                    sealed = record.current.sealed_value
                    current = ring.open(name, old, sealed).decode()
                if rollback_to is not None:
                    assert record is not None
                    restored = self._rollback_value(ring, policy, record, rollback_to)
                    value = restored.decode()
                    self._rotators[name].check_restore(value, current)
                else:
                    value = self._rotators[name].produce(policy, current)
                version = max(record.versions) + 1 if record else 1
                stored = ring.seal(name, version, value.encode())
                pending = PendingVersion(
                    name=name,
                    version=version,
                    sealed_value=stored,
                    key_term=crypto.Keyring.term_of(stored),
                    reason=reason,
                    step="created",
                    attempts=0,
                    next_attempt_at=now,
                    lease_until=now + self._lease,
                    owner=self._owner,
                    created_at=now,
                    created_by=actor,
                )
                await tx.put_pending(pending)
                action = _ACTIONS.get(reason, "rotate")
                await tx.append_audit(
                    [self.audit.make(actor, action, "pending", name, version)]
                )
        except StoreConflict:
            # Another process stored its pending version first.
            raise RotationInProgress(
                f"a rotation of secret '{name}' is under way", name=name
            ) from None
        except crypto.SealError:
            raise SecretCorrupted(
                f"the current version of secret '{name}' cannot be opened", name=name
            ) from None
        self._keyring = ring
        logger.info(
            "%s: %s version %d is pending; applying it to its target",
            reason.value.lower(),
            name,
            version,
        )
        return pending

    async def _drive(
        self, policy: SecretPolicy, pending: PendingVersion
    ) -> VersionMeta | None:
        """Apply, verify and promote a stored pending version: steps two to four."""
        name = policy.name
        rotator = self._rotators[name]
        assert pending.sealed_value is not None
        value = (await self._open(name, pending.version, pending.sealed_value)).decode()
        try:
            async with self._holding(pending):
                await self._apply_and_verify(rotator, pending, value)
        except TargetRefused as error:
            restored = error.untouched or await self._undo(rotator, pending, value)
            raise await _to_the_end(
                self._attempt_failed(policy, pending, error, restored=restored)
            ) from None
        return await _to_the_end(self._finish(policy, pending))

    async def _undo(
        self, rotator: Rotator, pending: PendingVersion, value: str
    ) -> bool:
        """Put the target back as it was before a failed attempt; tell if it went.

        Until then the target may hold the pending value, which no client
        has: with one role, the current URL would not log in.
        """
        name = pending.name
        # From the store, not memory: this replica may not have followed the
        # latest promotion yet, and the target must get the newest values.
        try:
            async with self._store.read() as tx:
                found = await tx.secrets([name])
            record = found[0] if found else None
        except StoreUnavailable:
            record = self._secrets.get(name)
        earlier: list[tuple[str, datetime | None]] = []
        if record is not None:
            for version in sorted(record.versions.values(), key=lambda v: -v.version):
                if version.stage not in (Stage.CURRENT, Stage.PREVIOUS):
                    continue
                if version.sealed_value is None:
                    continue
                try:
                    plain = await self._open(
                        name, version.version, version.sealed_value
                    )
                except SecretCorrupted:
                    continue
                earlier.append((plain.decode(), self._expiry(record, version)))
        try:
            await rotator.undo(value, earlier)
        except TargetRefused as error:
            logger.warning(
                "rotation of %s: putting the target back as it was failed: %s",
                name,
                error,
            )
            return False
        return True

    async def _apply_and_verify(
        self, rotator: Rotator, pending: PendingVersion, value: str
    ) -> None:
        name = pending.name
        # After a crash the target may have it already.
        done = False
        if pending.step != "created":
            with contextlib.suppress(TargetRefused):
                await rotator.verify(value)
                done = True
        if not done:
            await rotator.apply(value)
            await _to_the_end(self._mark(pending, "applied"))
            await self._pause("applied", name)
            await rotator.verify(value)
        await _to_the_end(self._mark(pending, "verified"))
        await self._pause("verified", name)

    @contextlib.asynccontextmanager
    async def _holding(self, pending: PendingVersion) -> AsyncIterator[None]:
        """Renew this process's hold on a pending version while its steps run."""

        async def renew() -> None:
            while True:
                await asyncio.sleep(self._lease.total_seconds() / 3)
                try:
                    await _to_the_end(self._mark(pending, None))
                except (StoreUnavailable, RotationInProgress) as error:
                    logger.warning(
                        "cannot renew the rotation of %s: %s", pending.name, error
                    )

        renewing = asyncio.create_task(renew(), name=f"secretsvc-hold-{pending.name}")
        try:
            yield
        finally:
            renewing.cancel()
            await asyncio.gather(renewing, return_exceptions=True)

    async def _mark(self, pending: PendingVersion, step: str | None) -> None:
        """Record that a step is done (if given), and renew this process's hold."""
        now = self._clock()
        values: dict[str, Any] = {"lease_until": now + self._lease}
        if step is not None:
            values["step"] = step
        async with self._store.write() as tx:
            held = await tx.update_pending(pending.name, self._owner, **values)
        if not held:
            raise RotationInProgress(
                f"the rotation of secret '{pending.name}' was taken over",
                name=pending.name,
            )

    async def _attempt_failed(
        self,
        policy: SecretPolicy,
        pending: PendingVersion,
        error: TargetRefused,
        *,
        restored: bool,
    ) -> SecretsError:
        """Schedule the next attempt, or give the rotation up after the last.

        A rotation whose target could not be put back as it was is not given
        up: the target may hold the pending value, and only finishing the
        rotation makes the current value work there again.
        """
        name = policy.name
        now = self._clock()
        attempts = pending.attempts + 1
        stuck = attempts >= policy.max_attempts and not restored
        if attempts < policy.max_attempts or stuck:
            backoff = policy.retry_backoff_seconds * 2 ** min(attempts - 1, 32)
            delay = min(backoff, MAX_RETRY_DELAY if stuck else LONGEST_BACKOFF_SECONDS)
            async with self._store.write() as tx:
                await tx.update_pending(
                    name,
                    self._owner,
                    attempts=attempts,
                    step="created",
                    next_attempt_at=now + timedelta(seconds=delay),
                    lease_until=now,
                    failure=str(error)[:500] if stuck else None,
                )
            if stuck:
                logger.error(
                    "rotation of %s: attempt %d failed: %s; the target could not "
                    "be put back as it was, so the rotation is not given up: "
                    "trying again in %gs",
                    name,
                    attempts,
                    error,
                    delay,
                )
            else:
                logger.warning(
                    "rotation of %s: attempt %d of %d failed: %s; trying again in %gs",
                    name,
                    attempts,
                    policy.max_attempts,
                    error,
                    delay,
                )
            of = "" if stuck else f" of {policy.max_attempts}"
            retrying = TargetRefused(
                f"secret '{name}': {error} (attempt {attempts}{of}; tried again "
                f"in {delay:g}s)",
                name=name,
                version=pending.version,
            )
            retrying.outcome = "retrying"
            return retrying

        failure = str(error)[:500]
        async with self._store.write() as tx:
            record = await tx.lock_secret(name)
            current = record.current.version if record else 0
            held = await tx.update_pending(
                name,
                self._owner,
                attempts=attempts,
                sealed_value=None,
                key_term=None,
                failed_at=now,
                failure=failure,
                lease_until=now,
            )
            if held:
                if record is not None:
                    await tx.set_next_due(name, now + FAILED_ROTATION_RETRY)
                await tx.append_event(
                    name, current, current, Reason.ROTATION_FAILED, now
                )
        if held:
            logger.error(
                "rotation of %s given up after %d attempts: %s; version %d stays "
                "current, and the rotation loop tries a new value in %s",
                name,
                attempts,
                failure,
                current,
                FAILED_ROTATION_RETRY,
            )
            await self._reload([name])
            self._log_changed.publish()
        return TargetRefused(
            f"secret '{name}': {error} (given up after {attempts} attempts)",
            name=name,
            version=pending.version,
        )

    async def _finish(
        self, policy: SecretPolicy, pending: PendingVersion
    ) -> VersionMeta:
        """Step four: promote with the event and audit record, in one transaction.

        The pending row stays, as a note that the previous value is still to
        expire on the target, until :meth:`_retire` has done it.
        """
        name = policy.name
        now = self._clock()
        async with self._store.write() as tx:
            record = await tx.lock_secret(name)
            mine = await tx.pending(name)
            if (
                mine is None
                or mine.owner != self._owner
                or mine.version != pending.version
                or mine.sealed_value is None
            ):
                raise RotationInProgress(
                    f"the rotation of secret '{name}' was taken over", name=name
                )
            new = _new_version(
                policy,
                pending.version,
                mine.sealed_value,
                pending.reason,
                now,
                pending.created_by,
            )
            await self._make_current(tx, policy, record, new, mine.sealed_value)
            # Kept until the previous value is retired (at once for a first
            # version), so the secret is never missing from ListSecrets.
            await tx.update_pending(
                name,
                self._owner,
                step=RETIRING,
                sealed_value=None,
                key_term=None,
                failure=None,
                attempts=0,
                next_attempt_at=now,
                lease_until=now + self._lease,
            )

        meta = await self._made_current(new)
        await self._pause("promoted", name)
        await self._retire(policy, replace(pending, step=RETIRING, attempts=0))
        return meta

    async def _retire(self, policy: SecretPolicy, pending: PendingVersion) -> None:
        """Let the previous value stop working on the target when its grace ends.

        Tried again, the wait doubling up to an hour, until it is done: until
        then ListSecrets shows why, and no new rotation of the secret begins,
        so none can change the role in between or drop the duty.
        """
        name = policy.name
        await self._reload([name])
        record = self._secrets.get(name)
        try:
            if record is not None:
                await self._retire_previous(record)
        except (TargetRefused, SecretCorrupted) as error:
            now = self._clock()
            attempts = pending.attempts + 1
            delay = min(
                policy.retry_backoff_seconds * 2 ** (attempts - 1), MAX_RETRY_DELAY
            )
            async with self._store.write() as tx:
                await tx.update_pending(
                    name,
                    self._owner,
                    attempts=attempts,
                    failure=str(error)[:500],
                    next_attempt_at=now + timedelta(seconds=delay),
                    lease_until=now,
                )
            logger.warning(
                "expiring the previous version of %s on its target failed "
                "(attempt %d): %s; it may keep working past its grace period; "
                "trying again in %gs",
                name,
                attempts,
                error,
                delay,
            )
            return
        async with self._store.write() as tx:
            await tx.delete_pending(name, owner=self._owner, step=RETIRING)

    async def _retire_previous(self, record: SecretRecord) -> None:
        name = record.name
        previous = [v for v in record.versions.values() if v.stage is Stage.PREVIOUS]
        current = record.current
        if not previous or previous[0].sealed_value is None:
            return
        until = self._expiry(record, previous[0])
        if until is None or current.sealed_value is None:
            return
        old = await self._open(name, previous[0].version, previous[0].sealed_value)
        new = await self._open(name, current.version, current.sealed_value)
        await self._rotators[name].retire(old.decode(), new.decode(), until)

    async def _pause(self, step: str, name: str) -> None:
        """Wait here if the test hook says so, for a test to act or kill us."""
        if self._pause_after == step:
            logger.warning("test hook: rotation of %s paused after step %s", name, step)
            self.paused.set()
            await self.release.wait()

    def pause_rotations_after(self, step: str | None) -> None:
        """Set the test hook: rotations on a target wait after ``step``."""
        self._pause_after = step
        self.paused.clear()
        self.release.clear()

    async def _value_for_rotator(self, name: str) -> str:
        """Open the current value of a secret a rotator needs, such as an admin URL."""
        record = self._secrets.get(name)
        if record is None or record.current.sealed_value is None:
            # Nothing reached the target: no attempt needs undoing.
            raise TargetRefused(
                f"secret '{name}', which should hold the administrator URL, "
                "has no value",
                name=name,
                untouched=True,
            )
        version = record.current.version
        try:
            plain = await self._open(name, version, record.current.sealed_value)
        except SecretCorrupted as error:
            raise TargetRefused(str(error), name=name, untouched=True) from None
        self.audit.record(ROTATOR_ACTOR, "read", "ok", name, version)
        return plain.decode()

    def _rollback_value(
        self,
        ring: crypto.Keyring,
        policy: SecretPolicy,
        record: SecretRecord,
        version: int,
    ) -> bytes:
        """Open the value to roll back to, if it may become current again."""
        name = record.name
        target = record.versions.get(version)
        if target is None:
            raise VersionNotFound(
                f"secret '{name}' has no version {version}", name=name, version=version
            )
        if version == record.current.version:
            raise RollbackRefused(
                f"secret '{name}' version {version} is the current one already",
                name=name,
                version=version,
            )
        if target.sealed_value is None:
            raise VersionNotKept(
                f"the value of secret '{name}' version {version} is no longer kept",
                name=name,
                version=version,
            )
        try:
            value = ring.open(name, version, target.sealed_value)
        except crypto.SealError:
            raise SecretCorrupted(
                f"secret '{name}' version {version} is damaged and cannot be opened",
                name=name,
                version=version,
            ) from None
        # The policy may have changed since: what it refuses now stays out.
        _check_value(policy, value.decode())

        return value

    async def due(self, now: datetime) -> list[str]:
        """Return the names of the secrets that fall due at ``now``."""
        async with self._store.read() as tx:
            return await tx.due_secrets(now)

    def next_due(self, name: str) -> datetime | None:
        """Return when a secret next falls due, as last loaded."""
        record = self._secrets.get(name)
        return record.next_rotation_due if record else None

    def policy(self, name: str) -> SecretPolicy | None:
        """Return the catalog's policy of a secret."""
        return self._policies.get(name)

    # -- audit trail ----------------------------------------------------------

    async def list_audit(
        self, query: AuditQuery, page_size: int, page_token: str, *, caller: Caller
    ) -> AuditPage:
        """Return one page of matching audit records, newest first.

        Raises:
            InvalidRequest: a page size out of range, or a foreign page token.
            AccessDenied: the caller is not an admin.
        """
        with self._audited(caller.identity, "audit", query.name, None):
            if not 0 <= page_size <= MAX_AUDIT_PAGE:
                raise InvalidRequest(
                    f"page_size must be from 0 to {MAX_AUDIT_PAGE}, not {page_size}"
                )
            if page_token and not (page_token.isdigit() and len(page_token) < 19):
                raise InvalidRequest("page_token is not one this service gave")
            if query.name is not None:
                check_name(query.name)
            caller.require_everywhere(Action.ADMIN)
            # Reads recorded a moment ago belong on the first page.
            with contextlib.suppress(StoreUnavailable):
                await self.audit.flush()
            limit = page_size or DEFAULT_AUDIT_PAGE
            before = int(page_token) if page_token else None
            async with self._store.read() as tx:
                rows = await tx.audit_page(query, before, limit + 1)

        self.audit.record(caller.identity, "audit", "ok")
        more = len(rows) > limit
        rows = rows[:limit]
        token = str(rows[-1][0]) if more else ""
        return AuditPage(records=rows, next_page_token=token)

    # -- watch ----------------------------------------------------------------

    async def watch(
        self, since_event_id: int, names: Sequence[str], *, caller: Caller
    ) -> AsyncGenerator[RotationEventRecord]:
        """Yield events after ``since_event_id``, then new ones as they come.

        The stream ends when the manager closes.
        """
        actor = caller.identity
        with self._audited(actor, "watch", None, None):
            for name in names:
                check_name(name)
            if since_event_id < 0:
                raise InvalidRequest("since_event_id must not be negative")
            caller.require(Action.WATCH)
            for name in names:
                caller.require(Action.WATCH, name)
        self.audit.record(actor, "watch", "ok", detail=f"since {since_event_id}")

        cursor = since_event_id
        while not self.hub.closed:
            # A revoked credential ends the stream, as it refuses a new call.
            caller.require_valid()
            # Taken before reading, so that an event applied after it wakes us.
            changed = self.hub.changed
            applied = self._applied
            if cursor >= applied:
                await self.hub.wait(changed, WATCH_POLL_SECONDS)
                continue
            batch = self._recent_events(cursor, applied, names)
            if batch is None:
                async with self._store.read() as tx:
                    batch = await tx.events_after(
                        cursor, names, upto=applied, limit=FOLLOW_BATCH
                    )
            for event in batch:
                cursor = event.event_id
                # A stream carries only the events its caller may read.
                if caller.allows(Action.READ, event.name) and caller.allows(
                    Action.WATCH, event.name
                ):
                    yield event
            if len(batch) < FOLLOW_BATCH:
                # Every event up to ``applied`` that the filter lets through
                # has been sent.
                cursor = applied


_LISTING_ACTIONS = (Action.READ, Action.ROTATE, Action.WRITE)
# The audit trail's action for each kind of new version.
_ACTIONS = {Reason.WRITTEN: "write", Reason.ROLLBACK: "rollback"}
MAX_VALUE_LENGTH = 65_536
# A written value is matched against its format for at most this long: a
# pattern that backtracks without end must not stall every other call.
FORMAT_TIMEOUT_SECONDS = 0.1


def _select(record: SecretRecord, version: int, stage: Stage | None) -> VersionRecord:
    """Pick the version a read names: by number, by stage, or the current one."""
    name = record.name
    if version and stage is not None:
        raise InvalidRequest("give a version or a stage, not both")
    if version:
        found = record.versions.get(version)
        if found is None:
            raise VersionNotFound(
                f"secret '{name}' has no version {version}", name=name, version=version
            )
        return found
    if stage is Stage.PREVIOUS:
        previous = [v for v in record.versions.values() if v.stage is Stage.PREVIOUS]
        if not previous:
            raise VersionNotFound(f"secret '{name}' has no previous version", name=name)
        return previous[0]
    if stage not in (None, Stage.CURRENT):
        raise InvalidRequest("stage must be CURRENT or PREVIOUS")
    return record.current


def _may_begin(
    name: str,
    reason: Reason,
    only_if_due: bool,
    record: SecretRecord | None,
    earlier: PendingVersion | None,
    now: datetime,
) -> bool:
    """Tell whether a rotation on a target may begin, given the pending row.

    False: nothing to do here (the loop or a login will see to it).

    Raises:
        RotationInProgress: a caller asked, and another rotation, or the
            expiry of the previous value, comes first.
    """
    quiet = only_if_due or reason is Reason.INITIAL
    if reason is Reason.INITIAL and record is not None:
        return False
    if earlier is None or earlier.failed_at is not None:
        # Nothing under way; a rotation given up is simply replaced.
        return True
    if _in_progress(earlier):
        # Its attempts and their backoff belong to the resume path.
        if quiet:
            return False
        if earlier.lease_until > now:
            raise RotationInProgress(
                f"a rotation of secret '{name}' is under way", name=name
            )
        if earlier.attempts:
            at = earlier.next_attempt_at.isoformat(timespec="seconds")
            raise RotationInProgress(
                f"a rotation of secret '{name}' is waiting for its next "
                f"attempt, at {at} (attempts so far: {earlier.attempts})",
                name=name,
            )
        # Left by a process that died before its first attempt: replaced.
        return True
    owed = record is not None and any(
        v.stage is Stage.PREVIOUS and v.sealed_value is not None
        for v in record.versions.values()
    )
    if earlier.step == RETIRING and owed:
        # The previous version is still to expire on the target.
        if quiet:
            return False
        raise RotationInProgress(
            f"the previous version of secret '{name}' is still to be expired on "
            "its target; the rotation loop is at it",
            name=name,
        )
    return True


def _check_expected(
    record: SecretRecord | None, name: str, expected: int | None
) -> int:
    """Return the current version number, if it is the one the caller expects."""
    old = record.current.version if record else 0
    if expected is not None and expected != old:
        raise VersionConflict(
            f"secret '{name}' is at version {old}, not {expected}",
            name=name,
            version=old,
        )
    return old


def _in_progress(pending: PendingVersion | None) -> bool:
    return pending is not None and pending.sealed_value is not None


def _failure(pending: PendingVersion | None) -> str | None:
    if pending is None:
        return None
    if pending.step == RETIRING and pending.failure:
        return (
            "expiring the previous version on the target failed "
            f"({pending.attempts} attempts so far): {pending.failure}"
        )
    if pending.failed_at is None:
        if pending.failure and _in_progress(pending):
            return (
                "the target may hold a value no client has, and could not be "
                f"put back ({pending.attempts} attempts so far): {pending.failure}"
            )
        return None
    return pending.failure or "the target refused"


def _check_value(policy: SecretPolicy, value: str) -> None:
    """Check a written value against its policy, naming the rule, never the value."""
    name = policy.name
    if len(value) < policy.min_length:
        raise InvalidRequest(
            f"value of secret '{name}' has {len(value)} characters; its policy "
            f"asks for at least {policy.min_length}",
            name=name,
        )
    if len(value) > MAX_VALUE_LENGTH:
        raise InvalidRequest(
            f"value of secret '{name}' is longer than {MAX_VALUE_LENGTH} characters",
            name=name,
        )
    if "\x00" in value:
        raise InvalidRequest(
            f"value of secret '{name}' holds a NUL character, which no "
            "environment variable can carry",
            name=name,
        )
    if policy.format is None:
        return
    try:
        matched = regex.fullmatch(policy.format, value, timeout=FORMAT_TIMEOUT_SECONDS)
    except TimeoutError:
        matched = None
        message = (
            f"value of secret '{name}' could not be checked against its format "
            f"{policy.format!r} within {FORMAT_TIMEOUT_SECONDS:g}s"
        )
    else:
        message = (
            f"value of secret '{name}' does not match its format {policy.format!r}"
        )
    if matched is None:
        raise InvalidRequest(message, name=name)


async def _to_the_end(write: Coroutine[Any, Any, T]) -> T:
    """Run a write to its end even if the caller is cancelled meanwhile.

    A transaction cut off mid-statement can keep holding the store's write
    lock; a client's deadline must not do that to every other writer.
    """
    task = asyncio.ensure_future(write)
    # Nobody may be left to read the outcome; take it so it is not reported.
    task.add_done_callback(lambda done: done.cancelled() or done.exception())
    return await asyncio.shield(task)


def _check_user_id(user_id: str) -> None:
    if not user_id or not user_id.strip():
        raise InvalidRequest("user_id is empty")
    if len(user_id) > MAX_USER_ID_LENGTH or not user_id.isprintable():
        raise InvalidRequest(
            f"user_id must be printable and at most {MAX_USER_ID_LENGTH} characters"
        )


def _check_version(version: int) -> None:
    if version < 0:
        raise InvalidRequest(f"version {version} is negative")
    if version > MAX_VERSION:
        raise InvalidRequest(f"version {version} is out of range")


def _new_version(
    policy: SecretPolicy,
    version: int,
    sealed: bytes | None,
    reason: Reason,
    now: datetime,
    actor: str,
) -> NewVersion:
    interval = policy.rotation_interval_days
    due = now + timedelta(days=interval) if interval else None
    return NewVersion(
        name=policy.name,
        version=version,
        sealed_value=sealed,
        key_term=crypto.Keyring.term_of(sealed) if sealed else None,
        reason=reason,
        created_at=now,
        created_by=actor,
        next_rotation_due=due,
    )


async def rekey(
    store: Store,
    old_key: str,
    new_key: str,
    *,
    on_term: Callable[[int], None] | None = None,
) -> int:
    """Re-wrap every keyring term under a new root key, in one transaction.

    Until it commits the store opens with the old key only; after, with the
    new key only. Returns the number of terms re-wrapped.

    Raises:
        RootKeyMismatch: ``old_key`` is not the store's root key.
        StartupError: the store has no root key yet.
    """
    async with store.write() as tx:
        # Locked in the order a data key rotation locks them (its secret's row,
        # then the store's meta row), so the two never wait on each other in
        # a cycle: a server adding a keyring term waits, then sees the new key.
        await tx.lock_secret(DATA_KEY_NAME)
        meta = await tx.meta(lock=True)
        if meta is None:
            raise StartupError("the store has never been started: nothing to rekey")
        old_root = crypto.RootKey(old_key, meta.key_salt)
        if not old_root.matches(meta.key_verifier):
            raise RootKeyMismatch("the old root key does not match this store")
        salt = crypto.new_salt()
        new_root = crypto.RootKey(new_key, salt)

        terms = await tx.key_terms()
        rewrapped = b""
        for term, wrapped in terms:
            rewrapped = new_root.wrap(term, old_root.unwrap(term, wrapped))
            await tx.replace_key_term(term, rewrapped)
            if on_term is not None:
                on_term(term)
        if terms:
            await tx.set_encrypted_value(DATA_KEY_NAME, rewrapped)
        await tx.replace_meta(StoreMeta(salt, new_root.make_verifier()))

    logger.info("re-keyed the store: %d keyring terms re-wrapped", len(terms))
    return len(terms)
