"""The ``secretsvc`` command: run the server, or talk to one."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar, cast

import click
from pydantic import ValidationError
from secretsvc_client import BlockingSecretsClient, SecretsError

from secretsvc.config import DEFAULT_LISTEN, Settings, load_root_key
from secretsvc.errors import StartupError
from secretsvc.logs import setup_logging

F = TypeVar("F", bound=Callable[..., Any])


def _settings(**flags: Any) -> Settings:
    given = {name: value for name, value in flags.items() if value is not None}
    try:
        return Settings(**given)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors()
        )
        raise click.UsageError(problems) from None


def _fail(message: str) -> None:
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


def client_command(function: F) -> F:
    """Give a command ``--target`` and turn client errors into one line."""
    option = click.option(
        "--target",
        envvar="SECRETSVC_TARGET",
        default=DEFAULT_LISTEN,
        show_default=True,
        help="The server's address [env SECRETSVC_TARGET].",
    )
    command = main.command(name=function.__name__.rstrip("_"))(option(function))
    return cast(F, command)


def _when(moment: datetime | None) -> str:
    return moment.isoformat(timespec="seconds") if moment else "-"


def _connect(target: str) -> BlockingSecretsClient:
    return BlockingSecretsClient(target)


def _guard(call: Callable[[], None]) -> None:
    try:
        call()
    except SecretsError as error:
        _fail(f"{error.code.lower()}: {error.message}")


@client_command
@click.option("--user", "user_id", required=True, help="The user who logged in.")
def init(target: str, user_id: str) -> None:
    """Initialize secrets as the auth service does on a login."""

    def run() -> None:
        with _connect(target) as client:
            result = client.initialize(user_id)
        role = "you" if result.is_master else "not you"
        click.echo(f"master user: {result.master_user_id} ({role})")
        click.echo(f"generated: {', '.join(result.generated) or '-'}")
        click.echo(f"already present: {', '.join(result.already_present) or '-'}")
        for skipped in result.skipped:
            click.echo(f"skipped: {skipped.name}: {skipped.reason}")

    _guard(run)


@client_command
@click.argument("name")
@click.option("--version", type=int, default=None, help="A version number.")
def get(target: str, name: str, version: int | None) -> None:
    """Print a secret's value (its current version unless --version)."""

    def run() -> None:
        with _connect(target) as client:
            secret = client.get(name, version)
        click.echo(secret.value)

    _guard(run)


@client_command
@click.argument("name")
def rotate(target: str, name: str) -> None:
    """Rotate a secret now."""

    def run() -> None:
        with _connect(target) as client:
            info = client.rotate(name)
        click.echo(
            f"{info.name} is now version {info.version}; "
            f"next due {_when(info.next_rotation_due)}"
        )

    _guard(run)


@client_command
def list_(target: str) -> None:
    """List every secret, without values."""

    def run() -> None:
        with _connect(target) as client:
            secrets = client.list()
        click.echo(f"{'NAME':24} {'VERSION':>7} {'EVERY':>6}  LAST ROTATED / NEXT DUE")
        for s in secrets:
            every = f"{s.rotation_interval_days}d" if s.rotation_interval_days else "-"
            origin = " (imported)" if s.imported else ""
            click.echo(
                f"{s.name:24} {s.current_version:>7} {every:>6}  "
                f"{_when(s.last_rotated_at)} / {_when(s.next_rotation_due)}{origin}"
            )

    _guard(run)


@client_command
@click.option("--since", type=int, default=0, help="Replay events after this id.")
@click.option("--name", "names", multiple=True, help="Only this secret; repeatable.")
def watch(target: str, since: int, names: tuple[str, ...]) -> None:
    """Print rotation events as they happen, until interrupted."""

    def run() -> None:
        with _connect(target) as client:
            for event in client.watch(since, list(names)):
                click.echo(
                    f"{event.event_id} {_when(event.rotated_at)} {event.name} "
                    f"v{event.old_version} -> v{event.new_version} {event.reason}"
                )

    with contextlib.suppress(KeyboardInterrupt):
        _guard(run)
