"""Storage: SQLAlchemy tables, the async repository and Alembic migrations."""

from secretsvc.store.migrate import migrate
from secretsvc.store.repository import Store, StoreTransaction, redact_url

__all__ = ["Store", "StoreTransaction", "migrate", "redact_url"]
