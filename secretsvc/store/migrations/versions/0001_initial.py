"""Create the secrets, versions, keyring, master user, events and audit tables.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

from secretsvc.store.tables import BigId, UTCDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create the first schema."""
    op.create_table(
        "application_secrets",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(128), nullable=False, unique=True),
        sa.Column("encrypted_value", sa.LargeBinary, nullable=False),
        sa.Column("min_length", sa.Integer, nullable=False),
        sa.Column("rotation_interval_days", sa.Integer, nullable=True),
        sa.Column("last_rotated_at", UTCDateTime, nullable=True),
        sa.Column("next_rotation_due", UTCDateTime, nullable=True),
        sa.Column("created_by", sa.String(256), nullable=False),
        sa.Column("is_active", sa.Boolean, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
    )
    op.create_table(
        "secret_versions",
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
    op.create_table(
        "keyring",
        sa.Column("term", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("wrapped_key", sa.LargeBinary, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
    )
    op.create_table(
        "store_meta",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("key_salt", sa.LargeBinary, nullable=False),
        sa.Column("key_verifier", sa.LargeBinary, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.CheckConstraint("id = 1", name="ck_store_meta_single_row"),
    )
    op.create_table(
        "master_user",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("user_id", sa.String(256), nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.CheckConstraint("id = 1", name="ck_master_user_single_row"),
    )
    op.create_table(
        "rotation_events",
        sa.Column("id", BigId, primary_key=True),
        sa.Column("secret_name", sa.String(128), nullable=False),
        sa.Column("old_version", sa.Integer, nullable=False),
        sa.Column("new_version", sa.Integer, nullable=False),
        sa.Column("reason", sa.String(16), nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sqlite_autoincrement=True,
    )
    op.create_index(
        "ix_rotation_events_secret_name", "rotation_events", ["secret_name"]
    )
    op.create_table(
        "audit_records",
        sa.Column("id", BigId, primary_key=True),
        sa.Column("at", UTCDateTime, nullable=False),
        sa.Column("actor", sa.String(256), nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("secret_name", sa.String(128), nullable=True),
        sa.Column("version", sa.Integer, nullable=True),
        sa.Column("outcome", sa.String(32), nullable=False),
        sa.Column("detail", sa.String(512), nullable=True),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_audit_records_at", "audit_records", ["at"])
    op.create_index("ix_audit_records_secret_name", "audit_records", ["secret_name"])


def downgrade() -> None:
    """Drop every table."""
    for table in (
        "audit_records",
        "rotation_events",
        "master_user",
        "store_meta",
        "keyring",
        "secret_versions",
        "application_secrets",
    ):
        op.drop_table(table)
