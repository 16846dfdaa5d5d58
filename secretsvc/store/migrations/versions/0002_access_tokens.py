"""Add the access_tokens table for bearer-token authentication.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

from secretsvc.store.tables import UTCDateTime

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create access_tokens."""
    op.create_table(
        "access_tokens",
        sa.Column("token_id", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(128), nullable=False, unique=True),
        sa.Column("token_hash", sa.LargeBinary, nullable=False),
        sa.Column("grants", sa.Text, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("revoked_at", UTCDateTime, nullable=True),
    )


def downgrade() -> None:
    """Drop access_tokens."""
    op.drop_table("access_tokens")
