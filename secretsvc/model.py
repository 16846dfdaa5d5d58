"""Records that the store returns and the domain works with."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime


class Stage(enum.StrEnum):
    """The role of a version for its secret."""

    CURRENT = "CURRENT"
    PREVIOUS = "PREVIOUS"
    PENDING = "PENDING"
    RETIRED = "RETIRED"


class Reason(enum.StrEnum):
    """Why a version became current."""

    INITIAL = "INITIAL"
    SCHEDULED = "SCHEDULED"
    MANUAL = "MANUAL"
    WRITTEN = "WRITTEN"
    ROLLBACK = "ROLLBACK"
    # Not a new version: the secret fell due and waits for an operator.
    ROTATION_DUE = "ROTATION_DUE"
    # Not a new version: a rotation was given up; the current one stands.
    ROTATION_FAILED = "ROTATION_FAILED"


@dataclass(frozen=True, slots=True)
class VersionRecord:
    """One version of a secret: its sealed value and metadata."""

    version: int
    stage: Stage
    # None for the data key, whose material lives in the keyring.
    sealed_value: bytes | None
    key_term: int | None
    reason: Reason
    created_at: datetime
    created_by: str

    def __repr__(self) -> str:
        return f"VersionRecord(version={self.version}, stage={self.stage})"


@dataclass(slots=True)
class SecretRecord:
    """A secret, as its ``application_secrets`` row and its versions."""

    name: str
    min_length: int
    rotation_interval_days: int | None
    last_rotated_at: datetime | None
    next_rotation_due: datetime | None
    created_by: str
    created_at: datetime
    versions: dict[int, VersionRecord] = field(default_factory=dict)

    @property
    def current(self) -> VersionRecord:
        """The version that readers get by default."""
        return next(v for v in self.versions.values() if v.stage is Stage.CURRENT)


@dataclass(frozen=True, slots=True)
class NewVersion:
    """A version about to be written."""

    name: str
    version: int
    sealed_value: bytes | None
    key_term: int | None
    reason: Reason
    created_at: datetime
    created_by: str
    next_rotation_due: datetime | None


@dataclass(frozen=True, slots=True)
class RotationEventRecord:
    """A version became current; ids increase in commit order."""

    event_id: int
    name: str
    old_version: int
    new_version: int
    reason: Reason
    created_at: datetime


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """Who did what to which secret, when, and how it ended. Never a value."""

    at: datetime
    actor: str
    action: str
    outcome: str
    name: str | None = None
    version: int | None = None
    detail: str | None = None


@dataclass(frozen=True, slots=True)
class MasterUser:
    """The user whose first login initialized the secrets."""

    user_id: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class StoreMeta:
    """What the store keeps about its root key: the salt and a verifier."""

    key_salt: bytes
    key_verifier: bytes


@dataclass(frozen=True, slots=True)
class TokenRecord:
    """A bearer token as stored: its id, name, hash and grants, never itself."""

    token_id: str
    name: str
    token_hash: bytes
    grants_json: str
    created_at: datetime
    revoked_at: datetime | None = None

    def __repr__(self) -> str:
        return f"TokenRecord(name={self.name!r}, token_id={self.token_id!r})"


@dataclass(frozen=True, slots=True)
class AuditQuery:
    """Filters on the audit trail; None matches anything."""

    name: str | None = None
    actor: str | None = None
    action: str | None = None
    outcome: str | None = None
    since: datetime | None = None
    until: datetime | None = None


@dataclass(frozen=True, slots=True)
class ResealCandidate:
    """A kept version sealed under an older keyring term."""

    row_id: int
    secret_id: int
    name: str
    version: int
    current: bool
    sealed_value: bytes

    def __repr__(self) -> str:
        return f"ResealCandidate(name={self.name!r}, version={self.version})"


@dataclass(frozen=True, slots=True)
class PendingVersion:
    """A rotation in progress, or (``failed_at`` set) the last one given up."""

    name: str
    version: int
    sealed_value: bytes | None
    key_term: int | None
    reason: Reason
    # created, applied or verified: the last step done; retiring once
    # promoted, while the previous value is still to expire on the target.
    step: str
    attempts: int
    next_attempt_at: datetime
    lease_until: datetime
    owner: str
    created_at: datetime
    created_by: str
    failed_at: datetime | None = None
    failure: str | None = None

    def __repr__(self) -> str:
        return (
            f"PendingVersion(name={self.name!r}, version={self.version}, "
            f"step={self.step!r}, attempts={self.attempts})"
        )
