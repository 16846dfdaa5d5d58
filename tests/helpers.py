"""Shared test helpers: a settable clock, polling, servers in and out of process."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

import sqlalchemy as sa
from secretsvc_client import SecretsClient, TLSConfig
from sqlalchemy.sql import Executable

from secretsvc.config import Settings
from secretsvc.crypto import Keyring, RootKey, SealError
from secretsvc.server.app import SecretsServer
from secretsvc.store import Store, tables

T = TypeVar("T")

# The log collector of the running test, set by the autouse ``logs`` fixture.
LOGS: LogCollector | None = None

ROOT_KEY = "test-root-key-0123456789-abcdefghijklmnop"
OTHER_ROOT_KEY = "another-root-key-9876543210-zyxwvutsrqpo"


class FakeClock:
    """A clock that stands still until a test moves it."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or datetime(2026, 1, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


async def poll_until(
    check: Callable[[], Awaitable[T]], *, within: float = 10.0, every: float = 0.02
) -> T:
    """Call ``check`` until it returns something truthy, or fail at the deadline."""
    deadline = time.monotonic() + within
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {within}s: {result!r}")
        await asyncio.sleep(every)


def sqlite_url(path: Path) -> str:
    return f"sqlite+aiosqlite:///{path}"


async def execute_sql(url: str, *statements: Executable) -> list[Any]:
    """Run statements on a store from outside the server, as an intruder would."""
    store = Store.open(url)
    results = []
    try:
        async with store.engine.begin() as conn:
            for statement in statements:
                result = await conn.execute(statement)
                results.append(result.all() if result.returns_rows else None)
    finally:
        await store.close()
    return results


@dataclass
class RunningServer:
    """A server running in this process, with a client connected to it."""

    server: SecretsServer
    client: SecretsClient

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.server.port}"


@asynccontextmanager
async def running_server(
    database_url: str,
    *,
    clock: Callable[[], datetime] | None = None,
    environ: Mapping[str, str] | None = None,
    root_key: str = ROOT_KEY,
    rotation_interval: float = 3600.0,
    listen: str = "127.0.0.1:0",
    catalog: Path | None = None,
    client_token: str | None = None,
    client_tls: TLSConfig | None = None,
    scan_root_key: str | None = None,
    **options: Any,
) -> AsyncIterator[RunningServer]:
    """Run a real server on 127.0.0.1, port 0, and connect the real client.

    ``options`` are further settings, such as ``auth="token"``. The leak scan
    opens the store with ``scan_root_key`` (a test that rekeys it gives the new
    key), else ``root_key``.
    """
    settings = Settings(
        **options,
        listen=listen,
        catalog=catalog,
        database_url=database_url,
        rotation_interval=rotation_interval,
        shutdown_grace=1.0,
    )
    server = SecretsServer(
        settings, root_key, clock=clock or FakeClock(), environ=environ or {}
    )
    await server.start()
    client = SecretsClient(
        f"127.0.0.1:{server.port}",
        timeout=10,
        wait_for_ready=True,
        token=client_token,
        tls=client_tls,
        # The suite's own client reads through to the server every time.
        cache=False,
    )
    running = RunningServer(server, client)
    try:
        yield running
        values = await stored_values(server.store, scan_root_key or root_key)
        await server.manager.audit.flush()
        trail = await audit_text(server.store)
    finally:
        await client.close()
        await server.stop()
    # Every in-process server of the suite ends with this scan.
    assert_no_leak(values, LOGS.text() if LOGS else "", trail)


async def stored_values(store: Store, root_key: str) -> list[str]:
    """Open every stored version of every secret with the root key.

    Versions that a test damaged on purpose are passed over.
    """
    async with store.read() as tx:
        meta = await tx.meta()
        terms = await tx.key_terms()
        records = await tx.secrets()
    if meta is None:
        return []
    root = RootKey(root_key, meta.key_salt)
    ring = Keyring()
    for term, wrapped in terms:
        ring = ring.with_term(term, root.unwrap(term, wrapped))

    values = []
    for record in records:
        for version in record.versions.values():
            if version.sealed_value is None:
                continue
            try:
                plain = ring.open(record.name, version.version, version.sealed_value)
            except SealError:
                continue
            values.append(plain.decode())
    # A database URL's password must not leak on its own either.
    values.extend(_url_passwords(values))
    return values


async def audit_text(store: Store) -> str:
    """Return every audit record as text."""
    async with store.engine.connect() as conn:
        rows = (await conn.execute(sa.select(tables.audit_records))).all()
    return "\n".join(repr(tuple(row)) for row in rows)


def _url_passwords(values: list[str]) -> list[str]:
    passwords = []
    for value in values:
        try:
            password = urlsplit(value).password
        except ValueError:
            continue
        # A test's placeholder ("pw") may be a word of any log line.
        if password and len(password) >= 8:
            passwords.append(unquote(password))
    return passwords


def assert_no_leak(values: list[str], *texts: str) -> None:
    """Fail when any secret value appears in any of ``texts``."""
    for value in values:
        for text in texts:
            assert value not in text, "a secret value reached a log or audit record"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """A ``secretsvc serve`` process, its output kept in a file."""

    def __init__(self, workdir: Path, database_url: str, **env: str) -> None:
        self.port = free_port()
        self.target = f"127.0.0.1:{self.port}"
        self.log_path = workdir / f"server-{self.port}.log"
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("SECRETSVC_")},
            "SECRETSVC_LISTEN": self.target,
            "SECRETSVC_DATABASE_URL": database_url,
            **env,
        }
        for name in ("PASSWORD_MASTER_KEY", "PASSWORD_MASTER_KEY_FILE"):
            if name not in env:
                self.env.pop(name, None)
        self.workdir = workdir
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, *args: str) -> ServerProcess:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "secretsvc", "serve", *args],
            cwd=self.workdir,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        return self

    async def wait_ready(self, within: float = 15.0) -> None:
        async def listening() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"server exited early:\n{self.output()}")
            return "listening on" in self.output()

        await poll_until(listening, within=within, every=0.05)

    def run_to_exit(self, timeout: float = 20.0) -> int:
        self.start()
        assert self.process is not None
        return self.process.wait(timeout)

    def terminate(self, timeout: float = 10.0) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def output(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""


class LogCollector(logging.Handler):
    """Keep every log record's full text, traceback included."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))

    def text(self) -> str:
        return "\n".join(self.lines)


class TcpProxy:
    """A loopback TCP proxy to a store, which a test can cut and restore."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        return self

    async def cut(self) -> None:
        """Refuse new connections and drop every open one, as an outage would."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def restore(self) -> None:
        await self.start()

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._writers.difference_update((writer, up_writer))
