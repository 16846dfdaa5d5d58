"""A throwaway PostgreSQL cluster that requires passwords (scram-sha-256).

The machine's main PostgreSQL server trusts every loopback connection, so a
test on it cannot show that an old password stops working. This module starts
a private cluster in a temporary directory instead: ``initdb`` with
``--auth=scram-sha-256`` writes a ``pg_hba.conf`` that demands a password for
socket and TCP connections alike, and the server listens on 127.0.0.1 on a
free port.

``initdb`` refuses to run as root, so as root the PostgreSQL commands run as
the ``postgres`` system user through ``runuser``, in a directory it owns.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import re
import secrets
import shlex
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

HOST = "127.0.0.1"
ADMIN_USER = "secretsvc_admin"
SYSTEM_USER = "postgres"
# Attempts at starting the server, each on a fresh port: another process may
# take the free port between our probe and the server's bind.
START_ATTEMPTS = 3
COMMAND_TIMEOUT = 60.0
LOG_TAIL_LINES = 30


class ClusterUnavailable(Exception):
    """The throwaway cluster cannot be set up here; the message says why."""


@dataclass(frozen=True)
class PasswordCluster:
    """A running cluster where every connection must present its password."""

    host: str
    port: int
    admin_user: str
    admin_password: str

    def admin_url(self, database: str = "postgres") -> str:
        """Return a ``postgresql://`` URL that logs in as the superuser."""
        return self.url(self.admin_user, self.admin_password, database)

    def url(self, user: str, password: str, database: str = "postgres") -> str:
        """Return a ``postgresql://`` URL for ``user`` with ``password``."""
        return (
            f"postgresql://{quote(user, safe='')}:{quote(password, safe='')}"
            f"@{self.host}:{self.port}/{quote(database, safe='')}"
        )


@contextlib.contextmanager
def password_cluster() -> Iterator[PasswordCluster]:
    """Start a fresh password-only cluster; stop and delete it on exit.

    Raises :class:`ClusterUnavailable` when the PostgreSQL binaries (or, as
    root, ``runuser`` and the ``postgres`` user) are missing, or when the
    cluster fails to initialise or start.
    """
    bindir = _find_bindir()
    prefix = _command_prefix()
    base = Path(tempfile.mkdtemp(prefix="secretsvc-pgcluster-"))
    data = base / "data"
    try:
        _hand_over(base, prefix)
        password = secrets.token_urlsafe(24)
        _initdb(bindir, prefix, base, data, password)
        _check_hba(data / "pg_hba.conf")
        sockets = base / "sockets"
        sockets.mkdir(mode=0o700)
        _hand_over(sockets, prefix)
        port = _start(bindir, prefix, base, data, sockets)
        try:
            yield PasswordCluster(HOST, port, ADMIN_USER, password)
        finally:
            _stop(bindir, prefix, base, data)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _find_bindir() -> Path:
    """Find a directory holding ``initdb``, ``pg_ctl`` and ``postgres``."""
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            found = subprocess.run(
                [pg_config, "--bindir"],
                capture_output=True,
                text=True,
                check=True,
                timeout=COMMAND_TIMEOUT,
            ).stdout.strip()
            if found:
                candidates.append(Path(found))
    versioned = glob.glob("/usr/lib/postgresql/*/bin")
    candidates += [Path(d) for d in sorted(versioned, key=_version_key, reverse=True)]
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(Path(initdb).parent)
    for candidate in candidates:
        if all(
            os.access(candidate / name, os.X_OK)
            for name in ("initdb", "pg_ctl", "postgres")
        ):
            return candidate
    looked = ", ".join(str(c) for c in candidates) or "nowhere"
    raise ClusterUnavailable(
        "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found; "
        f"looked in: {looked}"
    )


def _version_key(bindir: str) -> tuple[int, ...]:
    """Sort ``/usr/lib/postgresql/<version>/bin`` by version number."""
    return tuple(int(part) for part in re.findall(r"\d+", Path(bindir).parent.name))


def _command_prefix() -> list[str]:
    """Return the prefix that runs a command as the ``postgres`` user, if root."""
    if os.geteuid() != 0:
        return []
    runuser = shutil.which("runuser")
    if runuser is None:
        raise ClusterUnavailable(
            "running as root, and initdb refuses root, but runuser is not installed"
        )
    try:
        pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        raise ClusterUnavailable(
            f"running as root, and initdb refuses root, but there is no "
            f"{SYSTEM_USER!r} system user to run it as"
        ) from None
    return [runuser, "-u", SYSTEM_USER, "--"]


def _hand_over(path: Path, prefix: Sequence[str]) -> None:
    """Give ``path`` to the ``postgres`` user when commands run as that user."""
    if prefix:
        account = pwd.getpwnam(SYSTEM_USER)
        os.chown(path, account.pw_uid, account.pw_gid)


def _run(
    prefix: Sequence[str], command: Sequence[str], cwd: Path
) -> subprocess.CompletedProcess[str]:
    """Run a PostgreSQL command (as ``postgres`` when ``prefix`` says so)."""
    # PG* variables of the caller (PGDATA, PGPORT, ...) must not steer it.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    try:
        return subprocess.run(
            [*prefix, *command],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        raise ClusterUnavailable(f"{command[0]} failed to run: {error}") from error


def _initdb(
    bindir: Path, prefix: Sequence[str], base: Path, data: Path, password: str
) -> None:
    """Create the cluster with a scram-sha-256 superuser ``ADMIN_USER``."""
    pwfile = base / "pwfile"
    pwfile.write_text(password + "\n")
    try:
        pwfile.chmod(0o600)
        _hand_over(pwfile, prefix)
        result = _run(
            prefix,
            [
                str(bindir / "initdb"),
                "-D",
                str(data),
                "-U",
                ADMIN_USER,
                f"--pwfile={pwfile}",
                "--auth=scram-sha-256",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
                "--no-instructions",
            ],
            base,
        )
    finally:
        pwfile.unlink(missing_ok=True)
    if result.returncode != 0:
        raise ClusterUnavailable(
            f"initdb exited with {result.returncode}: "
            f"{result.stderr.strip() or result.stdout.strip()}"
        )


def _check_hba(hba: Path) -> None:
    """Make sure every rule of ``pg_hba.conf`` demands a scram-sha-256 password."""
    rules = [
        line.split()
        for line in hba.read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    lax = [" ".join(rule) for rule in rules if rule[-1] != "scram-sha-256"]
    if not rules or lax:
        raise ClusterUnavailable(
            f"{hba} does not require scram-sha-256 passwords everywhere: {lax}"
        )


def _free_port() -> int:
    """Return a TCP port on ``HOST`` that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
        return port


def _start(
    bindir: Path, prefix: Sequence[str], base: Path, data: Path, sockets: Path
) -> int:
    """Start the server on a free port; return the port."""
    log = base / "server.log"
    failure = ""
    for _ in range(START_ATTEMPTS):
        port = _free_port()
        options = (
            f"-c listen_addresses={HOST} -p {port} -k {shlex.quote(str(sockets))} "
            "-c fsync=off -c max_connections=50"
        )
        command = [str(bindir / "pg_ctl"), "-D", str(data), "-w", "-t", "30"]
        seen = log.stat().st_size if log.exists() else 0
        result = _run(prefix, [*command, "-l", str(log), "-o", options, "start"], base)
        if result.returncode == 0:
            return port
        tail = _log_tail(log, seen)
        failure = (
            f"pg_ctl start exited with {result.returncode}\n"
            f"stderr: {result.stderr.strip()}\n"
            f"server log (last {LOG_TAIL_LINES} lines):\n{tail}"
        )
        # A server that missed the deadline may still be coming up.
        _stop(bindir, prefix, base, data)
        if "could not bind" not in tail and "already in use" not in tail:
            break
    raise ClusterUnavailable(failure)


def _stop(bindir: Path, prefix: Sequence[str], base: Path, data: Path) -> None:
    """Stop the server at once; it holds nothing worth a clean shutdown."""
    with contextlib.suppress(ClusterUnavailable):
        _run(
            prefix,
            [str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
            base,
        )


def _log_tail(log: Path, start: int) -> str:
    """Return the last lines the server logged after byte ``start``."""
    try:
        with log.open("rb") as stream:
            stream.seek(start)
            lines = stream.read().decode(errors="replace").splitlines()
    except OSError as error:
        return f"(no server log: {error})"
    return "\n".join(lines[-LOG_TAIL_LINES:])
