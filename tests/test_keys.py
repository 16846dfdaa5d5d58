"""Keys under the store: re-sealing after a data key rotation, and rekeying."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from secretsvc_client import FailedPreconditionError, SecretsClient

from secretsvc.service import rekey
from secretsvc.store import tables
from tests.helpers import (
    OTHER_ROOT_KEY,
    ROOT_KEY,
    FakeClock,
    ServerProcess,
    execute_sql,
    poll_until,
    running_server,
    sqlite_url,
    stored_values,
)


async def terms_by_version(url: str) -> list[int]:
    v = tables.secret_versions
    [rows] = await execute_sql(
        url, sa.select(v.c.key_term).where(v.c.sealed_value.is_not(None))
    )
    return [row.key_term for row in rows]


async def test_reseal_resumes_after_a_crash(tmp_path: Path) -> None:
    """Killed while re-sealing one version at a time, the next start finishes."""
    url = sqlite_url(tmp_path / "s.db")
    env = {"PASSWORD_MASTER_KEY": ROOT_KEY, "SECRETSVC_RESEAL_BATCH": "1"}
    first = ServerProcess(tmp_path, url, **env).start()
    try:
        await first.wait_ready()
        async with SecretsClient(first.target) as client:
            await client.initialize("alice")
            for _ in range(40):
                await client.rotate("JWT_SECRET")
            # The newest ten keep their values under the default retention.
            kept = range(32, 42)
            values = {v: (await client.get("JWT_SECRET", v)).value for v in kept}
            await client.rotate("PASSWORD_MASTER_KEY")
    finally:
        assert first.process is not None
        first.process.send_signal(signal.SIGKILL)
        first.process.wait()

    second = ServerProcess(tmp_path, url, **env).start()
    try:
        await second.wait_ready()

        async def all_resealed() -> bool:
            return set(await terms_by_version(url)) == {2}

        await poll_until(all_resealed, within=30)
        async with SecretsClient(second.target) as client:
            reread = {v: (await client.get("JWT_SECRET", v)).value for v in values}
    finally:
        assert second.terminate() == 0

    assert reread == values
    assert "re-sealed" in second.output()
    assert "0 to go" in second.output()


def run_rekey(
    db: Path, old: str, new: str | None, *extra: str, stderr: Any = subprocess.PIPE
) -> subprocess.Popen[str]:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("SECRETSVC_")},
        "PASSWORD_MASTER_KEY": old,
        "SECRETSVC_DATABASE_URL": sqlite_url(db),
    }
    if new is not None:
        env["SECRETSVC_NEW_ROOT_KEY"] = new
    return subprocess.Popen(
        [sys.executable, "-m", "secretsvc", "rekey", *extra],
        env=env,
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
    )


async def initialized_store(tmp_path: Path) -> tuple[Path, str]:
    db = tmp_path / "s.db"
    server = ServerProcess(tmp_path, sqlite_url(db), PASSWORD_MASTER_KEY=ROOT_KEY)
    server.start()
    try:
        await server.wait_ready()
        async with SecretsClient(server.target) as client:
            await client.initialize("alice")
            await client.rotate("PASSWORD_MASTER_KEY")
            value = (await client.get("JWT_SECRET")).value
    finally:
        assert server.terminate() == 0
    return db, value


async def read_with(tmp_path: Path, db: Path, key: str) -> str | None:
    """Start a server with ``key``; return JWT_SECRET, or None if it refuses."""
    server = ServerProcess(tmp_path, sqlite_url(db), PASSWORD_MASTER_KEY=key)
    server.start()
    assert server.process is not None
    try:

        async def settled() -> bool:
            assert server.process is not None
            exited = server.process.poll() is not None
            return exited or "listening on" in server.output()

        await poll_until(settled)
        if server.process.poll() is not None:
            assert "does not match this store" in server.output()
            return None
        async with SecretsClient(server.target) as client:
            return (await client.get("JWT_SECRET")).value
    finally:
        server.kill()


async def test_rekey_racing_data_key_rotations_leaves_a_store_the_new_key_opens(
    db_url: str, clock: FakeClock
) -> None:
    """Data key rotations either land before the rekey or are refused after it."""
    async with running_server(
        db_url, clock=clock, scan_root_key=OTHER_ROOT_KEY
    ) as server:
        await server.client.initialize("alice")
        jwt = await server.client.get("JWT_SECRET")
        outcomes = await asyncio.gather(
            rekey(server.server.store, ROOT_KEY, OTHER_ROOT_KEY),
            *(server.client.rotate("PASSWORD_MASTER_KEY") for _ in range(6)),
            return_exceptions=True,
        )

    for outcome in outcomes[1:]:
        if isinstance(outcome, BaseException):
            assert isinstance(outcome, FailedPreconditionError), outcome
            assert "root key" in str(outcome)
    async with running_server(db_url, clock=clock, root_key=OTHER_ROOT_KEY) as again:
        assert (await again.client.get("JWT_SECRET")).value == jwt.value
        # Every kept version of every secret opens with the new key.
        async with again.server.store.read() as tx:
            terms = [term for term, _ in await tx.key_terms()]
        values = await stored_values(again.server.store, OTHER_ROOT_KEY)
    assert outcomes[0] == len(terms)
    assert jwt.value in values


async def test_rekey_moves_the_store_to_the_new_key(tmp_path: Path) -> None:
    """After `secretsvc rekey` the store opens with the new key only."""
    db, value = await initialized_store(tmp_path)

    with run_rekey(db, ROOT_KEY, OTHER_ROOT_KEY) as rekey:
        out, err = rekey.communicate(timeout=60)

    assert rekey.returncode == 0, err
    assert "re-keyed: 2 keyring terms" in out
    assert "re-wrapping keyring terms" in err
    assert await read_with(tmp_path, db, OTHER_ROOT_KEY) == value
    assert await read_with(tmp_path, db, ROOT_KEY) is None


async def test_rekey_with_the_wrong_old_key_changes_nothing(tmp_path: Path) -> None:
    """A wrong old key is refused in one line and the store keeps its key."""
    db, value = await initialized_store(tmp_path)

    with run_rekey(db, "wrong-" + "k" * 40, OTHER_ROOT_KEY) as rekey:
        _, err = rekey.communicate(timeout=60)

    assert rekey.returncode == 1
    assert "the old root key does not match this store" in err
    assert await read_with(tmp_path, db, ROOT_KEY) == value


async def test_interrupted_rekey_leaves_the_old_key(tmp_path: Path) -> None:
    """A rekey killed while it waits for the store leaves the old key in force."""
    db, value = await initialized_store(tmp_path)
    blocker = sqlite3.connect(db, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    progress = tmp_path / "rekey.err"
    try:
        with progress.open("w") as err:
            rekey = run_rekey(db, ROOT_KEY, OTHER_ROOT_KEY, stderr=err)

        # The keyring was read; now the rekey waits for the write lock.
        async def started() -> bool:
            return "re-wrapping keyring terms" in progress.read_text()

        await poll_until(started)
        rekey.kill()
        rekey.communicate(timeout=10)
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()

    assert rekey.returncode != 0
    assert await read_with(tmp_path, db, ROOT_KEY) == value
    assert await read_with(tmp_path, db, OTHER_ROOT_KEY) is None
