"""The required secrets, their policies, and the grammar of secret names."""

from __future__ import annotations

import enum
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import parse_qs, unquote, urlsplit

import regex
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
)

from secretsvc.errors import InvalidRequest, StartupError

# Upper-case letters, digits and underscores, starting with a letter: the
# shape of an environment variable, so a secret can be exported as one.
NAME_PATTERN = re.compile(r"[A-Z][A-Z0-9_]{0,127}")
NAME_RULE = "an upper-case letter, then up to 127 of A-Z, 0-9 and _"
# PostgreSQL's limit on a role or database name; longer ones are cut short.
POSTGRES_NAME_BYTES = 63

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


class RotatorKind(enum.Enum):
    """What produces a secret's new values and applies them where they are used."""

    # The service draws a random value; nothing outside the store changes.
    RANDOM = "random"
    # Operators write each value with PutSecret.
    MANUAL = "manual"
    # A database login role's password changes with the URL that holds it.
    POSTGRES = "postgres"
    # The keyring's data key: a new term, kept inside the store.
    KEYRING = "keyring"


@dataclass(frozen=True, slots=True)
class PostgresTarget:
    """The database whose login roles the postgres rotator manages."""

    # The login roles: one changes password in place; two alternate.
    roles: tuple[str, ...]
    host: str
    port: int
    database: str
    # How the administrator connects: a URL, or the name of a secret holding one.
    admin_url: str | None = None
    admin_url_secret: str | None = None
    # The scheme of the URLs handed out, e.g. "postgresql+asyncpg".
    scheme: str = "postgresql"
    connect_timeout_seconds: float = 10.0

    def __repr__(self) -> str:
        # The admin URL may carry a password.
        return (
            f"PostgresTarget(roles={self.roles!r}, host={self.host!r}, "
            f"port={self.port}, database={self.database!r})"
        )


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
    # None: the default for the source (random, manual or keyring).
    rotator: RotatorKind | None = None
    # Where the postgres rotator applies values.
    target: PostgresTarget | None = None
    # A rotation the target refuses is tried this many times, waiting
    # retry_backoff_seconds, then twice as long each time, before it is
    # given up.
    max_attempts: int = 5
    retry_backoff_seconds: float = 30.0

    @property
    def rotator_kind(self) -> RotatorKind:
        """The rotator that makes this secret's values."""
        if self.rotator is not None:
            return self.rotator
        if self.source is Source.DATA_KEY:
            return RotatorKind.KEYRING
        if self.source is Source.GENERATED:
            return RotatorKind.RANDOM
        return RotatorKind.MANUAL


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


MAX_INTERVAL_DAYS = 36_500
# Variables an imported secret may not read: the root key, and the service's
# own settings (tokens, keys for rekey), which are never stored or served.
_PROTECTED_VARIABLES = re.compile(r"PASSWORD_MASTER_KEY(_FILE)?|SECRETSVC_.*")


def _interval(value: object) -> object:
    if value == "never" or (type(value) is int and 1 <= value <= MAX_INTERVAL_DAYS):
        return value
    raise ValueError(
        f'give a whole number of days from 1 to {MAX_INTERVAL_DAYS}, or "never"'
    )


Interval = Annotated[int | Literal["never"], BeforeValidator(_interval)]


class _Entry(BaseModel):
    """One ``[secrets.NAME]`` table of a catalog file; every key is optional."""

    # Strict: a TOML true is not a number of days, nor "no" a false.
    model_config = ConfigDict(extra="forbid", strict=True)

    rotation_interval_days: Interval | None = None
    min_length: int | None = Field(default=None, ge=1, le=4096)
    source: Literal["generated", "imported", "written"] | None = None
    alphabet: Literal["base64url", "hex", "alphanumeric"] | None = None
    servable: bool | None = None
    import_from: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    format: str | None = Field(default=None, min_length=1, max_length=1000)
    grace_period_hours: float | None = Field(default=None, ge=0, le=24 * 366)
    retain_versions: int | None = Field(default=None, ge=2, le=1000)
    rotator: Literal["random", "manual", "postgres"] | None = None
    postgres: _PostgresEntry | None = None
    max_attempts: int | None = Field(default=None, ge=1, le=100)
    retry_backoff_seconds: float | None = Field(default=None, ge=0, le=86400)


# What the user and password of an administrator URL may hold: unreserved
# characters and percent escapes. Anything else ("@", "/", "#", ...) is read
# differently by different URL parsers, and would put part of the password
# where a host or port belongs, and into error messages.
_USERINFO = re.compile(r"[A-Za-z0-9._~%!$&'()*+,;=-]+(:[A-Za-z0-9._~%!$&'()*+,;=:-]*)?")


def admin_url_problem(url: str) -> str | None:
    """Say what is wrong with an administrator URL, never quoting it; or None."""
    scheme, sep, rest = url.partition("://")
    userinfo, at, _ = rest.rpartition("@")
    if not sep or not scheme.startswith("postgres"):
        return "is not a postgresql:// URL"
    if at and not _USERINFO.fullmatch(userinfo):
        return (
            "needs its user and password percent-encoded: any character but "
            "letters, digits and -._~ written as %XX"
        )
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - parsing it is the check
    except ValueError:
        return "does not give a host and port that can be read"
    if parts.hostname is None:
        return "names no host"
    return None


def admin_users(url: str) -> set[str]:
    """Return the users an admin URL may log in as: its own, and ``?user=``."""
    try:
        parts = urlsplit(url)
        users = {unquote(parts.username)} if parts.username else set()
    except ValueError:
        return set()
    users.update(parse_qs(parts.query).get("user", []))
    return users


def _postgres_name(text: str) -> str:
    # PostgreSQL cuts longer names to 63 bytes, which may name another role.
    if len(text.encode()) > POSTGRES_NAME_BYTES:
        raise ValueError(f"a PostgreSQL name is at most {POSTGRES_NAME_BYTES} bytes")
    if "\x00" in text:
        raise ValueError("a PostgreSQL name holds no NUL character")
    return text


PostgresName = Annotated[str, Field(min_length=1), AfterValidator(_postgres_name)]


class _PostgresEntry(BaseModel):
    """The ``[secrets.NAME.postgres]`` table of a postgres-rotated secret."""

    model_config = ConfigDict(extra="forbid", strict=True)

    admin_url: str | None = Field(default=None, min_length=1, max_length=2000)
    admin_url_secret: str | None = None
    roles: list[PostgresName] = Field(min_length=1, max_length=2)
    host: str | None = Field(default=None, min_length=1, max_length=255)
    port: int | None = Field(default=None, ge=1, le=65535)
    database: PostgresName | None = None
    scheme: str = Field(default="postgresql", pattern=r"^postgres(ql)?(\+\w+)?$")
    connect_timeout_seconds: float = Field(default=10.0, gt=0, le=300)


class _CatalogFile(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

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
        rotator = "random"               # "manual", "postgres" (see below)

    A postgres-rotated secret names its database and login roles::

        [secrets.DATABASE_URL]
        rotator = "postgres"
        [secrets.DATABASE_URL.postgres]
        admin_url_secret = "DATABASE_ADMIN_URL"  # or admin_url = "postgresql://..."
        roles = ["app_a", "app_b"]               # two alternate; one changes in place
        host = "db.internal"                     # host, port and database default
        port = 5432                              # to the admin URL's
        database = "app"

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
    changes = entry.model_dump(exclude_none=True, exclude={"postgres"})
    if changes.get("rotation_interval_days") == "never":
        changes["rotation_interval_days"] = None
    if "source" in changes:
        changes["source"] = Source(changes["source"])
    if "alphabet" in changes:
        changes["alphabet"] = Alphabet(changes["alphabet"])
    if "rotator" in changes:
        changes["rotator"] = RotatorKind(changes["rotator"])
    policy = replace(policy, **changes)
    given = policy.source in (Source.IMPORTED, Source.WRITTEN)
    if base is None and entry.min_length is None and given:
        # The 32-character floor is for values the service draws; what an
        # operator gives is as long as it is, unless the entry says otherwise.
        policy = replace(policy, min_length=1)

    if policy.rotator is RotatorKind.POSTGRES:
        if entry.postgres is None:
            raise problem(f"a postgres rotator needs a [secrets.{name}.postgres] table")
        target = _target(entry.postgres, problem)
        # The service makes the values; an URL already in the environment is
        # still imported at first login.
        policy = replace(policy, source=Source.GENERATED, target=target)
        if entry.source is not None and entry.source != "generated":
            raise problem("a postgres-rotated secret is generated by the service")
    elif entry.postgres is not None:
        raise problem('a postgres table needs rotator = "postgres"')
    if policy.rotator is RotatorKind.RANDOM and policy.source is not Source.GENERATED:
        raise problem("the random rotator is for generated secrets")
    if policy.rotator is RotatorKind.MANUAL and policy.source is Source.GENERATED:
        raise problem('a manual rotator needs source = "written" or "imported"')

    # A built-in imported secret made generated or written forgets its
    # variable, unless a postgres rotator imports a first URL from it.
    forgets = policy.source is not Source.IMPORTED and entry.import_from is None
    if forgets and policy.rotator is not RotatorKind.POSTGRES:
        policy = replace(policy, import_from=None)
    if policy.source is Source.IMPORTED and policy.import_from is None:
        policy = replace(policy, import_from=name)
    if policy.import_from and _PROTECTED_VARIABLES.fullmatch(policy.import_from):
        raise problem(
            f"{policy.import_from} holds the service's own keys or settings and "
            "is never imported"
        )
    postgres = policy.rotator is RotatorKind.POSTGRES
    if policy.source is Source.GENERATED and policy.import_from and not postgres:
        raise problem("import_from is only for imported secrets")
    if policy.format is not None:
        if policy.source is not Source.WRITTEN:
            raise problem("format is only for written secrets")
        try:
            regex.compile(policy.format)
        except regex.error as error:
            raise problem(f"format is not a regular expression: {error}") from None
    return policy


def _target(
    entry: _PostgresEntry, problem: Callable[[str], StartupError]
) -> PostgresTarget:
    if (entry.admin_url is None) == (entry.admin_url_secret is None):
        raise problem("postgres: give exactly one of admin_url and admin_url_secret")
    if entry.admin_url_secret is not None and not NAME_PATTERN.fullmatch(
        entry.admin_url_secret
    ):
        raise problem(f"postgres.admin_url_secret is not {NAME_RULE}")
    if len(set(entry.roles)) != len(entry.roles):
        raise problem("postgres.roles names the same role twice")
    for role in entry.roles:
        if "\x00" in role or not role.isprintable():
            raise problem("postgres.roles holds a name that is not printable")
    host, port, database = entry.host, entry.port, entry.database
    if entry.admin_url is not None:
        # Never echoed: it may carry a password.
        wrong = admin_url_problem(entry.admin_url)
        if wrong is not None:
            raise problem(f"postgres.admin_url {wrong}")
        parts = urlsplit(entry.admin_url)
        if admin_users(entry.admin_url) & set(entry.roles):
            raise problem(
                "postgres.roles names the admin URL's own role: the postgres "
                "rotator only manages application roles"
            )
        host = host or parts.hostname
        port = port or parts.port or 5432
        database = database or unquote(parts.path.lstrip("/")) or None
    if host is None or database is None:
        raise problem("postgres: host and database are needed")
    try:
        _postgres_name(database)
    except ValueError as error:
        raise problem(f"postgres: the database name: {error}") from None
    return PostgresTarget(
        roles=tuple(entry.roles),
        host=host,
        port=port or 5432,
        database=database,
        admin_url=entry.admin_url,
        admin_url_secret=entry.admin_url_secret,
        scheme=entry.scheme,
        connect_timeout_seconds=entry.connect_timeout_seconds,
    )
