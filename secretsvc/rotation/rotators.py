"""Rotators: what produces a secret's new values and applies them where used.

Every rotation takes the same four steps, whatever the rotator: the manager
stores the pending version sealed, the rotator applies it to its target and
verifies it there, and the manager promotes it with its event and audit
record. A new rotator is one small class: :meth:`Rotator.produce`, and
:meth:`Rotator.apply` and :meth:`Rotator.verify` when it has a target.
"""

from __future__ import annotations

import abc
import base64
import logging
import secrets
import string
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any, ClassVar
from urllib.parse import quote, unquote, urlsplit

import asyncpg
import scramp

from secretsvc.catalog import (
    Alphabet,
    PostgresTarget,
    RotatorKind,
    SecretPolicy,
    admin_url_problem,
    admin_users,
)
from secretsvc.errors import NotRotatable, RollbackRefused, TargetRefused

logger = logging.getLogger(__name__)

# 64 characters carry at least 256 bits in each alphabet but hex (which gets
# 64 hex digits, 256 bits, too).
DEFAULT_LENGTH = 64
_ALPHANUMERIC = string.ascii_letters + string.digits
# Letters and digits only: a password that needs no escaping in a URL.
PASSWORD_LENGTH = 48
SCRAM_ITERATIONS = 4096
# The SQLSTATE of ALTER ROLE on a role that does not exist.
UNDEFINED_OBJECT = "42704"


def generate_value(policy: SecretPolicy) -> str:
    """Return a new random value for ``policy`` from the system's CSPRNG.

    The value is in the policy's alphabet and never shorter than its minimum.
    """
    length = max(DEFAULT_LENGTH, policy.min_length)
    if policy.alphabet is Alphabet.HEX:
        return secrets.token_hex((length + 1) // 2)[:length]
    if policy.alphabet is Alphabet.ALPHANUMERIC:
        return "".join(secrets.choice(_ALPHANUMERIC) for _ in range(length))
    return secrets.token_urlsafe(length)[:length]


class Rotator(abc.ABC):
    """Produce a secret's next value, and apply and verify it on its target."""

    kind: ClassVar[RotatorKind]
    # Whether apply and verify reach a system outside the store. Without a
    # target the four steps run in one transaction: nothing lies between
    # them that a crash could split.
    has_target: ClassVar[bool] = False

    @abc.abstractmethod
    def produce(self, policy: SecretPolicy, current: str | None) -> str:
        """Return a new value; ``current`` is the current one, if any."""

    def check_restore(self, value: str, current: str | None) -> None:  # noqa: B027
        """Refuse to restore an earlier ``value`` if that breaks ``current``.

        Raises:
            RollbackRefused: saying why.
        """

    async def apply(self, value: str) -> None:  # noqa: B027 - nothing to apply
        """Make ``value`` work on the target; running it twice does no harm.

        Raises:
            TargetRefused: the target refused or could not be reached.
        """

    async def verify(self, value: str) -> None:  # noqa: B027 - nothing to check
        """Check on the target that ``value`` works.

        Raises:
            TargetRefused: it does not.
        """

    async def retire(  # noqa: B027 - nothing to retire
        self, previous: str, current: str, until: datetime
    ) -> None:
        """Let ``previous`` stop working on the target at ``until``."""

    async def undo(  # noqa: B027 - nothing to undo
        self, failed: str, earlier: Sequence[tuple[str, datetime | None]]
    ) -> None:
        """After ``failed`` was refused, make the target work as it did before.

        Args:
            failed: the value whose apply or verify failed; the target may
                have taken it.
            earlier: the values that should still work, newest first, each
                with the moment it stops working (None: never).

        Raises:
            TargetRefused: the target could not be put back.
        """


class RandomRotator(Rotator):
    """A random value from the CSPRNG; nothing outside the store changes."""

    kind = RotatorKind.RANDOM

    def produce(self, policy: SecretPolicy, current: str | None) -> str:
        """Draw a new value in the policy's alphabet and length."""
        return generate_value(policy)


class ManualRotator(Rotator):
    """Operators write each value; the service never invents one."""

    kind = RotatorKind.MANUAL

    def produce(self, policy: SecretPolicy, current: str | None) -> str:
        """Refuse: an operator writes this secret with PutSecret."""
        raise NotRotatable(
            f"secret '{policy.name}' is written by operators: write a new value "
            "with PutSecret",
            name=policy.name,
        )


class PostgresRotator(Rotator):
    r"""A PostgreSQL login role's password, and the URL that logs in with it.

    With one role the password changes in place: the previous URL stops
    working as soon as the new password is applied. With two roles they
    alternate, so the previous URL keeps working until its grace period ends,
    when the role's password expires (``VALID UNTIL``).

    The new password never reaches the server, nor any SQL text: ``ALTER
    ROLE`` receives its SCRAM-SHA-256 verifier, as ``psql``'s ``\password``
    does.
    """

    kind = RotatorKind.POSTGRES
    has_target = True

    def __init__(
        self, target: PostgresTarget, admin_url: Callable[[], Awaitable[str]]
    ) -> None:
        """Manage ``target``'s roles, connecting as the URL ``admin_url`` gives."""
        self.target = target
        self._admin_url = admin_url
        # Whether a login with a wrong password was tried (once per process).
        self._checked_open = False

    def produce(self, policy: SecretPolicy, current: str | None) -> str:
        """Return a URL for the next role with a new random password."""
        roles = self.target.roles
        role = roles[0]
        if len(roles) == 2 and current is not None:
            in_use = _credentials(current)[0]
            role = roles[1] if in_use == roles[0] else roles[0]
        length = max(PASSWORD_LENGTH, policy.min_length)
        shape = replace(policy, alphabet=Alphabet.ALPHANUMERIC, min_length=length)
        return self.url(role, generate_value(shape)[:length])

    def url(self, role: str, password: str) -> str:
        """Return the URL that logs ``role`` in to the target's database."""
        t = self.target
        host = f"[{t.host}]" if ":" in t.host else t.host
        return (
            f"{t.scheme}://{quote(role, safe='')}:{quote(password, safe='')}"
            f"@{host}:{t.port}/{quote(t.database, safe='')}"
        )

    def check_restore(self, value: str, current: str | None) -> None:
        """Refuse an earlier URL of a role not managed here, or of the current role.

        A role not managed here (an imported URL's) cannot be given a
        password. When roles alternate, applying an earlier URL of the current
        URL's role would change the password the current URL logs in with,
        cutting off every client that holds it without a grace period.
        """
        role = role_of(value)
        if role not in self.target.roles:
            raise RollbackRefused(
                f"that version logs in as {role!r}, which is not a role this "
                "rotator manages; roll back to a version it made, or rotate"
            )
        if len(self.target.roles) < 2 or current is None:
            return
        if role == role_of(current):
            raise RollbackRefused(
                f"that version logs in as {role!r}, as the current one does: "
                "restoring its password would cut off the current URL at once; "
                "roll back to a version of the other role, or rotate"
            )

    async def apply(self, value: str) -> None:
        """Set the role's password to the URL's: ``ALTER ROLE ... PASSWORD``."""
        role, password = self._managed(value)
        statement = (
            f"ALTER ROLE {quote_ident(role)} PASSWORD "
            f"{quote_literal(scram_verifier(password))} VALID UNTIL 'infinity'"
        )
        await self._as_admin(statement, role, secrets_in_errors=(password,))

    async def verify(self, value: str) -> None:
        """Log in with the new URL and check who the server says we are."""
        role, password = _credentials(value)
        t = self.target
        try:
            connection = await self._log_in(role, password)
        except Exception as error:
            raise self._refused(
                "logging in with the new password", error, password
            ) from None
        try:
            who = await connection.fetchval(
                "SELECT current_user", timeout=t.connect_timeout_seconds
            )
        except Exception as error:
            raise self._refused(
                "asking who the new password logs in as", error, password
            ) from None
        finally:
            await _close(connection, t.connect_timeout_seconds)
        if who != role:
            raise TargetRefused(f"the new password logged in as {who!r}, not {role!r}")
        if not self._checked_open:
            self._checked_open = True
            if await self._logs_in_with_any_password(role):
                logger.warning(
                    "database %s at %s:%d lets role %r in with a wrong password "
                    "(trust authentication?): rotating its password protects "
                    "nothing until pg_hba.conf asks for one",
                    t.database,
                    t.host,
                    t.port,
                    role,
                )

    async def _logs_in_with_any_password(self, role: str) -> bool:
        """Tell whether the target lets ``role`` in with a password it never had."""
        try:
            connection = await self._log_in(role, secrets.token_urlsafe(32))
        except Exception:
            return False
        await _close(connection, self.target.connect_timeout_seconds)
        return True

    async def _log_in(self, role: str, password: str) -> asyncpg.Connection:
        """Connect to the target's database as ``role`` with ``password``."""
        t = self.target
        connection: asyncpg.Connection = await asyncpg.connect(
            host=t.host,
            port=t.port,
            user=role,
            password=password,
            database=t.database,
            timeout=t.connect_timeout_seconds,
        )
        return connection

    async def retire(self, previous: str, current: str, until: datetime) -> None:
        """Expire the previous role's password at ``until``, when roles alternate."""
        try:
            old_role = _credentials(previous)[0]
        except TargetRefused:
            return
        if old_role == _credentials(current)[0] or old_role not in self.target.roles:
            return
        statement = (
            f"ALTER ROLE {quote_ident(old_role)} "
            f"VALID UNTIL {quote_literal(until.isoformat())}"
        )
        # A role dropped since has no password left to expire.
        await self._as_admin(
            statement, old_role, secrets_in_errors=(), unless=UNDEFINED_OBJECT
        )

    async def undo(
        self, failed: str, earlier: Sequence[tuple[str, datetime | None]]
    ) -> None:
        """Give the failed value's role back the password it had, or none.

        With one role that is the current URL's password; with two, the
        previous URL's, expiring when its grace ends. A role that no value
        still logs in as gets no password at all.
        """
        role = role_of(failed)
        if role is None or role not in self.target.roles:
            return
        for url, until in earlier:
            if role_of(url) != role:
                continue
            password = _credentials(url)[1]
            valid_until = "infinity" if until is None else until.isoformat()
            statement = (
                f"ALTER ROLE {quote_ident(role)} PASSWORD "
                f"{quote_literal(scram_verifier(password))} "
                f"VALID UNTIL {quote_literal(valid_until)}"
            )
            await self._as_admin(
                statement,
                role,
                secrets_in_errors=(password,),
                unless=UNDEFINED_OBJECT,
            )
            return
        await self._as_admin(
            f"ALTER ROLE {quote_ident(role)} PASSWORD NULL",
            role,
            secrets_in_errors=(),
            unless=UNDEFINED_OBJECT,
        )

    def _managed(self, value: str) -> tuple[str, str]:
        role, password = _credentials(value)
        if role not in self.target.roles:
            raise TargetRefused(
                f"role {role!r} is not one this rotator manages", untouched=True
            )
        return role, password

    async def _as_admin(
        self,
        statement: str,
        role: str,
        *,
        secrets_in_errors: tuple[str, ...],
        unless: str | None = None,
    ) -> None:
        """Run ``statement`` on ``role`` as the administrator.

        SQLSTATE ``unless`` is no error. The administrator's own role is
        never changed: its password would be handed out to applications, and
        the admin URL would stop logging in.
        """
        t = self.target
        admin_url = await self._admin_url()
        wrong = admin_url_problem(admin_url)
        if wrong is not None:
            raise TargetRefused(f"the administrator URL {wrong}", untouched=True)
        own = TargetRefused(
            f"role {role!r} is the administrator's own: the postgres rotator "
            "only manages application roles",
            untouched=True,
        )
        if role in admin_users(admin_url):
            raise own
        hidden = (*secrets_in_errors, admin_url, *_url_secrets(admin_url))
        try:
            connection = await asyncpg.connect(
                dsn=_without_driver(admin_url), timeout=t.connect_timeout_seconds
            )
        except Exception as error:
            raise TargetRefused(
                f"connecting as the administrator{_where(admin_url)} failed: "
                f"{describe(error, hidden)}",
                untouched=True,
            ) from None
        try:
            # The server says who the administrator is, whatever the URL's
            # spelling (a default user, PGUSER, a service file).
            who = await connection.fetchval(
                "SELECT current_user", timeout=t.connect_timeout_seconds
            )
            if who == role:
                raise own
            await connection.execute(statement, timeout=t.connect_timeout_seconds)
        except TargetRefused:
            raise
        except Exception as error:
            sqlstate = getattr(error, "sqlstate", None)
            if unless is not None and sqlstate == unless:
                return
            refused = self._refused("changing the password", error, *hidden)
            # The server answered with an error: the statement did nothing.
            # A lost connection or a timeout leaves that unknown.
            refused.untouched = isinstance(error, asyncpg.PostgresError)
            raise refused from None
        finally:
            await _close(connection, t.connect_timeout_seconds)

    def _refused(self, doing: str, error: BaseException, *hidden: str) -> TargetRefused:
        t = self.target
        return TargetRefused(
            f"database {t.database} at {t.host}:{t.port}: {doing} failed: "
            f"{describe(error, hidden)}"
        )


async def _close(connection: asyncpg.Connection, within: float) -> None:
    """Close a connection; one that does not close in time is dropped."""
    try:
        await connection.close(timeout=within)
    except Exception:
        connection.terminate()


def describe(error: BaseException, hidden: tuple[str, ...] = ()) -> str:
    """Say what went wrong in one line, with every ``hidden`` string blotted out."""
    sqlstate: Any = getattr(error, "sqlstate", None)
    text = str(error).splitlines()[0] if str(error) else type(error).__name__
    for secret in sorted((h for h in hidden if h), key=len, reverse=True):
        text = text.replace(secret, "***")
    prefix = f"{sqlstate} " if isinstance(sqlstate, str) else ""
    return f"{prefix}{text}"[:300]


def scram_verifier(password: str) -> str:
    """Return the SCRAM-SHA-256 verifier PostgreSQL stores for ``password``."""
    mechanism = scramp.ScramMechanism("SCRAM-SHA-256")
    salt, stored_key, server_key, iterations = mechanism.make_auth_info(
        password, iteration_count=SCRAM_ITERATIONS
    )

    def b64(raw: bytes) -> str:
        return base64.b64encode(raw).decode()

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


def quote_ident(name: str) -> str:
    """Quote an SQL identifier: every double quote doubled, the whole quoted."""
    if "\x00" in name:
        raise TargetRefused("a role name holds a NUL character")
    return '"' + name.replace('"', '""') + '"'


def quote_literal(text: str) -> str:
    """Quote an SQL string literal that holds no secret (a verifier, a time)."""
    if "\x00" in text or "\\" in text:
        raise TargetRefused("a literal holds a character it may not")
    return "'" + text.replace("'", "''") + "'"


def role_of(url: str) -> str | None:
    """Return the role a database URL logs in as, or None if it names none."""
    try:
        return _credentials(url)[0]
    except TargetRefused:
        return None


def _credentials(url: str) -> tuple[str, str]:
    try:
        parts = urlsplit(url)
        user, password = parts.username, parts.password
    except ValueError:
        user = password = None
    if not user or password is None:
        raise TargetRefused("the URL names no role and password")
    return unquote(user), unquote(password)


def _url_secrets(url: str) -> tuple[str, ...]:
    try:
        password = urlsplit(url).password
    except ValueError:
        return ()
    return (password, unquote(password)) if password else ()


def _where(url: str) -> str:
    """Say which server a URL points at, " at host:port", or nothing."""
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError:
        return ""
    return f" at {host}:{port or 5432}" if host else ""


def _without_driver(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    return f"{scheme.split('+')[0]}{sep}{rest}"


def rotator_for(
    policy: SecretPolicy, admin_url: Callable[[str], Awaitable[str]]
) -> Rotator:
    """Return the rotator the policy names.

    ``admin_url`` opens the current value of a secret by name, for a target
    whose administrator URL is kept in the store.
    """
    kind = policy.rotator_kind
    if kind is RotatorKind.POSTGRES:
        target = policy.target
        assert target is not None

        async def resolve() -> str:
            if target.admin_url is not None:
                return target.admin_url
            assert target.admin_url_secret is not None
            return await admin_url(target.admin_url_secret)

        return PostgresRotator(target, resolve)
    if kind is RotatorKind.MANUAL:
        return ManualRotator()
    return RandomRotator()
