"""Add consumer_versions: which version each consumer reports it uses.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

from secretsvc.store.tables import UTCDateTime

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create consumer_versions."""
    op.create_table(
        "consumer_versions",
        sa.Column("consumer_id", sa.String(128), primary_key=True),
        sa.Column("secret_name", sa.String(128), primary_key=True),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("reported_at", UTCDateTime, nullable=False),
    )
    op.create_index(
        "ix_consumer_versions_reported_at", "consumer_versions", ["reported_at"]
    )


def downgrade() -> None:
    """Drop consumer_versions."""
    op.drop_table("consumer_versions")
