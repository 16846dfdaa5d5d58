"""Plain result objects, named after the fields of the secretsvc.v1 messages."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp

from secretsvc_client._proto import secrets_pb2 as pb


def _time(message: object, field: str) -> datetime | None:
    """Return an aware UTC datetime for a timestamp field, or None when unset."""
    if not message.HasField(field):  # type: ignore[attr-defined]
        return None
    stamp: Timestamp = getattr(message, field)

    return stamp.ToDatetime(tzinfo=UTC)


def _stage(value: int) -> str:
    return pb.Stage.Name(value).removeprefix("STAGE_")


def _reason(value: int) -> str:
    name = pb.RotationReason.Name(value)
    return name.removeprefix("ROTATION_REASON_")


@dataclass(frozen=True, slots=True)
class SkippedSecret:
    """A required secret that initialization did not create, and why."""

    name: str
    reason: str


@dataclass(frozen=True, slots=True)
class InitializeResult:
    """What ``InitializeSecrets`` reported."""

    master_user_id: str
    is_master: bool
    generated: tuple[str, ...]
    already_present: tuple[str, ...]
    skipped: tuple[SkippedSecret, ...]

    @classmethod
    def from_proto(cls, message: pb.InitializeSecretsResponse) -> InitializeResult:
        """Build the result from its protobuf message."""
        skipped = tuple(SkippedSecret(s.name, s.reason) for s in message.skipped)
        return cls(
            master_user_id=message.master_user_id,
            is_master=message.is_master,
            generated=tuple(message.generated),
            already_present=tuple(message.already_present),
            skipped=skipped,
        )


@dataclass(frozen=True, slots=True)
class Secret:
    """One version of a secret, with its value."""

    name: str
    value: str = ""
    version: int = 0
    stage: str = "UNSPECIFIED"
    created_at: datetime | None = None
    next_rotation_due: datetime | None = None
    # For a superseded version: when its grace period ends.
    expires_at: datetime | None = None

    def __repr__(self) -> str:
        # Keep the value out of reprs, tracebacks and logs.
        return (
            f"Secret(name={self.name!r}, version={self.version}, "
            f"stage={self.stage!r}, value=<hidden>)"
        )

    @classmethod
    def from_proto(cls, message: pb.GetSecretResponse) -> Secret:
        """Build the secret from its protobuf message."""
        return cls(
            name=message.name,
            value=message.value,
            version=message.version,
            stage=_stage(message.stage),
            created_at=_time(message, "created_at"),
            next_rotation_due=_time(message, "next_rotation_due"),
            expires_at=_time(message, "expires_at"),
        )


@dataclass(frozen=True, slots=True)
class VersionInfo:
    """A version's metadata, never its value."""

    name: str
    version: int
    stage: str
    created_at: datetime | None
    reason: str
    next_rotation_due: datetime | None
    value_kept: bool = True
    expires_at: datetime | None = None

    @classmethod
    def from_proto(cls, message: pb.VersionInfo) -> VersionInfo:
        """Build the version's metadata from its protobuf message."""
        return cls(
            name=message.name,
            version=message.version,
            stage=_stage(message.stage),
            created_at=_time(message, "created_at"),
            reason=_reason(message.reason),
            next_rotation_due=_time(message, "next_rotation_due"),
            value_kept=message.value_kept,
            expires_at=_time(message, "expires_at"),
        )


@dataclass(frozen=True, slots=True)
class RotationEvent:
    """A new version became current."""

    event_id: int
    name: str
    old_version: int
    new_version: int
    reason: str
    rotated_at: datetime | None

    @classmethod
    def from_proto(cls, message: pb.RotationEvent) -> RotationEvent:
        """Build the event from its protobuf message."""
        return cls(
            event_id=message.event_id,
            name=message.name,
            old_version=message.old_version,
            new_version=message.new_version,
            reason=_reason(message.reason),
            rotated_at=_time(message, "rotated_at"),
        )


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """Who did what to which secret, when, and how it ended."""

    id: int
    at: datetime | None
    caller: str
    action: str
    name: str
    version: int
    outcome: str
    detail: str

    @classmethod
    def from_proto(cls, message: pb.AuditEvent) -> AuditEvent:
        """Build the record from its protobuf message."""
        return cls(
            id=message.id,
            at=_time(message, "at"),
            caller=message.caller,
            action=message.action,
            name=message.name,
            version=message.version,
            outcome=message.outcome,
            detail=message.detail,
        )


@dataclass(frozen=True, slots=True)
class AuditPage:
    """A page of the audit trail and the token of the next, empty on the last."""

    events: tuple[AuditEvent, ...]
    next_page_token: str

    @classmethod
    def from_proto(cls, message: pb.ListAuditEventsResponse) -> AuditPage:
        """Build the page from its protobuf message."""
        events = tuple(AuditEvent.from_proto(e) for e in message.events)
        return cls(events=events, next_page_token=message.next_page_token)


@dataclass(frozen=True, slots=True)
class SecretInfo:
    """A secret's metadata, as ``ListSecrets`` reports it."""

    name: str
    current_version: int
    rotation_interval_days: int
    last_rotated_at: datetime | None
    next_rotation_due: datetime | None
    imported: bool
    written: bool = False
    overdue: bool = False
    # How many consumers lately reported using each version.
    consumers: dict[int, int] = field(default_factory=dict)
    # What makes new values: random, manual, postgres or keyring.
    rotator: str = ""
    # A rotation is under way.
    rotation_pending: bool = False
    # The last rotation was given up, and why; the current version stands.
    rotation_failed: bool = False
    rotation_failure: str = ""

    @classmethod
    def from_proto(cls, message: pb.SecretInfo) -> SecretInfo:
        """Build the metadata from its protobuf message."""
        return cls(
            name=message.name,
            current_version=message.current_version,
            rotation_interval_days=message.rotation_interval_days,
            last_rotated_at=_time(message, "last_rotated_at"),
            next_rotation_due=_time(message, "next_rotation_due"),
            imported=message.imported,
            written=message.written,
            overdue=message.overdue,
            consumers=dict(message.consumers_by_version),
            rotator=message.rotator,
            rotation_pending=message.rotation_pending,
            rotation_failed=message.rotation_failed,
            rotation_failure=message.rotation_failure,
        )
