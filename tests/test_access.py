"""Who may do what: tokens, policies, mutual TLS, and the audit trail as a tool."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from secretsvc_client import (
    InvalidArgumentError,
    PermissionDeniedError,
    SecretsClient,
    SecretsError,
    TLSConfig,
    UnauthenticatedError,
    UnavailableError,
)

from secretsvc.access import Action, Grant, issue_token
from secretsvc.store import tables
from tests.helpers import (
    FakeClock,
    LogCollector,
    RunningServer,
    ServerProcess,
    execute_sql,
    poll_until,
    running_server,
    sqlite_url,
)
from tests.tls import Authority

EVERYTHING = (Grant(frozenset(Action), ("*",)),)
BACKEND = (Grant(frozenset({Action.READ, Action.WATCH}), ("JWT_*",)),)


async def add_token(
    running: RunningServer, name: str, grants: tuple[Grant, ...]
) -> str:
    record, token = issue_token(name, grants)
    async with running.server.store.write() as tx:
        await tx.add_token(record)
    await running.server.authenticator.refresh()
    return token


@pytest.fixture
async def secured(db_url: str, clock: FakeClock) -> AsyncIterator[RunningServer]:
    """Run a server that wants a token on every call; the fixture's client is admin."""
    async with running_server(db_url, clock=clock, auth="token") as server:
        token = await add_token(server, "admin", EVERYTHING)
        async with SecretsClient(server.target, token=token, cache=False) as admin:
            await admin.initialize("alice")
            yield RunningServer(server.server, admin)


async def store_snapshot(running: RunningServer) -> list[Any]:
    s, v, e = tables.application_secrets, tables.secret_versions, tables.rotation_events
    async with running.server.store.engine.connect() as conn:
        rows = []
        for table in (
            s,
            v,
            e,
            tables.master_user,
            tables.consumer_versions,
            tables.pending_versions,
        ):
            rows.append((await conn.execute(sa.select(table))).all())
    return rows


def every_rpc(client: SecretsClient) -> dict[str, Callable[[], Awaitable[Any]]]:
    async def first_event() -> None:
        async for _ in client.watch():
            return

    return {
        "InitializeSecrets": lambda: client.initialize("mallory"),
        "GetSecret": lambda: client.get("JWT_SECRET"),
        "RotateSecret": lambda: client.rotate("JWT_SECRET"),
        "ListSecrets": lambda: client.list(),
        "ListAuditEvents": lambda: client.audit(),
        "WatchRotations": first_event,
        "PutSecret": lambda: client.put("JWT_SECRET", "w" * 40),
        "ListVersions": lambda: client.versions("JWT_SECRET"),
        "RollbackSecret": lambda: client.rollback("JWT_SECRET", 1),
        "ReportVersions": lambda: client.report_versions({"JWT_SECRET": 1}),
    }


RPCS = list(every_rpc(SecretsClient.__new__(SecretsClient)))
# How the audit trail names each call of every_rpc, refused at the door or
# by the domain alike.
RECORDED_AS = {
    "InitializeSecrets": ("initialize", None),
    "GetSecret": ("read", "JWT_SECRET"),
    "RotateSecret": ("rotate", "JWT_SECRET"),
    "ListSecrets": ("list", None),
    "ListAuditEvents": ("audit", None),
    "WatchRotations": ("watch", None),
    "PutSecret": ("write", "JWT_SECRET"),
    "ListVersions": ("list_versions", "JWT_SECRET"),
    "RollbackSecret": ("rollback", "JWT_SECRET"),
    "ReportVersions": ("report", None),
}


@pytest.mark.parametrize("rpc", RPCS)
@pytest.mark.parametrize(
    ("credential", "error", "outcome"),
    [
        (None, UnauthenticatedError, "unauthenticated"),
        ("sst_0123456789abcdef_" + "x" * 43, UnauthenticatedError, "unauthenticated"),
        ("not a token", UnauthenticatedError, "unauthenticated"),
        ("no-rights", PermissionDeniedError, "denied"),
    ],
    ids=["none", "unknown-token", "malformed-token", "token-without-rights"],
)
async def test_every_rpc_refuses_bad_credentials(
    secured: RunningServer,
    rpc: str,
    credential: str | None,
    error: type[SecretsError],
    outcome: str,
) -> None:
    """Each refused call has the right status, an audit record, and no effect."""
    if credential == "no-rights":
        nothing = (Grant(frozenset({Action.READ}), ("NOTHING_MATCHES",)),)
        credential = await add_token(secured, "powerless", nothing)
    before = await store_snapshot(secured)

    async with SecretsClient(secured.target, token=credential, cache=False) as client:
        if rpc == "ListSecrets" and outcome == "denied":
            # Listing is filtered rather than refused: it shows nothing.
            assert await client.list() == []
            return
        with pytest.raises(error):
            await asyncio.wait_for(every_rpc(client)[rpc](), timeout=10)

    assert await store_snapshot(secured) == before
    page = await secured.client.audit(outcome=outcome)
    assert [(e.action, e.name or None) for e in page.events] == [RECORDED_AS[rpc]]


def test_every_rpc_of_the_contract_is_tried() -> None:
    """The tables of refused calls name every RPC the service offers."""
    from secretsvc_client._proto import secrets_pb2 as pb

    from secretsvc.server.servicer import AUDIT_ACTIONS

    service = sorted(
        m.name for m in pb.DESCRIPTOR.services_by_name["SecretService"].methods
    )

    assert sorted(RPCS) == sorted(RECORDED_AS) == sorted(AUDIT_ACTIONS) == service


@pytest.mark.parametrize(
    ("headers", "problem"),
    [
        (["bearer-of-admin", "bearer-of-admin"], "more than one authorization"),
        (["admin-token-alone"], "is not 'Bearer <token>'"),
        (["Basic admin-token"], "is not 'Bearer <token>'"),
    ],
    ids=["two-headers", "no-scheme", "basic-scheme"],
)
async def test_authorization_headers_are_read_strictly(
    secured: RunningServer, headers: list[str], problem: str
) -> None:
    """Only one header of the form 'Bearer <token>' authenticates a call."""
    import grpc
    from secretsvc_client._proto import secrets_pb2 as pb
    from secretsvc_client._proto import secrets_pb2_grpc as pb_grpc

    admin = await add_token(secured, "strict", EVERYTHING)
    spelled = {
        "bearer-of-admin": f"Bearer {admin}",
        "admin-token-alone": admin,
        "Basic admin-token": f"Basic {admin}",
    }
    metadata = [("authorization", spelled[h]) for h in headers]
    async with grpc.aio.insecure_channel(secured.target) as channel:
        stub = pb_grpc.SecretServiceStub(channel)  # type: ignore[no-untyped-call]
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.GetSecret(
                pb.GetSecretRequest(name="JWT_SECRET"), metadata=metadata
            )

    assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert problem in (refused.value.details() or "")
    assert admin not in (refused.value.details() or "")
    page = await secured.client.audit(outcome="unauthenticated")
    (record,) = page.events
    assert (record.action, record.name) == ("read", "JWT_SECRET")
    assert admin.split("_")[1] in record.detail
    assert admin.split("_", 2)[2] not in repr(record)


async def test_consumers_of_two_callers_are_counted_apart(
    secured: RunningServer,
) -> None:
    """A caller reporting under another's consumer id adds itself, not overwrites."""
    first = await add_token(secured, "first", BACKEND)
    second = await add_token(secured, "second", BACKEND)
    for token in (first, second):
        async with SecretsClient(
            secured.target, token=token, cache=False, consumer_id="shared"
        ) as consumer:
            await consumer.report_versions({"JWT_SECRET": 1})

    listed = {s.name: s.consumers for s in await secured.client.list()}

    assert listed["JWT_SECRET"] == {1: 2}


async def test_policy_limits_a_token_to_its_patterns(secured: RunningServer) -> None:
    """A backend token reads and watches JWT_* only; the rest is denied."""
    token = await add_token(secured, "backend", BACKEND)
    async with SecretsClient(secured.target, token=token, cache=False) as backend:
        jwt = await backend.get("JWT_SECRET")
        with pytest.raises(PermissionDeniedError, match="may not read"):
            await backend.get("CSRF_SECRET")
        with pytest.raises(PermissionDeniedError, match="may not rotate"):
            await backend.rotate("JWT_SECRET")
        listed = [s.name for s in await backend.list()]

        await secured.client.rotate("CSRF_SECRET")
        await secured.client.rotate("JWT_SECRET")
        seen = []
        async for event in backend.watch():
            seen.append((event.name, event.new_version))
            if event.new_version == 2:
                break

    assert jwt.version == 1
    assert listed == ["JWT_SECRET"]
    assert seen == [("JWT_SECRET", 1), ("JWT_SECRET", 2)]
    denied = await secured.client.audit(caller="token:backend", outcome="denied")
    assert {(e.action, e.name) for e in denied.events} == {
        ("read", "CSRF_SECRET"),
        ("rotate", "JWT_SECRET"),
    }


async def test_admin_on_a_pattern_does_not_reach_the_whole_store(
    secured: RunningServer,
) -> None:
    """Admin on JWT_* does all on JWT_*, but neither the audit trail nor login."""
    scoped = (Grant(frozenset({Action.ADMIN}), ("JWT_*",)),)
    token = await add_token(secured, "jwt-admin", scoped)
    async with SecretsClient(secured.target, token=token, cache=False) as jwt_admin:
        rotated = await jwt_admin.rotate("JWT_SECRET")
        with pytest.raises(PermissionDeniedError, match="may not read"):
            await jwt_admin.get("CSRF_SECRET")
        with pytest.raises(PermissionDeniedError, match="admin on every secret"):
            await jwt_admin.audit()
        with pytest.raises(PermissionDeniedError, match="initialize on every"):
            await jwt_admin.initialize("mallory")

    assert rotated.version == 2


@pytest.mark.parametrize(
    "secrets",
    ['["JWT_*"]', '["NOTHING"]', '["JWT_SECRET", "CSRF_SECRET"]'],
    ids=["prefix", "one-name", "two-names"],
)
def test_initialize_granted_on_some_secrets_is_refused(secrets: str) -> None:
    """A login right acts on every secret, so a policy must say '*' for it."""
    from secretsvc.access import parse_policy
    from secretsvc.errors import StartupError

    text = f'[[grant]]\nactions = ["read", "initialize"]\nsecrets = {secrets}\n'

    with pytest.raises(StartupError, match="initialize acts on every secret"):
        parse_policy(text, "auth.toml")


async def test_revoked_token_is_refused_within_a_second(
    secured: RunningServer,
) -> None:
    """Revocation reaches the server's memory on its next refresh."""
    token = await add_token(secured, "leaked", BACKEND)
    async with SecretsClient(secured.target, token=token, cache=False) as leaked:
        await leaked.get("JWT_SECRET")
        async with secured.server.store.write() as tx:
            assert await tx.revoke_token("leaked", datetime.now(UTC))

        async def refused() -> bool:
            try:
                await leaked.get("JWT_SECRET")
            except UnauthenticatedError:
                return True
            return False

        await poll_until(refused, within=2.0)


async def test_store_keeps_only_a_hash_of_tokens(secured: RunningServer) -> None:
    """No column of the store holds the token itself."""
    token = await add_token(secured, "backend", BACKEND)
    [rows] = await execute_sql_on(secured, sa.select(tables.access_tokens))

    # The random part may itself hold underscores: cut after the id.
    random_part = token.split("_", 2)[2]

    assert token not in repr(rows)
    assert random_part not in repr(rows)


async def execute_sql_on(running: RunningServer, *statements: Any) -> list[Any]:
    return await execute_sql(str(running.server.store.engine.url), *statements)


async def test_audit_filters_and_pages(secured: RunningServer) -> None:
    """Audit records can be filtered by secret, caller, action, outcome and time."""
    for _ in range(5):
        await secured.client.get("JWT_SECRET")
    await secured.client.rotate("CSRF_SECRET")

    reads = await secured.client.audit(name="JWT_SECRET", action="read", page_size=2)
    second = await secured.client.audit(
        name="JWT_SECRET", action="read", page_size=2, page_token=reads.next_page_token
    )
    rotations = await secured.client.audit(action="rotate", caller="token:admin")
    future = await secured.client.audit(since=datetime.now(UTC) + timedelta(days=400))

    assert [e.version for e in reads.events] == [1, 1]
    assert reads.events[0].id > reads.events[1].id > second.events[0].id
    assert reads.next_page_token
    assert [(e.name, e.version, e.outcome) for e in rotations.events] == [
        ("CSRF_SECRET", 2, "ok")
    ]
    assert future.events == ()


async def test_mutual_tls_names_the_caller(
    tmp_path: Path, db_url: str, clock: FakeClock
) -> None:
    """A client certificate's common name is the caller, with its policy's rights."""
    ca = Authority(tmp_path)
    server_cert = ca.issue("secretsvc", server=True)
    billing = ca.issue("billing")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    stranger = Authority(elsewhere, "another CA").issue("billing")
    policy = tmp_path / "tls-policy.toml"
    policy.write_text(
        '[[identity]]\nname = "billing"\nactions = ["read"]\n'
        'secrets = ["JWT_SECRET"]\n'
        '[[identity]]\nname = "billing"\nactions = ["initialize"]\n'
        'secrets = ["*"]\n'
    )
    as_billing = TLSConfig.from_files(str(ca.cert), str(billing.cert), str(billing.key))

    async with running_server(
        db_url,
        clock=clock,
        client_tls=as_billing,
        tls_cert=server_cert.cert,
        tls_key=server_cert.key,
        tls_client_ca=ca.cert,
        tls_policy=policy,
    ) as server:
        await server.client.initialize("alice")
        secret = await server.client.get("JWT_SECRET")
        with pytest.raises(PermissionDeniedError, match="tls:billing may not read"):
            await server.client.get("CSRF_SECRET")

        without_cert = TLSConfig.from_files(str(ca.cert))
        foreign = TLSConfig.from_files(
            str(ca.cert), str(stranger.cert), str(stranger.key)
        )
        for tls in (without_cert, foreign):
            async with SecretsClient(server.target, tls=tls, timeout=5) as client:
                with pytest.raises(UnavailableError):
                    await client.get("JWT_SECRET")
        nameless = ca.issue(None)
        as_nobody = TLSConfig.from_files(
            str(ca.cert), str(nameless.cert), str(nameless.key)
        )
        async with SecretsClient(server.target, tls=as_nobody, timeout=5) as client:
            with pytest.raises(UnauthenticatedError, match="names no common name"):
                await client.get("JWT_SECRET")

    assert secret.version == 1


def test_refuses_to_listen_beyond_loopback_without_auth(tmp_path: Path) -> None:
    """Asked for 0.0.0.0 with no authentication, the server says how to set it up."""
    server = ServerProcess(
        tmp_path, sqlite_url(tmp_path / "s.db"), PASSWORD_MASTER_KEY="k" * 40
    )
    server.env["SECRETSVC_LISTEN"] = "0.0.0.0:0"

    assert server.run_to_exit() != 0
    (line,) = server.output().strip().splitlines()
    assert "refusing to listen on 0.0.0.0:0 without authentication" in line
    assert "SECRETSVC_AUTH=token" in line
    assert not (tmp_path / "s.db").exists()


async def test_loopback_server_without_auth_says_so(tmp_path: Path) -> None:
    """With no authentication the server starts on loopback and warns about it."""
    server = ServerProcess(
        tmp_path, sqlite_url(tmp_path / "s.db"), PASSWORD_MASTER_KEY="k" * 40
    )
    server.start()
    try:
        await server.wait_ready()
    finally:
        assert server.terminate() == 0

    assert "no authentication configured" in server.output()


async def test_token_and_audit_commands(tmp_path: Path) -> None:
    """`token create/list/revoke` and `audit` work as a new operator would use them."""
    url = sqlite_url(tmp_path / "s.db")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("SECRETSVC_")},
        "SECRETSVC_DATABASE_URL": url,
    }
    policy = tmp_path / "admin.toml"
    policy.write_text('[[grant]]\nactions = ["admin"]\nsecrets = ["*"]\n')

    def secretsvc(*args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "secretsvc", *args],
            env={**env, **extra},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    # Pointed where no store is, it makes none.
    nowhere = secretsvc(
        "token",
        "create",
        "--name",
        "ops",
        "--policy",
        str(policy),
        SECRETSVC_DATABASE_URL=sqlite_url(tmp_path / "elsewhere" / "s.db"),
    )
    made = secretsvc("migrate")
    created = secretsvc("token", "create", "--name", "ops", "--policy", str(policy))
    token = created.stdout.strip()
    again = secretsvc("token", "create", "--name", "ops", "--policy", str(policy))
    server = ServerProcess(
        tmp_path, url, PASSWORD_MASTER_KEY="k" * 40, SECRETSVC_AUTH="token"
    ).start()
    try:
        await server.wait_ready()
        target = {"SECRETSVC_TARGET": server.target}
        refused = secretsvc("init", "--user", "alice", **target)
        init = secretsvc("init", "--user", "alice", SECRETSVC_TOKEN=token, **target)
        audit = secretsvc("audit", "--limit", "5", SECRETSVC_TOKEN=token, **target)
        listing = secretsvc("token", "list")
        revoked = secretsvc("token", "revoke", "--name", "ops")
    finally:
        assert server.terminate() == 0

    assert nowhere.returncode == 1
    assert "there is no secretsvc store at" in nowhere.stderr
    assert not (tmp_path / "elsewhere").exists()
    assert made.returncode == 0, made.stderr
    assert created.returncode == 0, created.stderr
    assert token.startswith("sst_")
    assert again.returncode == 1
    assert "a token named 'ops' exists already" in again.stderr
    assert not again.stdout
    assert refused.returncode == 1
    assert "unauthenticated" in refused.stderr
    assert init.returncode == 0, init.stderr
    assert "token:ops initialize - ok" in audit.stdout
    assert "unknown" in audit.stdout
    assert "ops" in listing.stdout
    assert token not in listing.stdout + server.output() + audit.stdout
    assert revoked.returncode == 0


async def test_a_cached_client_that_may_not_watch_reads_through(
    secured: RunningServer, logs: LogCollector
) -> None:
    """Without the watch right the cache cannot follow: every get asks the server."""
    read_only = (Grant(frozenset({Action.READ}), ("JWT_SECRET",)),)
    token = await add_token(secured, "read-only", read_only)
    async with SecretsClient(secured.target, token=token, cache=True) as reader:
        first = await reader.get("JWT_SECRET")

        async def told() -> bool:
            return "this caller may not watch" in logs.text()

        await poll_until(told)
        await secured.client.rotate("JWT_SECRET")
        second = await reader.get("JWT_SECRET")

    assert (first.version, second.version) == (1, 2)


async def test_revocation_ends_an_open_watch(secured: RunningServer) -> None:
    """A watch stream opened with a token ends once the token is revoked."""
    token = await add_token(secured, "watcher", BACKEND)
    async with SecretsClient(secured.target, token=token) as watcher:

        async def follow() -> None:
            async for _ in watcher.watch():
                pass

        stream = asyncio.create_task(follow())
        await asyncio.sleep(0.2)
        async with secured.server.store.write() as tx:
            await tx.revoke_token("watcher", datetime.now(UTC))

        with pytest.raises(UnauthenticatedError, match="revoked"):
            await asyncio.wait_for(stream, timeout=5)


async def test_revocation_with_a_slow_clock_still_counts(
    secured: RunningServer,
) -> None:
    """A revocation stamped earlier than another one is still noticed."""
    first = await add_token(secured, "first", BACKEND)
    second = await add_token(secured, "second", BACKEND)
    async with secured.server.store.write() as tx:
        await tx.revoke_token("first", datetime.now(UTC))
    await secured.server.authenticator.refresh()
    async with secured.server.store.write() as tx:
        await tx.revoke_token("second", datetime.now(UTC) - timedelta(hours=1))

    async with SecretsClient(secured.target, token=second, cache=False) as client:

        async def refused() -> bool:
            try:
                await client.get("JWT_SECRET")
            except UnauthenticatedError:
                return True
            return False

        await poll_until(refused, within=2.0)
    del first


@pytest.mark.parametrize(
    "name",
    ["", "has space", "new\nline", "x" * 65],
    ids=["empty", "space", "newline", "long"],
)
def test_token_names_are_checked(name: str) -> None:
    """Token names are short and plain, so listings and audit lines cannot be forged."""
    from secretsvc.errors import StartupError

    with pytest.raises(StartupError, match="token name"):
        issue_token(name, BACKEND)


async def test_a_token_is_trimmed_and_a_broken_one_refused_at_once(
    secured: RunningServer,
) -> None:
    """A token read from a file keeps its newline: trimmed; one inside: refused."""
    token = await add_token(secured, "from-a-file", EVERYTHING)
    async with SecretsClient(secured.target, token=token + "\n", cache=False) as ok:
        assert (await ok.get("JWT_SECRET")).version == 1
    with pytest.raises(InvalidArgumentError, match="a line break") as raised:
        SecretsClient(secured.target, token=token[:10] + "\n" + token[10:])

    assert token[10:] not in str(raised.value)
