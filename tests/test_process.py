"""The ``secretsvc`` command as a real process: keys, shutdown, the CLI."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from secretsvc_client import SecretsClient

from tests.helpers import (
    OTHER_ROOT_KEY,
    ROOT_KEY,
    ServerProcess,
    assert_no_leak,
    sqlite_url,
)


def dump(db_path: Path) -> list[str]:
    with sqlite3.connect(db_path) as conn:
        return list(conn.iterdump())


def one_line(output: str) -> str:
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1, output
    return lines[0]


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "store" / "secrets.db"


def test_missing_root_key_exits_with_one_line(tmp_path: Path, db_path: Path) -> None:
    """Without a root key the server exits non-zero and says which is missing."""
    server = ServerProcess(tmp_path, sqlite_url(db_path))

    code = server.run_to_exit()

    assert code != 0
    assert "PASSWORD_MASTER_KEY" in one_line(server.output())
    assert not db_path.exists()


def test_short_root_key_exits_with_one_line(tmp_path: Path, db_path: Path) -> None:
    """A root key under 32 characters is refused before anything is opened."""
    server = ServerProcess(tmp_path, sqlite_url(db_path), PASSWORD_MASTER_KEY="x" * 31)

    code = server.run_to_exit()

    assert code != 0
    assert "at least 32" in one_line(server.output())
    assert not db_path.exists()


def test_unreadable_key_file_exits_with_one_line(tmp_path: Path, db_path: Path) -> None:
    """A key file that cannot be read is named in the one line."""
    missing = tmp_path / "no-such-key"
    server = ServerProcess(
        tmp_path, sqlite_url(db_path), PASSWORD_MASTER_KEY_FILE=str(missing)
    )

    assert server.run_to_exit() != 0
    line = one_line(server.output())
    assert "PASSWORD_MASTER_KEY_FILE" in line
    assert str(missing) in line


async def test_wrong_root_key_is_refused_before_any_write(
    tmp_path: Path, db_path: Path
) -> None:
    """A store made with one root key refuses another, and is left untouched."""
    first = ServerProcess(tmp_path, sqlite_url(db_path), PASSWORD_MASTER_KEY=ROOT_KEY)
    first.start()
    try:
        await first.wait_ready()
        async with SecretsClient(first.target) as client:
            await client.initialize("alice")
    finally:
        assert first.terminate() == 0
    before = dump(db_path)

    second = ServerProcess(
        tmp_path, sqlite_url(db_path), PASSWORD_MASTER_KEY=OTHER_ROOT_KEY
    )
    code = second.run_to_exit()

    assert code != 0
    assert (
        "root key (from PASSWORD_MASTER_KEY or PASSWORD_MASTER_KEY_FILE) does not "
        "match this store" in (second.output().splitlines()[-1])
    )
    assert dump(db_path) == before


async def test_key_file_opens_the_same_store(tmp_path: Path, db_path: Path) -> None:
    """The root key may come from PASSWORD_MASTER_KEY_FILE instead."""
    key_file = tmp_path / "root.key"
    key_file.write_text(ROOT_KEY + "\n")
    server = ServerProcess(
        tmp_path, sqlite_url(db_path), PASSWORD_MASTER_KEY_FILE=str(key_file)
    )
    server.start()
    try:
        await server.wait_ready()
        async with SecretsClient(server.target) as client:
            result = await client.initialize("alice")
    finally:
        assert server.terminate() == 0

    assert result.is_master


async def test_sigterm_ends_streams_and_exits_zero(
    tmp_path: Path, db_path: Path
) -> None:
    """SIGTERM with a watch open: the stream ends, the loop stops, exit 0."""
    server = ServerProcess(tmp_path, sqlite_url(db_path), PASSWORD_MASTER_KEY=ROOT_KEY)
    server.start()
    try:
        await server.wait_ready()
        async with SecretsClient(server.target) as client:
            await client.initialize("alice")
            events = client.watch()
            await anext(events)

            code = server.terminate(timeout=10)
            await events.aclose()
    finally:
        server.kill()

    assert code == 0
    output = server.output()
    assert "rpc WatchRotations status=OK" in output
    assert "rotation loop stopped" in output
    assert output.rstrip().endswith("secretsvc stopped")


def run_cli(target: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SECRETSVC_TARGET": target}
    return subprocess.run(
        [sys.executable, "-m", "secretsvc", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


async def test_cli_walkthrough(tmp_path: Path, db_path: Path) -> None:
    """init, get, rotate, list and watch work against a served store."""
    server = ServerProcess(tmp_path, sqlite_url(db_path), PASSWORD_MASTER_KEY=ROOT_KEY)
    server.start()
    try:
        await server.wait_ready()
        init = run_cli(server.target, "init", "--user", "alice")
        first = run_cli(server.target, "get", "JWT_SECRET")
        rotate = run_cli(server.target, "rotate", "JWT_SECRET")
        second = run_cli(server.target, "get", "JWT_SECRET")
        old = run_cli(server.target, "get", "JWT_SECRET", "--version", "1")
        listing = run_cli(server.target, "list")
        denied = run_cli(server.target, "get", "PASSWORD_MASTER_KEY")
        missing = run_cli(server.target, "get", "NOPE")
        with subprocess.Popen(
            [sys.executable, "-m", "secretsvc", "watch", "--target", server.target],
            stdout=subprocess.PIPE,
            text=True,
        ) as watch:
            assert watch.stdout is not None
            lines = [watch.stdout.readline() for _ in range(4)]
            watch.terminate()
    finally:
        assert server.terminate() == 0

    assert init.returncode == 0, init.stderr
    assert "master user: alice (you)" in init.stdout
    assert "skipped: DATABASE_URL" in init.stdout
    assert rotate.returncode == 0
    assert "JWT_SECRET is now version 2" in rotate.stdout
    assert first.stdout != second.stdout
    assert old.stdout == first.stdout
    assert "JWT_SECRET" in listing.stdout
    assert first.stdout.strip() not in listing.stdout
    assert denied.returncode == 1
    assert "permission_denied" in denied.stderr
    assert missing.returncode == 1
    assert "not_found" in missing.stderr
    assert "JWT_SECRET v1 -> v2 MANUAL" in lines[3]
    values = [first.stdout.strip(), second.stdout.strip()]
    assert_no_leak(values, server.output(), rotate.stdout, listing.stdout, *lines)


async def test_dev_key_file_is_created_private(tmp_path: Path, db_path: Path) -> None:
    """With --dev-key-file and no root key, a 0600 key file is made and reused."""
    key_file = tmp_path / "var" / "dev-root-key"
    server = ServerProcess(tmp_path, sqlite_url(db_path))
    server.start("--dev-key-file", str(key_file))
    try:
        await server.wait_ready()
    finally:
        assert server.terminate() == 0

    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert len(key_file.read_text().strip()) >= 32
    assert "using the development key file" in server.output()

    again = ServerProcess(tmp_path, sqlite_url(db_path))
    again.start("--dev-key-file", str(key_file))
    try:
        await again.wait_ready()
    finally:
        assert again.terminate() == 0


async def test_second_server_on_a_taken_port_refuses_to_start(
    tmp_path: Path, db_path: Path
) -> None:
    """Two servers never share a port: the second exits, saying the port is taken."""
    first = ServerProcess(tmp_path, sqlite_url(db_path), PASSWORD_MASTER_KEY=ROOT_KEY)
    first.start()
    try:
        await first.wait_ready()
        second = ServerProcess(
            tmp_path, sqlite_url(tmp_path / "other.db"), PASSWORD_MASTER_KEY=ROOT_KEY
        )
        second.port, second.target = first.port, first.target
        second.env["SECRETSVC_LISTEN"] = first.target
        second.log_path = tmp_path / "second.log"
        code = second.run_to_exit()
    finally:
        assert first.terminate() == 0

    assert code != 0
    assert f"cannot listen on {first.target}" in second.output().splitlines()[-1]


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("foo://nowhere", "database URL"),
        ("postgresql+asyncpg://nobody@127.0.0.1:1/none", "cannot be reached"),
    ],
    ids=["unknown-scheme", "unreachable"],
)
def test_bad_store_exits_with_one_line(tmp_path: Path, url: str, problem: str) -> None:
    """A store that cannot be used is one line, without a password."""
    server = ServerProcess(tmp_path, url, PASSWORD_MASTER_KEY=ROOT_KEY)

    assert server.run_to_exit() != 0
    assert problem in one_line(server.output())


@pytest.mark.parametrize(
    ("setting", "value", "problem"),
    [
        ("SECRETSVC_LOG_LEVEL", "LOUD", "log_level: Value error, give one of DEBUG"),
        ("SECRETSVC_LISTEN", "garbage", "listen: Value error, give host:port"),
        ("SECRETSVC_LISTEN", "::1:50051", "put an IPv6 address in brackets"),
        ("SECRETSVC_METRICS_LISTEN", "nope", "metrics_listen: Value error"),
        ("SECRETSVC_METRICS_LISTEN", "TAKEN", "cannot serve metrics on 127.0.0.1:"),
    ],
    ids=["log-level", "listen", "listen-ipv6", "metrics-address", "metrics-taken"],
)
def test_bad_setting_exits_with_one_line(
    tmp_path: Path, db_path: Path, setting: str, value: str, problem: str
) -> None:
    """A setting that cannot work stops the server with one line, no traceback."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        if value == "TAKEN":
            value = f"127.0.0.1:{taken.getsockname()[1]}"
        server = ServerProcess(
            tmp_path, sqlite_url(db_path), PASSWORD_MASTER_KEY=ROOT_KEY
        )
        server.env[setting] = value
        code = server.run_to_exit()

    output = server.output()
    assert code != 0
    assert problem in output
    assert "Traceback" not in output


# Runs the command with Ctrl-C armed, even where the runner ignores SIGINT
# (a child inherits an ignored signal). No preexec_fn: forking Python code
# in a process with gRPC threads can hang the child.
INTERRUPTIBLE = (
    "import runpy, signal, sys; "
    "signal.signal(signal.SIGINT, signal.default_int_handler); "
    "sys.argv[0] = 'secretsvc'; "
    "runpy.run_module('secretsvc', run_name='__main__')"
)


async def test_interrupted_watch_command_exits_quietly(
    tmp_path: Path, db_path: Path
) -> None:
    """Ctrl-C on `secretsvc watch` ends it with status 0 and no traceback."""
    server = ServerProcess(tmp_path, sqlite_url(db_path), PASSWORD_MASTER_KEY=ROOT_KEY)
    server.start()
    try:
        await server.wait_ready()
        run_cli(server.target, "init", "--user", "alice")
        with subprocess.Popen(
            [sys.executable, "-c", INTERRUPTIBLE, "watch", "--target", server.target],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        ) as watch:
            assert watch.stdout is not None
            first = watch.stdout.readline()
            watch.send_signal(signal.SIGINT)
            _, err = watch.communicate(timeout=15)
    finally:
        assert server.terminate() == 0

    assert "PASSWORD_MASTER_KEY v0 -> v1" in first
    assert watch.returncode == 0, err
    assert "Traceback" not in err, err


def test_a_client_made_before_any_loop_runs_works_under_asyncio_run(
    tmp_path: Path,
) -> None:
    """A client made at import time opens its channel on the loop that uses it."""
    server = ServerProcess(
        tmp_path, sqlite_url(tmp_path / "secrets.db"), PASSWORD_MASTER_KEY=ROOT_KEY
    ).start()
    try:
        asyncio.run(server.wait_ready())
        client = SecretsClient(server.target)

        async def main() -> list[str]:
            async with client:
                await client.initialize("alice")
                jwt = await client.get("JWT_SECRET")
                return [s.value for s in await client.verifying_set("JWT_SECRET")] + [
                    jwt.value
                ]

        values = asyncio.run(main())
    finally:
        server.kill()

    assert len(set(values)) == 1
