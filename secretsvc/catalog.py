"""The required secrets, their policies, and the grammar of secret names."""

from __future__ import annotations

import enum
import re
import tomllib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from secretsvc.errors import InvalidRequest, StartupError

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
    # An operator writes each version with PutSecret.
    WRITTEN = "written"
    DATA_KEY = "data_key"


class Alphabet(enum.Enum):
    """The characters a generated value is made of."""

    BASE64URL = "base64url"
    HEX = "hex"
    ALPHANUMERIC = "alphanumeric"


@dataclass(frozen=True, slots=True)
class SecretPolicy:
    """How one secret is made, kept and served."""

    name: str
    # None: never rotated on a schedule.
    rotation_interval_days: int | None
    min_length: int = 32
    source: Source = Source.GENERATED
    alphabet: Alphabet = Alphabet.BASE64URL
    servable: bool = True
    # For imported secrets: the server environment variable to read at
    # initialization.
    import_from: str | None = None
    # For written secrets: a regular expression every value must match.
    format: str | None = None
    # How long a superseded version stays readable.
    grace_period_hours: float = 24.0
    # How many versions keep their value; older ones are destroyed.
    retain_versions: int = 10


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
    # A malformed name is never echoed: it may be a value pasted by mistake.
    raise InvalidRequest(f"secret name ({len(name)} characters) is not {NAME_RULE}")


class _Entry(BaseModel):
    """One ``[secrets.NAME]`` table of a catalog file; every key is optional."""

    model_config = ConfigDict(extra="forbid")

    rotation_interval_days: Annotated[int, Field(ge=1)] | Literal["never"] | None = None
    min_length: int | None = Field(default=None, ge=1, le=4096)
    source: Literal["generated", "imported", "written"] | None = None
    alphabet: Literal["base64url", "hex", "alphanumeric"] | None = None
    servable: bool | None = None
    import_from: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    format: str | None = Field(default=None, min_length=1, max_length=1000)
    grace_period_hours: float | None = Field(default=None, ge=0, le=24 * 366)
    retain_versions: int | None = Field(default=None, ge=2, le=1000)


class _CatalogFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    secrets: dict[str, _Entry] = {}


def load_catalog(path: Path | None) -> tuple[SecretPolicy, ...]:
    """Return the built-in catalog, with a TOML file's entries added or overriding.

    A file holds one table per secret, every key optional::

        [secrets.STRIPE_WEBHOOK_SECRET]
        rotation_interval_days = 30      # or "never"
        min_length = 48
        alphabet = "hex"                 # base64url (default), hex, alphanumeric
        source = "generated"             # "imported" (import_from), "written"
        servable = true
        grace_period_hours = 24          # superseded versions stay readable
        retain_versions = 10             # older versions' values are destroyed
        format = "^sk_live_[A-Za-z0-9]+$"  # written secrets only

    Raises:
        StartupError: naming the file, the entry and the problem.
    """
    policies = {policy.name: policy for policy in DEFAULT_CATALOG}
    if path is None:
        return tuple(policies.values())

    try:
        document = tomllib.loads(path.read_text())
        parsed = _CatalogFile.model_validate(document)
    except OSError as error:
        raise StartupError(f"catalog {path} cannot be read: {error.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise StartupError(f"catalog {path} is not valid TOML: {error}") from None
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise StartupError(f"catalog {path}: {where}: {first['msg']}") from None

    for name, entry in parsed.secrets.items():
        policies[name] = _policy(path, name, entry, policies.get(name))
    return tuple(policies.values())


def _policy(
    path: Path, name: str, entry: _Entry, base: SecretPolicy | None
) -> SecretPolicy:
    def problem(text: str) -> StartupError:
        return StartupError(f"catalog {path}: secrets.{name}: {text}")

    if not NAME_PATTERN.fullmatch(name):
        raise problem(f"the name is not {NAME_RULE}")
    if base is not None and base.source is Source.DATA_KEY:
        raise problem("the keyring's data key cannot be redefined")

    policy = base or SecretPolicy(name, rotation_interval_days=None)
    changes = entry.model_dump(exclude_none=True)
    if changes.get("rotation_interval_days") == "never":
        changes["rotation_interval_days"] = None
    if "source" in changes:
        changes["source"] = Source(changes["source"])
    if "alphabet" in changes:
        changes["alphabet"] = Alphabet(changes["alphabet"])
    policy = replace(policy, **changes)

    if policy.source is Source.IMPORTED and policy.import_from is None:
        policy = replace(policy, import_from=name)
    if policy.source is Source.GENERATED and policy.import_from is not None:
        raise problem("import_from is only for imported secrets")
    if policy.format is not None:
        if policy.source is not Source.WRITTEN:
            raise problem("format is only for written secrets")
        try:
            re.compile(policy.format)
        except re.error as error:
            raise problem(f"format is not a regular expression: {error}") from None
    return policy
