"""The catalog: built-in required secrets, and a TOML file that adds to them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from secretsvc.catalog import (
    DEFAULT_CATALOG,
    Alphabet,
    RotatorKind,
    Source,
    load_catalog,
)
from secretsvc.errors import StartupError
from tests.helpers import FakeClock, ServerProcess, running_server, sqlite_url

PG = "[secrets.DATABASE_URL]\nrotator = 'postgres'\n"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "catalog.toml"
    path.write_text(text)
    return path


def test_builtin_catalog_has_the_required_secrets() -> None:
    """Without a file, the four required secrets with their intervals."""
    policies = {p.name: p for p in load_catalog(None)}

    assert {n: p.rotation_interval_days for n, p in policies.items()} == {
        "JWT_SECRET": 90,
        "CSRF_SECRET": 180,
        "DATABASE_URL": 180,
        "PASSWORD_MASTER_KEY": 365,
    }
    assert policies["DATABASE_URL"].source is Source.IMPORTED
    assert not policies["PASSWORD_MASTER_KEY"].servable


def test_file_adds_and_overrides(tmp_path: Path) -> None:
    """A file adds new secrets and changes the keys it names of built-in ones."""
    path = write(
        tmp_path,
        """
        [secrets.WEBHOOK_KEY]
        rotation_interval_days = 30
        alphabet = "hex"
        min_length = 80

        [secrets.JWT_SECRET]
        rotation_interval_days = 30

        [secrets.SENTRY_DSN]
        source = "imported"
        rotation_interval_days = "never"
        """,
    )

    policies = {p.name: p for p in load_catalog(path)}

    assert len(policies) == len(DEFAULT_CATALOG) + 2
    assert policies["WEBHOOK_KEY"].alphabet is Alphabet.HEX
    assert policies["WEBHOOK_KEY"].min_length == 80
    assert policies["JWT_SECRET"].rotation_interval_days == 30
    assert policies["JWT_SECRET"].min_length == 32
    assert policies["SENTRY_DSN"].import_from == "SENTRY_DSN"
    # A value the service does not draw has no length floor unless one is set.
    assert policies["SENTRY_DSN"].min_length == 1
    assert policies["SENTRY_DSN"].rotation_interval_days is None


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("[secrets.bad-name]\n", "secrets.bad-name: the name is not"),
        ("[secrets.K]\nrotation_interval_days = 0\n", "rotation_interval_days"),
        ("[secrets.K]\nmin_length = -3\n", "min_length"),
        ("[secrets.K]\nalphabet = 'emoji'\n", "alphabet"),
        ("[secrets.K]\ncolour = 'red'\n", "colour"),
        ("[secrets.PASSWORD_MASTER_KEY]\nservable = true\n", "data key"),
        ("[secrets.K]\nimport_from = 'X'\n", "only for imported"),
        ("[secrets.K\n", "not valid TOML"),
        (
            "[secrets.K]\nsource = 'imported'\nimport_from = 'PASSWORD_MASTER_KEY'\n",
            "PASSWORD_MASTER_KEY holds the service's own keys",
        ),
        (
            "[secrets.K]\nsource = 'imported'\nimport_from = 'SECRETSVC_TOKEN'\n",
            "is never imported",
        ),
        ("[secrets.K]\nrotation_interval_days = true\n", "whole number of days"),
        ("[secrets.K]\nrotation_interval_days = 40000\n", "from 1 to 36500"),
        (
            "[secrets.DATABASE_URL]\nrotator = 'postgres'\n",
            "needs a [secrets.DATABASE_URL.postgres] table",
        ),
        (
            PG + "[secrets.DATABASE_URL.postgres]\nroles = ['a']\n",
            "exactly one of admin_url and admin_url_secret",
        ),
        (
            PG + "[secrets.DATABASE_URL.postgres]\n"
            "roles = ['a', 'b', 'c']\nadmin_url = 'postgresql://x@h/d'\n",
            "roles",
        ),
        (
            PG + "[secrets.DATABASE_URL.postgres]\n"
            "roles = ['a']\nadmin_url_secret = 'ADMIN'\n",
            "host and database are needed",
        ),
        (
            "[secrets.K]\nsource = 'written'\nrotator = 'random'\n",
            "random rotator is for generated",
        ),
        (
            PG + "[secrets.DATABASE_URL.postgres]\nroles = ['a']\n"
            "admin_url = 'postgresql://admin:Zk9Qw/uR2+d=@127.0.0.1:5432/app'\n",
            "admin_url needs its user and password percent-encoded",
        ),
        (
            PG + "[secrets.DATABASE_URL.postgres]\nroles = ['app', 'admin']\n"
            "admin_url = 'postgresql://admin:Zk9Qw@127.0.0.1:5432/app'\n",
            "postgres.roles names the admin URL's own role",
        ),
        (
            PG + "[secrets.DATABASE_URL.postgres]\nroles = ['mgr']\n"
            "admin_url = 'postgresql://127.0.0.1:5432/app?user=mgr&password=Zk9Qw'\n",
            "postgres.roles names the admin URL's own role",
        ),
        (
            PG + "[secrets.DATABASE_URL.postgres]\nroles = ['" + "é" * 32 + "']\n"
            "admin_url = 'postgresql://admin@db/app'\n",
            "at most 63 bytes",
        ),
        (
            PG + "[secrets.DATABASE_URL.postgres]\nroles = ['a']\n"
            "admin_url = 'postgresql://admin@db/" + "d" * 64 + "'\n",
            "the database name: a PostgreSQL name is at most 63 bytes",
        ),
    ],
    ids=[
        "bad-name",
        "zero-interval",
        "negative-length",
        "unknown-alphabet",
        "unknown-key",
        "data-key",
        "import-from-generated",
        "broken-toml",
        "import-root-key",
        "import-settings",
        "interval-boolean",
        "interval-beyond-a-century",
        "postgres-without-target",
        "postgres-without-admin",
        "postgres-three-roles",
        "postgres-without-host",
        "random-for-written",
        "admin-url-not-encoded",
        "admin-role-managed",
        "admin-role-in-query",
        "role-over-63-bytes",
        "database-over-63-bytes",
    ],
)
def test_bad_catalog_names_file_entry_and_problem(
    tmp_path: Path, text: str, problem: str
) -> None:
    """A bad catalog is refused with the file, the entry and the problem named."""
    path = write(tmp_path, text)

    with pytest.raises(StartupError) as raised:
        load_catalog(path)

    message = str(raised.value)
    assert str(path) in message
    assert problem in message
    assert "Zk9Qw" not in message


async def test_catalog_secrets_are_generated_in_their_alphabet(
    tmp_path: Path, db_url: str, clock: FakeClock
) -> None:
    """Secrets the file adds are created at the first login, as their policy says."""
    catalog = write(
        tmp_path,
        "[secrets.WEBHOOK_KEY]\nalphabet = 'hex'\nmin_length = 80\n"
        "rotation_interval_days = 7\n",
    )

    async with running_server(db_url, clock=clock, catalog=catalog) as server:
        result = await server.client.initialize("alice")
        secret = await server.client.get("WEBHOOK_KEY")

    assert "WEBHOOK_KEY" in result.generated
    assert re.fullmatch(r"[0-9a-f]{80}", secret.value)
    assert secret.next_rotation_due is not None
    assert secret.created_at is not None
    assert (secret.next_rotation_due - secret.created_at).days == 7


def test_server_with_bad_catalog_exits_with_one_line(tmp_path: Path) -> None:
    """`serve --catalog` with a bad file exits non-zero, naming the problem."""
    catalog = write(tmp_path, "[secrets.K]\nmin_length = 'long'\n")
    server = ServerProcess(
        tmp_path,
        sqlite_url(tmp_path / "s.db"),
        PASSWORD_MASTER_KEY="k" * 40,
    )
    server.start("--catalog", str(catalog))
    assert server.process is not None

    assert server.process.wait(20) != 0
    lines = server.output().strip().splitlines()
    assert len(lines) == 1
    assert f"catalog {catalog}: secrets.K.min_length" in lines[0]


def test_postgres_target_defaults_to_the_admin_url_and_hides_it(
    tmp_path: Path,
) -> None:
    """Host, port and database come from the admin URL, which is never shown."""
    admin = "postgresql://admin:admin-secret-pw@db.internal:6543/app"
    path = write(
        tmp_path,
        "[secrets.DATABASE_URL]\nrotator = 'postgres'\n"
        f"[secrets.DATABASE_URL.postgres]\nadmin_url = '{admin}'\n"
        "roles = ['app_a', 'app_b']\n",
    )

    policy = {p.name: p for p in load_catalog(path)}["DATABASE_URL"]

    target = policy.target
    assert target is not None
    assert (target.host, target.port, target.database) == ("db.internal", 6543, "app")
    assert (policy.source, policy.rotator_kind) == (
        Source.GENERATED,
        RotatorKind.POSTGRES,
    )
    assert "admin-secret-pw" not in repr(policy)
