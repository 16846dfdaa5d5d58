"""The ``secretsvc`` command: run the server, or talk to one."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn, TypeVar, cast

import click
from pydantic import ValidationError
from secretsvc_client import BlockingSecretsClient, SecretsError, TLSConfig

from secretsvc.config import (
    DEFAULT_DATABASE_URL,
    DEFAULT_LISTEN,
    Settings,
    load_root_key,
)
from secretsvc.crypto import MIN_ROOT_KEY_LENGTH
from secretsvc.errors import SecretsError as DomainError
from secretsvc.errors import StartupError, StoreConflict
from secretsvc.logs import setup_logging
from secretsvc.model import TokenRecord
from secretsvc.store import StoreTransaction

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")


def _settings(**flags: Any) -> Settings:
    given = {name: value for name, value in flags.items() if value is not None}
    try:
        return Settings(**given)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors()
        )
        raise click.UsageError(problems) from None


def _fail(message: str) -> NoReturn:
    click.echo(f"secretsvc: {message}", err=True)
    sys.exit(1)


@click.group()
@click.version_option(package_name="secretsvc")
def main() -> None:
    """Generate, store, rotate and serve application secrets."""


@main.command()
@click.option("--listen", help=f"Address to listen on [{DEFAULT_LISTEN}].")
@click.option("--database-url", help="SQLAlchemy URL of the store.")
@click.option(
    "--rotation-interval", type=float, help="Seconds between rotation runs [3600]."
)
@click.option(
    "--dev-key-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="When no root key is set, use (and create) this development key file.",
)
@click.option(
    "--catalog",
    type=click.Path(dir_okay=False, path_type=Path),
    help="TOML file of secrets to add to the built-in catalog.",
)
@click.option(
    "--auth",
    type=click.Choice(["none", "token"]),
    help="token: every call needs a bearer token [none: loopback only].",
)
@click.option("--tls-cert", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--tls-key", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--tls-client-ca",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Require client certificates signed by this CA (mutual TLS).",
)
@click.option(
    "--tls-policy",
    type=click.Path(dir_okay=False, path_type=Path),
    help="TOML file granting client-certificate names their rights.",
)
@click.option("--log-level", help="DEBUG, INFO, WARNING or ERROR [INFO].")
def serve(**flags: Any) -> None:
    """Run the server until SIGTERM or SIGINT.

    Every option can also be set as SECRETSVC_<OPTION>, for example
    SECRETSVC_DATABASE_URL. The root key comes from PASSWORD_MASTER_KEY or
    PASSWORD_MASTER_KEY_FILE.
    """
    from secretsvc.server.app import serve as run_server

    settings = _settings(**flags)
    setup_logging(settings.log_level)
    try:
        root_key = load_root_key(settings)
        asyncio.run(run_server(settings, root_key))
    except StartupError as error:
        _fail(str(error))


@main.command()
@click.option("--database-url", help="SQLAlchemy URL of the store.")
def migrate(**flags: Any) -> None:
    """Bring the store's schema up to date, then exit."""
    from secretsvc.store import Store
    from secretsvc.store import migrate as run_migrations

    settings = _settings(**flags)
    setup_logging(settings.log_level)

    async def run() -> None:
        store = Store.open(settings.database_url)
        try:
            await run_migrations(store)
        finally:
            await store.close()

    asyncio.run(run())
    click.echo("store schema is up to date")


@dataclass(frozen=True)
class Connection:
    """Where and how a client command reaches the server."""

    target: str
    token: str | None
    tls: TLSConfig | None

    def open(self) -> BlockingSecretsClient:
        """Connect to the server."""
        # One call and gone: nothing to cache.
        return BlockingSecretsClient(
            self.target, token=self.token, tls=self.tls, cache=False
        )


_CLIENT_OPTIONS = (
    click.option(
        "--target",
        envvar="SECRETSVC_TARGET",
        default=DEFAULT_LISTEN,
        show_default=True,
        help="The server's address [env SECRETSVC_TARGET].",
    ),
    click.option(
        "--token",
        envvar="SECRETSVC_TOKEN",
        help="A bearer token [env SECRETSVC_TOKEN].",
    ),
    click.option(
        "--ca",
        envvar="SECRETSVC_CA",
        help="Use TLS, trusting this CA [env SECRETSVC_CA].",
    ),
    click.option(
        "--cert",
        envvar="SECRETSVC_CLIENT_CERT",
        help="Client certificate for mutual TLS [env SECRETSVC_CLIENT_CERT].",
    ),
    click.option(
        "--key",
        envvar="SECRETSVC_CLIENT_KEY",
        help="Client key for mutual TLS [env SECRETSVC_CLIENT_KEY].",
    ),
)


def client_command(function: F) -> F:
    """Make a command that reaches the server; client errors become one line."""

    @functools.wraps(function)
    def command(
        target: str,
        token: str | None,
        ca: str | None,
        cert: str | None,
        key: str | None,
        **kwargs: Any,
    ) -> None:
        tls = TLSConfig.from_files(ca, cert, key) if ca or cert or key else None
        connection = Connection(target, token, tls)
        try:
            function(connection, **kwargs)
        except SecretsError as error:
            _fail(f"{error.code.lower()}: {error.message}")

    wrapped: Any = command
    for option in _CLIENT_OPTIONS:
        wrapped = option(wrapped)
    return cast(F, main.command(name=function.__name__.rstrip("_"))(wrapped))


def _when(moment: datetime | None) -> str:
    return moment.isoformat(timespec="seconds") if moment else "-"


@client_command
@click.option("--user", "user_id", required=True, help="The user who logged in.")
def init(connection: Connection, user_id: str) -> None:
    """Initialize secrets as the auth service does on a login."""
    with connection.open() as client:
        result = client.initialize(user_id)
    role = "you" if result.is_master else "not you"
    click.echo(f"master user: {result.master_user_id} ({role})")
    click.echo(f"generated: {', '.join(result.generated) or '-'}")
    click.echo(f"already present: {', '.join(result.already_present) or '-'}")
    for skipped in result.skipped:
        click.echo(f"skipped: {skipped.name}: {skipped.reason}")


@client_command
@click.argument("name")
@click.option("--version", type=int, default=None, help="A version number.")
@click.option(
    "--stage",
    type=click.Choice(["current", "previous"], case_sensitive=False),
    help="A stage instead of a version.",
)
def get(
    connection: Connection, name: str, version: int | None, stage: str | None
) -> None:
    """Print a secret's value (its current version unless --version or --stage)."""
    with connection.open() as client:
        secret = client.get(name, version, stage=stage)
    click.echo(secret.value)


@client_command
@click.argument("name")
@click.option("--expect", type=int, help="Write only if this is the current version.")
def put(connection: Connection, name: str, expect: int | None) -> None:
    """Write a new version of an operator-written secret, read from standard input.

    The value never goes on the command line, where other users could see it.
    """
    value = sys.stdin.read().rstrip("\n")
    with connection.open() as client:
        info = client.put(name, value, expected_version=expect)
    click.echo(f"{info.name} is now version {info.version}")


@client_command
@click.argument("name")
def versions(connection: Connection, name: str) -> None:
    """List a secret's versions, newest first, without values."""
    with connection.open() as client:
        found = client.versions(name)
    now = datetime.now(UTC)
    for v in found:
        kept = "kept" if v.value_kept else "destroyed"
        expires = ""
        if v.expires_at is not None:
            verb = "expired" if v.expires_at <= now else "expires"
            expires = f" {verb} {_when(v.expires_at)}"
        click.echo(
            f"v{v.version:<5} {v.stage:<9} {_when(v.created_at)} {v.reason:<12} "
            f"{kept}{expires}"
        )


@client_command
@click.argument("name")
@click.argument("version", type=int)
def rollback(connection: Connection, name: str, version: int) -> None:
    """Make VERSION's value current again, as a new version."""
    with connection.open() as client:
        info = client.rollback(name, version)
    click.echo(f"{info.name} is now version {info.version} (the value of v{version})")


@client_command
@click.argument("name")
@click.option("--expect", type=int, help="Rotate only if this is the current version.")
def rotate(connection: Connection, name: str, expect: int | None) -> None:
    """Rotate a secret now."""
    with connection.open() as client:
        info = client.rotate(name, expected_version=expect)
    click.echo(
        f"{info.name} is now version {info.version}; "
        f"next due {_when(info.next_rotation_due)}"
    )


@client_command
def list_(connection: Connection) -> None:
    """List every secret, without values."""
    with connection.open() as client:
        secrets = client.list()
    click.echo(f"{'NAME':24} {'VERSION':>7} {'EVERY':>6}  LAST ROTATED / NEXT DUE")
    for s in secrets:
        every = f"{s.rotation_interval_days}d" if s.rotation_interval_days else "-"
        origin = " (imported)" if s.imported else " (written)" if s.written else ""
        origin += " OVERDUE" if s.overdue else ""
        origin += " ROTATING" if s.rotation_pending else ""
        origin += f" FAILED: {s.rotation_failure}" if s.rotation_failed else ""
        if s.consumers:
            on = ", ".join(f"v{v}: {n}" for v, n in sorted(s.consumers.items()))
            origin += f" (consumers {on})"
        click.echo(
            f"{s.name:24} {s.current_version:>7} {every:>6}  "
            f"{_when(s.last_rotated_at)} / {_when(s.next_rotation_due)}{origin}"
        )


@client_command
@click.option(
    "--since",
    type=click.IntRange(0, 2**63 - 1),
    default=0,
    help="Replay events after this id.",
)
@click.option("--name", "names", multiple=True, help="Only this secret; repeatable.")
def watch(connection: Connection, since: int, names: tuple[str, ...]) -> None:
    """Print rotation events as they happen, until interrupted."""
    with contextlib.suppress(KeyboardInterrupt), connection.open() as client:
        for event in client.watch(since, list(names)):
            click.echo(
                f"{event.event_id} {_when(event.rotated_at)} {event.name} "
                f"v{event.old_version} -> v{event.new_version} {event.reason}"
            )


@client_command
@click.option("--name", help="Only records of this secret.")
@click.option("--caller", help="Only records of this caller (token:NAME, tls:NAME).")
@click.option("--action", help="Only this action: read, rotate, initialize, ...")
@click.option("--outcome", help="Only this outcome: ok, denied, not_found, ...")
@click.option("--since", type=click.DateTime(), help="From this time (UTC).")
@click.option("--until", type=click.DateTime(), help="Before this time (UTC).")
@click.option("--limit", type=click.IntRange(1, 100_000), default=50, show_default=True)
def audit(
    connection: Connection,
    since: datetime | None,
    until: datetime | None,
    limit: int,
    **filters: str | None,
) -> None:
    """Print audit records, newest first (needs the admin right)."""
    bounds = {
        "since": since.replace(tzinfo=UTC) if since else None,
        "until": until.replace(tzinfo=UTC) if until else None,
    }
    shown, token = 0, ""
    with connection.open() as client:
        while shown < limit:
            page = client.audit(
                **filters,
                **bounds,
                page_size=min(limit - shown, 1000),
                page_token=token,
            )
            for e in page.events:
                version = f" v{e.version}" if e.version else ""
                detail = f" ({e.detail})" if e.detail else ""
                click.echo(
                    f"{_when(e.at)} {e.caller} {e.action} {e.name or '-'}{version} "
                    f"{e.outcome}{detail}"
                )
            shown += len(page.events)
            token = page.next_page_token
            if not token:
                break


@main.command()
@click.option("--database-url", help="SQLAlchemy URL of the store.")
@click.option(
    "--new-key-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="File holding the new root key [or env SECRETSVC_NEW_ROOT_KEY].",
)
def rekey(database_url: str | None, new_key_file: Path | None) -> None:
    """Re-wrap the keyring under a new root key, in one transaction.

    The old key comes from PASSWORD_MASTER_KEY or PASSWORD_MASTER_KEY_FILE,
    as for serve. Restart every server with the new key afterwards.
    """
    from secretsvc.service import rekey as rekey_store
    from secretsvc.store import Store

    settings = _settings(database_url=database_url)
    try:
        old_key = load_root_key(settings)
        new_key = _new_root_key(new_key_file)
    except StartupError as error:
        _fail(str(error))

    async def run() -> int:
        store = await Store.open_existing(settings.database_url)
        try:
            async with store.read() as tx:
                count = len(await tx.key_terms())
            with click.progressbar(
                length=count, label="re-wrapping keyring terms", file=sys.stderr
            ) as bar:
                return await rekey_store(
                    store, old_key, new_key, on_term=lambda _term: bar.update(1)
                )
        finally:
            await store.close()

    try:
        terms = asyncio.run(run())
    except (StartupError, DomainError) as error:
        _fail(str(error))
    click.echo(f"re-keyed: {terms} keyring terms now open with the new root key only")


def _new_root_key(path: Path | None) -> str:
    if path is not None:
        try:
            key = path.read_text().strip()
        except OSError as error:
            message = f"new key file {path} cannot be read: {error.strerror}"
            raise StartupError(message) from None
    else:
        key = os.environ.get("SECRETSVC_NEW_ROOT_KEY", "")
        if not key:
            raise StartupError(
                "no new root key: set SECRETSVC_NEW_ROOT_KEY or --new-key-file"
            )
    if len(key) < MIN_ROOT_KEY_LENGTH:
        raise StartupError(
            f"the new root key needs at least {MIN_ROOT_KEY_LENGTH} characters"
        )
    return key


@main.group()
def token() -> None:
    """Create, list and revoke bearer tokens (straight on the store)."""


def _store_command(function: F) -> F:
    option = click.option(
        "--database-url",
        envvar="SECRETSVC_DATABASE_URL",
        default=DEFAULT_DATABASE_URL,
        help="SQLAlchemy URL of the store [env SECRETSVC_DATABASE_URL].",
    )
    return cast(
        F,
        token.command(name=function.__name__.removeprefix("token_"))(option(function)),
    )


@_store_command
@click.option("--name", required=True, help="Who the token is for, e.g. billing-api.")
@click.option(
    "--policy",
    "policy_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="TOML file of [[grant]] tables: actions and secret patterns.",
)
def token_create(database_url: str, name: str, policy_path: Path) -> None:
    """Create a token and print it, once; the store keeps only its hash."""
    from secretsvc.access import issue_token, load_policy

    try:
        grants = load_policy(policy_path)
    except StartupError as error:
        _fail(str(error))
    try:
        record, secret = issue_token(name, grants)
    except StartupError as error:
        _fail(str(error))
    try:
        _on_store(database_url, lambda tx: tx.add_token(record))
    except StoreConflict:
        _fail(
            f"a token named {name!r} exists already (a revoked token keeps its "
            "name); pick another name"
        )
    click.echo(secret)


@_store_command
def token_list(database_url: str) -> None:
    """List tokens: name, id, creation, revocation and grants; never a token."""
    from secretsvc.access import revoked_at_text, token_summary

    async def load(tx: StoreTransaction) -> list[TokenRecord]:
        return await tx.tokens()

    for record in _on_store(database_url, load):
        click.echo(
            f"{record.name:24} {record.token_id}  "
            f"{_when(record.created_at)}  {revoked_at_text(record.revoked_at):25}  "
            f"{token_summary(record)}"
        )


@_store_command
@click.option("--name", required=True, help="The token's name.")
def token_revoke(database_url: str, name: str) -> None:
    """Revoke a token; every replica refuses it within a second."""

    async def revoke(tx: StoreTransaction) -> bool:
        return await tx.revoke_token(name, datetime.now(UTC))

    if not _on_store(database_url, revoke):
        _fail(f"no live token named {name!r}")
    click.echo(f"token {name!r} revoked")


def _on_store(url: str, work: Callable[[StoreTransaction], Awaitable[T]]) -> T:
    try:
        return asyncio.run(_with_store(url, work))
    except (StartupError, DomainError) as error:
        _fail(str(error))


async def _with_store(url: str, work: Callable[[StoreTransaction], Awaitable[T]]) -> T:
    from secretsvc.store import Store, migrate

    store = await Store.open_existing(url)
    try:
        await migrate(store)
        async with store.write() as tx:
            return await work(tx)
    finally:
        await store.close()
