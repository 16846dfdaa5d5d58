"""The SQL schema, as SQLAlchemy Core tables. Migrations create the same."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect

metadata = sa.MetaData()

# SQLite only auto-increments a column declared exactly INTEGER.
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


class UTCDateTime(sa.TypeDecorator[datetime]):
    """Store aware datetimes as UTC and read them back aware, on every dialect."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(
        self, value: datetime | None, dialect: Dialect
    ) -> datetime | None:
        """Refuse naive datetimes; write aware ones in UTC."""
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store")
        return value.astimezone(UTC)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        """Read a datetime back aware, in UTC; SQLite returns it naive."""
        if value is None:
            return None
        moment: datetime = value
        if moment.tzinfo is None:
            return moment.replace(tzinfo=UTC)
        return moment.astimezone(UTC)


# The platform's documented table: its columns stay as they are.
application_secrets = sa.Table(
    "application_secrets",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.String(128), nullable=False, unique=True),
    sa.Column("encrypted_value", sa.LargeBinary, nullable=False),
    sa.Column("min_length", sa.Integer, nullable=False),
    sa.Column("rotation_interval_days", sa.Integer, nullable=True),
    sa.Column("last_rotated_at", UTCDateTime, nullable=True),
    sa.Column("next_rotation_due", UTCDateTime, nullable=True),
    sa.Column("created_by", sa.String(256), nullable=False),
    sa.Column("is_active", sa.Boolean, nullable=False, default=True),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
)

secret_versions = sa.Table(
    "secret_versions",
    metadata,
    sa.Column("id", BigId, primary_key=True),
    sa.Column(
        "secret_id",
        sa.Integer,
        sa.ForeignKey("application_secrets.id"),
        nullable=False,
    ),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("stage", sa.String(16), nullable=False),
    sa.Column("sealed_value", sa.LargeBinary, nullable=True),
    sa.Column("key_term", sa.Integer, nullable=True),
    sa.Column("reason", sa.String(16), nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("created_by", sa.String(256), nullable=False),
    sa.UniqueConstraint("secret_id", "version", name="uq_secret_versions_version"),
)

keyring = sa.Table(
    "keyring",
    metadata,
    sa.Column("term", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("wrapped_key", sa.LargeBinary, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
)

# Single-row tables: the CHECK makes a second row impossible, so the
# database, not the process, settles who wrote first.
store_meta = sa.Table(
    "store_meta",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("key_salt", sa.LargeBinary, nullable=False),
    sa.Column("key_verifier", sa.LargeBinary, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.CheckConstraint("id = 1", name="ck_store_meta_single_row"),
)

master_user = sa.Table(
    "master_user",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("user_id", sa.String(256), nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.CheckConstraint("id = 1", name="ck_master_user_single_row"),
)

rotation_events = sa.Table(
    "rotation_events",
    metadata,
    sa.Column("id", BigId, primary_key=True),
    sa.Column("secret_name", sa.String(128), nullable=False, index=True),
    sa.Column("old_version", sa.Integer, nullable=False),
    sa.Column("new_version", sa.Integer, nullable=False),
    sa.Column("reason", sa.String(16), nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sqlite_autoincrement=True,
)

audit_records = sa.Table(
    "audit_records",
    metadata,
    sa.Column("id", BigId, primary_key=True),
    sa.Column("at", UTCDateTime, nullable=False, index=True),
    sa.Column("actor", sa.String(256), nullable=False),
    sa.Column("action", sa.String(32), nullable=False),
    sa.Column("secret_name", sa.String(128), nullable=True, index=True),
    sa.Column("version", sa.Integer, nullable=True),
    sa.Column("outcome", sa.String(32), nullable=False),
    sa.Column("detail", sa.String(512), nullable=True),
    sqlite_autoincrement=True,
)

# Bearer tokens: only a hash of each is kept; the token is shown once.
access_tokens = sa.Table(
    "access_tokens",
    metadata,
    sa.Column("token_id", sa.String(32), primary_key=True),
    sa.Column("name", sa.String(128), nullable=False, unique=True),
    sa.Column("token_hash", sa.LargeBinary, nullable=False),
    # The policy's grants, as JSON.
    sa.Column("grants", sa.Text, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("revoked_at", UTCDateTime, nullable=True),
)

# Which version of each secret each consumer last said it uses.
consumer_versions = sa.Table(
    "consumer_versions",
    metadata,
    sa.Column("consumer_id", sa.String(128), primary_key=True),
    sa.Column("secret_name", sa.String(128), primary_key=True),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("reported_at", UTCDateTime, nullable=False, index=True),
)

# A rotation in progress: its pending version, sealed before anything touches
# the target, and how far it got. A row whose sealed_value is gone and whose
# failed_at is set records the last rotation given up. One per secret.
pending_versions = sa.Table(
    "pending_versions",
    metadata,
    sa.Column("secret_name", sa.String(128), primary_key=True),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("sealed_value", sa.LargeBinary, nullable=True),
    sa.Column("key_term", sa.Integer, nullable=True),
    sa.Column("reason", sa.String(16), nullable=False),
    # created, applied or verified; retiring once promoted, until the
    # previous value has been expired on the target.
    sa.Column("step", sa.String(16), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("next_attempt_at", UTCDateTime, nullable=False),
    # The process driving it holds it until then; after, anyone may resume it.
    sa.Column("lease_until", UTCDateTime, nullable=False),
    sa.Column("owner", sa.String(64), nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("created_by", sa.String(256), nullable=False),
    sa.Column("failed_at", UTCDateTime, nullable=True),
    sa.Column("failure", sa.String(512), nullable=True),
)
