"""The required secrets, their policies, and the grammar of secret names."""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from secretsvc.errors import InvalidRequest

# Upper-case letters, digits and underscores, starting with a letter: the
# shape of an environment variable, so a secret can be exported as one.
NAME_PATTERN = re.compile(r"[A-Z][A-Z0-9_]{0,127}")
NAME_RULE = "an upper-case letter, then up to 127 of A-Z, 0-9 and _"

# The keyring's active data key, named like the root key variable that wraps it.
DATA_KEY_NAME = "PASSWORD_MASTER_KEY"


class Source(enum.Enum):
    """Where a secret's value comes from."""

    GENERATED = "generated"
    IMPORTED = "imported"
    DATA_KEY = "data_key"


@dataclass(frozen=True, slots=True)
class SecretPolicy:
    """How one secret is made, kept and served."""

    name: str
    rotation_interval_days: int
    min_length: int = 32
    source: Source = Source.GENERATED
    servable: bool = True
    # For imported secrets: the server environment variable to read at
    # initialization.
    import_from: str | None = None


DEFAULT_CATALOG: tuple[SecretPolicy, ...] = (
    SecretPolicy("JWT_SECRET", rotation_interval_days=90),
    SecretPolicy("CSRF_SECRET", rotation_interval_days=180),
    SecretPolicy(
        "DATABASE_URL",
        rotation_interval_days=180,
        min_length=1,
        source=Source.IMPORTED,
        import_from="DATABASE_URL",
    ),
    SecretPolicy(
        DATA_KEY_NAME,
        rotation_interval_days=365,
        source=Source.DATA_KEY,
        servable=False,
    ),
)


def check_name(name: str) -> str:
    """Return ``name`` if it follows the grammar.

    Raises:
        InvalidRequest: naming the rule, and the name only when it is short
            and printable enough to quote.
    """
    if NAME_PATTERN.fullmatch(name):
        return name
    if not name:
        raise InvalidRequest("secret name is empty")
    shown = repr(name) if len(name) <= 64 and name.isprintable() else "given"
    raise InvalidRequest(f"secret name {shown} is not {NAME_RULE}")
