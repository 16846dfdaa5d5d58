"""Add pending_versions: a rotation in progress, or the last one given up.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

from secretsvc.store.tables import UTCDateTime

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create pending_versions."""
    op.create_table(
        "pending_versions",
        sa.Column("secret_name", sa.String(128), primary_key=True),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("sealed_value", sa.LargeBinary, nullable=True),
        sa.Column("key_term", sa.Integer, nullable=True),
        sa.Column("reason", sa.String(16), nullable=False),
        sa.Column("step", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("next_attempt_at", UTCDateTime, nullable=False),
        sa.Column("lease_until", UTCDateTime, nullable=False),
        sa.Column("owner", sa.String(64), nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("created_by", sa.String(256), nullable=False),
        sa.Column("failed_at", UTCDateTime, nullable=True),
        sa.Column("failure", sa.String(512), nullable=True),
    )


def downgrade() -> None:
    """Drop pending_versions."""
    op.drop_table("pending_versions")
