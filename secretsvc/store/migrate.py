"""Apply the Alembic migrations to a store."""

from __future__ import annotations

import logging
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config

from secretsvc.store.repository import Store

logger = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
# Any constant will do: it names the lock that keeps replicas from migrating
# the same database at once.
_MIGRATION_LOCK_ID = 0x5EC7E76


def alembic_config() -> Config:
    """Return the Alembic configuration of the store's migrations."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


async def migrate(store: Store, revision: str = "head") -> None:
    """Bring the store's schema to ``revision``."""

    def upgrade(connection: sa.Connection) -> None:
        if connection.dialect.name == "postgresql":
            connection.execute(
                sa.select(sa.func.pg_advisory_xact_lock(_MIGRATION_LOCK_ID))
            )
        config = alembic_config()
        config.attributes["connection"] = connection
        command.upgrade(config, revision)

    async with store.write() as tx:
        await tx.run_sync(upgrade)
    logger.debug("store schema is at %s", revision)
