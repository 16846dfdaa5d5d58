"""Who may do what: callers, grants on secret-name patterns, and bearer tokens."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import hashlib
import hmac
import json
import logging
import re
import secrets
import tomllib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from fnmatch import fnmatchcase
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from secretsvc.audit import AuditTrail
from secretsvc.errors import AccessDenied, StartupError, Unauthenticated
from secretsvc.model import TokenRecord
from secretsvc.store import Store

logger = logging.getLogger(__name__)

# Revocations reach every replica within this many seconds.
TOKEN_REFRESH_SECONDS = 0.5
# A public marker that makes tokens easy to spot in a leak scan; not a secret.
TOKEN_PREFIX = "sst"  # noqa: S105
_TOKEN = re.compile(rf"{TOKEN_PREFIX}_([0-9a-f]{{16}})_([A-Za-z0-9_-]{{43}})")
_PATTERN = re.compile(r"[A-Z0-9_*]{1,128}")


class Action(enum.StrEnum):
    """What a caller may be allowed to do."""

    READ = "read"
    WRITE = "write"
    ROTATE = "rotate"
    INITIALIZE = "initialize"
    WATCH = "watch"
    ADMIN = "admin"


@dataclass(frozen=True, slots=True)
class Grant:
    """Actions allowed on the secrets whose names match any pattern."""

    actions: frozenset[Action]
    patterns: tuple[str, ...]

    def allows(self, action: Action, name: str | None) -> bool:
        """Tell whether this grant covers ``action`` on ``name``.

        With no name, the action on any secret of the grant's patterns will do.
        """
        if action not in self.actions and Action.ADMIN not in self.actions:
            return False
        return name is None or any(fnmatchcase(name, p) for p in self.patterns)

    def allows_everywhere(self, action: Action) -> bool:
        """Tell whether this grant covers ``action`` on every secret there is."""
        return self.allows(action, None) and EVERY_SECRET in self.patterns

    def to_json(self) -> dict[str, list[str]]:
        """Return the grant as JSON-ready data."""
        return {
            "actions": sorted(self.actions),
            "secrets": list(self.patterns),
        }


EVERY_SECRET = "*"  # noqa: S105 - a name pattern, not a password
EVERYTHING = (Grant(frozenset(Action), (EVERY_SECRET,)),)
# Actions on the store as a whole: a grant of them must name every secret.
STORE_WIDE = frozenset({Action.INITIALIZE})


@dataclass(frozen=True, slots=True)
class Credentials:
    """What a call presents: its authorization headers and client certificate."""

    authorization: tuple[str, ...] = ()
    certificate: bool = False
    common_names: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Caller:
    """An authenticated caller, by its identity, with what it may do."""

    identity: str
    grants: tuple[Grant, ...]
    # Whether the credential still holds: a long stream asks again.
    still_valid: Callable[[], bool] = field(default=lambda: True, compare=False)

    def require_valid(self) -> None:
        """Raise Unauthenticated once the caller's credential was revoked."""
        if not self.still_valid():
            raise Unauthenticated(f"the credential of {self.identity} was revoked")

    def allows(self, action: Action, name: str | None = None) -> bool:
        """Tell whether the caller may do ``action`` (on ``name``)."""
        return any(grant.allows(action, name) for grant in self.grants)

    def require(self, action: Action, name: str | None = None) -> None:
        """Raise AccessDenied unless the caller may do ``action`` (on ``name``)."""
        if not self.allows(action, name):
            target = f" on secret '{name}'" if name else ""
            raise AccessDenied(
                f"{self.identity} may not {action.value}{target}", name=name
            )

    def require_everywhere(self, action: Action) -> None:
        """Raise AccessDenied unless the caller may do ``action`` on every secret.

        Initializing creates every secret, and the audit trail speaks of every
        secret: a grant on some patterns does not reach them.
        """
        if not any(grant.allows_everywhere(action) for grant in self.grants):
            message = f"{self.identity} may not {action.value} on every secret"
            raise AccessDenied(message)

    @classmethod
    def system(cls, identity: str) -> Caller:
        """Return a caller inside the service, such as the scheduler."""
        return cls(identity, EVERYTHING)


class _GrantEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    actions: list[Action] = Field(min_length=1)
    secrets: list[str] = Field(min_length=1)


class _PolicyFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    grant: list[_GrantEntry] = Field(min_length=1)


def parse_policy(text: str, source: str) -> tuple[Grant, ...]:
    """Read a policy: TOML ``[[grant]]`` tables of actions and secret patterns.

        [[grant]]
        actions = ["read", "watch"]
        secrets = ["JWT_*", "CSRF_SECRET"]

    Raises:
        StartupError: naming ``source`` and the problem.
    """
    try:
        parsed = _PolicyFile.model_validate(tomllib.loads(text))
    except tomllib.TOMLDecodeError as error:
        raise StartupError(f"policy {source} is not valid TOML: {error}") from None
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise StartupError(f"policy {source}: {where}: {first['msg']}") from None
    return tuple(_check_grant(entry, f"policy {source}") for entry in parsed.grant)


def _check_grant(entry: _GrantEntry, where: str) -> Grant:
    for pattern in entry.secrets:
        if not _PATTERN.fullmatch(pattern):
            raise StartupError(
                f"{where}: secret pattern {pattern!r} may hold only A-Z, 0-9, _ and *"
            )
    for action in sorted(STORE_WIDE.intersection(entry.actions)):
        if EVERY_SECRET not in entry.secrets:
            raise StartupError(
                f"{where}: {action.value} acts on every secret; grant it on "
                f'secrets = ["{EVERY_SECRET}"]'
            )
    return Grant(frozenset(entry.actions), tuple(entry.secrets))


def load_policy(path: Path) -> tuple[Grant, ...]:
    """Read a policy file; see :func:`parse_policy`."""
    try:
        text = path.read_text()
    except OSError as error:
        raise StartupError(f"policy {path} cannot be read: {error.strerror}") from None
    return parse_policy(text, str(path))


def grants_to_json(grants: Iterable[Grant]) -> str:
    """Serialize grants for the store."""
    return json.dumps([grant.to_json() for grant in grants])


def grants_from_json(text: str) -> tuple[Grant, ...]:
    """Read grants written by :func:`grants_to_json`."""
    return tuple(
        Grant(frozenset(Action(a) for a in g["actions"]), tuple(g["secrets"]))
        for g in json.loads(text)
    )


def new_token() -> tuple[str, str, bytes]:
    """Return a new token's id, the token itself, and the hash to store."""
    token_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    token = f"{TOKEN_PREFIX}_{token_id}_{secret}"
    return token_id, token, _digest(secret)


def _digest(secret: str) -> bytes:
    # Tokens carry 256 random bits, so a plain hash cannot be brute-forced.
    return hashlib.sha256(secret.encode()).digest()


_DUMMY_HASH = _digest("no such token")


class Authenticator:
    """Turn a call's credential into a :class:`Caller`, from memory.

    Tokens are loaded from the store and refreshed every half second, so a
    check costs no database round trip and a revocation reaches every
    replica within a second.
    """

    def __init__(
        self,
        store: Store,
        audit: AuditTrail,
        *,
        required: bool,
        tls_identities: dict[str, tuple[Grant, ...]] | None = None,
    ) -> None:
        """Prepare the authenticator.

        Args:
            store: where tokens are kept.
            audit: where refused calls are recorded.
            required: False lets a call without credentials act as ``local``
                with every right (for a loopback-only server).
            tls_identities: grants of client-certificate common names.
        """
        self._store = store
        self._audit = audit
        self.required = required
        self._tls = tls_identities or {}
        self._tokens: dict[str, tuple[TokenRecord, tuple[Grant, ...]]] = {}
        self._fingerprint: tuple[object, ...] | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Load the tokens and keep them fresh in the background."""
        await self.refresh()
        self._task = asyncio.create_task(self._run(), name="secretsvc-tokens")

    async def stop(self) -> None:
        """Stop refreshing."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def refresh(self) -> None:
        """Reload the tokens if any was created or revoked since the last load."""
        async with self._store.read() as tx:
            fingerprint = await tx.tokens_fingerprint()
            if fingerprint == self._fingerprint:
                return
            tokens = await tx.tokens()
        self._tokens = {
            t.token_id: (t, grants_from_json(t.grants_json))
            for t in tokens
            if t.revoked_at is None
        }
        self._fingerprint = fingerprint

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(TOKEN_REFRESH_SECONDS)
            try:
                await self.refresh()
            except Exception:
                logger.warning("tokens not refreshed; retrying", exc_info=True)

    def authenticate(
        self, credentials: Credentials, peer: str, action: str, name: str | None
    ) -> Caller:
        """Return the caller that a call's credential names.

        Args:
            credentials: what the call presents.
            peer: where it comes from, for the audit trail.
            action: the audit trail's word for the call.
            name: the secret the call names, when it names a valid one.

        Raises:
            Unauthenticated: no credential where one is required, a token
                that is malformed, unknown or revoked, more than one
                authorization header, or a certificate with no common name.
                The refusal is audited.
        """
        try:
            return self._caller(credentials)
        except Unauthenticated as error:
            detail = str(error)
            token_id = _token_id(credentials.authorization)
            if token_id is not None:
                # The id is public (token list shows it); the secret part is not.
                detail = f"{detail} (token id {token_id})"
            actor = f"unknown {peer}"
            self._audit.record(actor, action, error.outcome, name, detail=detail)
            raise

    def _caller(self, credentials: Credentials) -> Caller:
        headers = credentials.authorization
        if len(headers) > 1:
            raise Unauthenticated("the call carries more than one authorization header")
        if headers:
            return self._token_caller(headers[0])
        if credentials.certificate:
            if not credentials.common_names:
                raise Unauthenticated("the client certificate names no common name")
            tls_name = credentials.common_names[0]
            return Caller(f"tls:{tls_name}", self._tls.get(tls_name, ()))
        if not self.required:
            return Caller("local", EVERYTHING)
        raise Unauthenticated(
            "no credential: send 'authorization: Bearer <token>' metadata "
            "or a client certificate"
        )

    def _token_caller(self, header: str) -> Caller:
        scheme, _, bearer = header.strip().partition(" ")
        match = _TOKEN.fullmatch(bearer.strip())
        if scheme.lower() != "bearer" or match is None:
            raise Unauthenticated(
                "the authorization header is not 'Bearer <token>' with a token "
                "this service issued"
            )
        token_id, secret = match.groups()
        found = self._tokens.get(token_id)
        # Compare a hash even for an unknown id, so timing tells nothing.
        expected = found[0].token_hash if found else _DUMMY_HASH
        if not hmac.compare_digest(_digest(secret), expected) or found is None:
            raise Unauthenticated("the bearer token is not valid or was revoked")
        record, grants = found
        return Caller(
            f"token:{record.name}",
            grants,
            still_valid=lambda: token_id in self._tokens,
        )


def _token_id(headers: tuple[str, ...]) -> str | None:
    """Return the public id of the first well-formed token among ``headers``."""
    for header in headers:
        match = _TOKEN.search(header)
        if match is not None:
            return match.group(1)
    return None


def token_summary(record: TokenRecord) -> str:
    """Describe a token's grants in one line, for listings."""
    parts = [
        f"{'+'.join(sorted(g.actions))} on {','.join(g.patterns)}"
        for g in grants_from_json(record.grants_json)
    ]
    return "; ".join(parts)


def revoked_at_text(moment: datetime | None) -> str:
    """Show a revocation time, or that the token is live."""
    return moment.isoformat(timespec="seconds") if moment else "active"


class _IdentityEntry(_GrantEntry):
    name: str = Field(min_length=1, max_length=256)


class _IdentityFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    identity: list[_IdentityEntry] = Field(min_length=1)


def load_tls_identities(path: Path) -> dict[str, tuple[Grant, ...]]:
    """Read which client-certificate common names may do what.

        [[identity]]
        name = "billing-service"      # the certificate's common name
        actions = ["read", "watch"]
        secrets = ["STRIPE_*"]

    An identity may appear in several entries; its grants add up.

    Raises:
        StartupError: naming the file and the problem.
    """
    try:
        parsed = _IdentityFile.model_validate(tomllib.loads(path.read_text()))
    except OSError as error:
        raise StartupError(
            f"TLS policy {path} cannot be read: {error.strerror}"
        ) from None
    except tomllib.TOMLDecodeError as error:
        raise StartupError(f"TLS policy {path} is not valid TOML: {error}") from None
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise StartupError(f"TLS policy {path}: {where}: {first['msg']}") from None
    identities: dict[str, tuple[Grant, ...]] = {}
    for entry in parsed.identity:
        grant = _check_grant(entry, f"TLS policy {path}")
        identities[entry.name] = (*identities.get(entry.name, ()), grant)
    return identities


TOKEN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def issue_token(name: str, grants: tuple[Grant, ...]) -> tuple[TokenRecord, str]:
    """Return a new token's record for the store, and the token to show once.

    Raises:
        StartupError: the name is not 1 to 64 of letters, digits, '.', '_', '-'.
    """
    if not TOKEN_NAME.fullmatch(name):
        raise StartupError(
            "a token name is 1 to 64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    token_id, token, token_hash = new_token()
    record = TokenRecord(
        token_id=token_id,
        name=name,
        token_hash=token_hash,
        grants_json=grants_to_json(grants),
        created_at=datetime.now(UTC),
    )
    return record, token
