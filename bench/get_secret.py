"""Load GetSecret on secretsvc and on a minimal grpc.aio server; print both.

Each server runs as its own process on 127.0.0.1. Concurrent client tasks,
each with its own SecretsClient and so its own channel, call
GetSecret("JWT_SECRET") in a loop: first for a warm-up, then for a measured
window. The table gives requests, requests per second, p50 and p99 latency,
the CPU each side used, the server's CPU per call, and the ratio
secretsvc/minimal.

With ``--auth`` it measures what bearer-token authentication costs instead:
secretsvc runs without authentication, then with SECRETSVC_AUTH=token and a
token created beforehand with ``secretsvc migrate`` and ``secretsvc token
create``, which every client sends as ``authorization: Bearer`` metadata;
the ratios are token/no auth.

The load generator is one Python process on the same machine: it shares the
cores with the server under test, and its own CPU column shows when it, not
the server, is the limit.

    python bench/get_secret.py --clients 8 --seconds 5
    python bench/get_secret.py --clients 8 --seconds 5 --auth
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from secretsvc_client import (
    DeadlineExceededError,
    NotFoundError,
    SecretsClient,
    SecretsError,
    UnavailableError,
)

# The secret every call reads.
READ_NAME = "JWT_SECRET"
BENCH_USER = "bench-user"
# A fixed 40-character root key: the store lives in a temporary directory and
# is deleted at the end, so nothing it seals is worth protecting.
ROOT_KEY = "bench-only-root-key-0123456789abcdefghij"
MINIMAL_SERVER = Path(__file__).with_name("minimal_server.py")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
# Who the bench token is for; the server audits its calls as token:bench.
BENCH_CALLER = "bench"
# The bench token may read and initialize every secret, as its calls need.
BENCH_POLICY = """\
[[grant]]
actions = ["read", "initialize"]
secrets = ["*"]
"""

READY_WITHIN = 30.0
READY_POLL = 0.05
TOKEN_WITHIN = 60.0
CALL_TIMEOUT = 10.0
STOP_WITHIN = 10.0
# A bound on each client's loop besides the clock.
MAX_CALLS_PER_CLIENT = 5_000_000
MAX_CLIENTS = 256
MAX_SECONDS = 600.0
OUTPUT_TAIL_LINES = 20


class BenchError(Exception):
    """The benchmark could not run: a server did not start or answered wrongly."""


@dataclass(frozen=True, slots=True)
class Load:
    """How hard and how long to drive a server."""

    clients: int
    seconds: float
    warmup: float


@dataclass(frozen=True, slots=True)
class Measurement:
    """What one server did in the measured window."""

    server: str
    latencies: list[float]
    elapsed: float
    server_cpu: float | None
    client_cpu: float

    @property
    def requests(self) -> int:
        """Return the number of calls started in the window."""
        return len(self.latencies)

    @property
    def rate(self) -> float:
        """Return the calls per second over the window."""
        return self.requests / self.elapsed

    @property
    def server_cpu_per_call(self) -> float | None:
        """Return the server's CPU seconds per call, or None when unknown."""
        if self.server_cpu is None:
            return None
        return self.server_cpu / self.requests

    def percentile_ms(self, percent: int) -> float:
        """Return a latency percentile, in milliseconds."""
        cuts = statistics.quantiles(self.latencies, n=100, method="inclusive")
        return cuts[percent - 1] * 1000


class ServerProcess:
    """A server under test, run as its own process with its output in a file.

    ``token``, when set, is the bearer token every client of it sends.
    """

    def __init__(
        self,
        name: str,
        port: int,
        argv: Sequence[str],
        env: dict[str, str],
        workdir: Path,
    ) -> None:
        self.name = name
        self.port = port
        self.target = f"127.0.0.1:{port}"
        self.argv = [*argv]
        self.env = env
        self.workdir = workdir
        self.token: str | None = None
        self.log_path = workdir / f"{name.split()[0]}-{port}.log"
        self._process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> ServerProcess:
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                self.argv,
                cwd=self.workdir,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def client(self, timeout: float) -> SecretsClient:
        """Return a new client of this server, with its own channel."""
        return SecretsClient(
            self.target, timeout=timeout, token=self.token, cache=False
        )

    @property
    def process(self) -> subprocess.Popen[bytes]:
        """Return the running process."""
        assert self._process is not None, "the server was not started"
        return self._process

    def check_running(self) -> None:
        """Raise BenchError, with the server's last output, if it has exited."""
        code = self.process.poll()
        if code is not None:
            message = f"{self.name} exited with {code}:\n{self.output_tail()}"
            raise BenchError(message)

    def stop(self) -> None:
        """Send SIGTERM, then kill the process if it has not exited in time."""
        if self._process is None or self._process.poll() is not None:
            return
        self._process.send_signal(signal.SIGTERM)
        try:
            self._process.wait(STOP_WITHIN)
        except subprocess.TimeoutExpired:
            print(f"{self.name} ignored SIGTERM; killing it", file=sys.stderr)
            self._process.kill()
            self._process.wait()

    def cpu_seconds(self) -> float | None:
        """Return the CPU time the process has used, or None off Linux."""
        try:
            stat = Path(f"/proc/{self.process.pid}/stat").read_text()
        except OSError:
            return None
        # utime and stime are the 14th and 15th fields; the name in
        # parentheses, the 2nd, may itself hold spaces.
        fields = stat.rsplit(")", 1)[1].split()
        ticks = int(fields[11]) + int(fields[12])

        return ticks / os.sysconf("SC_CLK_TCK")

    def output_tail(self) -> str:
        """Return the last lines the server wrote."""
        lines = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(lines[-OUTPUT_TAIL_LINES:])


def free_port() -> int:
    """Return a port on 127.0.0.1 that is free now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def clean_environ() -> dict[str, str]:
    """Return this environment without the settings a server would pick up."""
    dropped = ("PASSWORD_MASTER_KEY", "PASSWORD_MASTER_KEY_FILE", "DATABASE_URL")
    return {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("SECRETSVC_") and name not in dropped
    }


def secretsvc_process(
    workdir: Path, log_level: str, *, auth: str = "none"
) -> ServerProcess:
    """Prepare a ``secretsvc serve`` process with a fresh SQLite store.

    With ``auth="token"`` every call needs a bearer token: give the server
    one with :func:`create_token` before starting it.
    """
    port = free_port()
    database = workdir / f"bench-{log_level.lower()}-{auth}.db"
    env = clean_environ()
    env["SECRETSVC_LISTEN"] = f"127.0.0.1:{port}"
    env["SECRETSVC_DATABASE_URL"] = f"sqlite+aiosqlite:///{database}"
    env["SECRETSVC_LOG_LEVEL"] = log_level
    env["SECRETSVC_AUTH"] = auth
    env["PASSWORD_MASTER_KEY"] = ROOT_KEY
    argv = [sys.executable, "-m", "secretsvc", "serve"]
    name = f"secretsvc ({log_level})"
    if auth != "none":
        name = f"secretsvc ({log_level}, {auth})"

    return ServerProcess(name, port, argv, env, workdir)


async def create_token(server: ServerProcess) -> None:
    """Create the store of ``server``, not started yet, and a token in it."""
    policy = server.workdir / "bench-policy.toml"
    policy.write_text(BENCH_POLICY)
    await run_command(server, "migrate")
    out = await run_command(
        server, "token", "create", "--name", BENCH_CALLER, "--policy", str(policy)
    )
    # The command prints the token alone, once.
    server.token = out.strip()


async def run_command(server: ServerProcess, *args: str) -> str:
    """Run ``secretsvc ARGS`` on the store of ``server``; return its output."""
    # The command finds the store through SECRETSVC_DATABASE_URL.
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "secretsvc",
        *args,
        cwd=server.workdir,
        env=server.env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(TOKEN_WITHIN):
            out, err = await process.communicate()
    finally:
        # A timeout or SIGTERM leaves the command running: stop it.
        if process.returncode is None:
            process.kill()
            await process.wait()
    if process.returncode != 0:
        detail = err.decode(errors="replace").strip()
        raise BenchError(f"{args[0]} exited with {process.returncode}: {detail}")
    return out.decode()


def minimal_process(workdir: Path) -> ServerProcess:
    """Prepare a process of the minimal server in bench/."""
    port = free_port()
    argv = [sys.executable, str(MINIMAL_SERVER), "--port", str(port)]

    return ServerProcess("minimal", port, argv, clean_environ(), workdir)


async def wait_ready(server: ServerProcess) -> None:
    """Call GetSecret until the server answers with anything but UNAVAILABLE."""
    deadline = time.monotonic() + READY_WITHIN
    while time.monotonic() < deadline:
        server.check_running()
        # A fresh channel each time: a failed one waits out a reconnect backoff.
        async with server.client(timeout=1.0) as client:
            try:
                await client.get(READ_NAME)
            except (UnavailableError, DeadlineExceededError):
                await asyncio.sleep(READY_POLL)
                continue
            except NotFoundError:
                pass  # secretsvc before InitializeSecrets: up, and answering.
            return

    message = f"{server.name} did not answer within {READY_WITHIN:.0f} s"
    raise BenchError(f"{message}:\n{server.output_tail()}")


async def initialize(server: ServerProcess) -> None:
    """Report a login, as the auth service does, so that the secrets exist."""
    async with server.client(timeout=CALL_TIMEOUT) as client:
        outcome = await client.initialize(BENCH_USER)
    if READ_NAME not in (*outcome.generated, *outcome.already_present):
        raise BenchError(f"{server.name} did not create {READ_NAME}: {outcome}")


async def call_in_loop(
    client: SecretsClient, measure_from: float, measure_until: float
) -> list[float]:
    """Call GetSecret until the window ends; return the window's latencies."""
    latencies: list[float] = []
    for _ in range(MAX_CALLS_PER_CLIENT):
        started = time.perf_counter()
        if started >= measure_until:
            break
        await client.get(READ_NAME)
        if started >= measure_from:
            latencies.append(time.perf_counter() - started)

    return latencies


async def drive(server: ServerProcess, load: Load) -> Measurement:
    """Drive GetSecret on ``server`` with ``load``; return what it measured."""
    clients = [server.client(timeout=CALL_TIMEOUT) for _ in range(load.clients)]
    try:
        # Connect every channel before the clock starts.
        await asyncio.gather(*(client.get(READ_NAME) for client in clients))

        measure_from = time.perf_counter() + load.warmup
        measure_until = measure_from + load.seconds
        # The group cancels and awaits every loop, however the block ends.
        async with asyncio.TaskGroup() as group:
            loops = [
                group.create_task(call_in_loop(c, measure_from, measure_until))
                for c in clients
            ]
            # CPU is sampled at the window's edges, beside the calls.
            await asyncio.sleep(load.warmup)
            server_cpu_from = server.cpu_seconds()
            client_cpu_from = time.process_time()
        elapsed = time.perf_counter() - measure_from
        server_cpu_until = server.cpu_seconds()
        client_cpu = time.process_time() - client_cpu_from
    finally:
        await asyncio.gather(*(client.close() for client in clients))

    server_cpu = None
    if server_cpu_from is not None and server_cpu_until is not None:
        server_cpu = server_cpu_until - server_cpu_from
    latencies = [latency for loop in loops for latency in loop.result()]
    if len(latencies) < 2:
        raise BenchError(f"{server.name} answered {len(latencies)} calls in time")

    return Measurement(server.name, latencies, elapsed, server_cpu, client_cpu)


async def run_one(
    server: ServerProcess, load: Load, *, needs_initialize: bool
) -> Measurement:
    """Start ``server``, wait for it, initialize it if asked, and drive it."""
    with server:
        await wait_ready(server)
        if needs_initialize:
            await initialize(server)
        measurement = await drive(server, load)
        server.check_running()

    return measurement


# A line of ratios: its label, the measurement, and the baseline it is over.
Comparison = tuple[str, Measurement, Measurement]


async def run_against_minimal(
    load: Load, log_levels: Sequence[str]
) -> tuple[list[Measurement], list[Comparison]]:
    """Measure secretsvc at each log level, then the minimal server."""
    measurements = []
    with tempfile.TemporaryDirectory(prefix="secretsvc-bench-") as tmp:
        workdir = Path(tmp)
        for level in log_levels:
            server = secretsvc_process(workdir, level)
            measured = await run_one(server, load, needs_initialize=True)
            measurements.append(measured)
        minimal_server = minimal_process(workdir)
        minimal = await run_one(minimal_server, load, needs_initialize=False)

    compared = []
    for m in measurements:
        label = f"{m.server if len(log_levels) > 1 else 'secretsvc'}/minimal"
        compared.append((label, m, minimal))

    return [*measurements, minimal], compared


async def run_auth_cost(
    load: Load, log_levels: Sequence[str]
) -> tuple[list[Measurement], list[Comparison]]:
    """Measure secretsvc at each log level without, then with token auth."""
    measurements: list[Measurement] = []
    compared = []
    with tempfile.TemporaryDirectory(prefix="secretsvc-bench-") as tmp:
        workdir = Path(tmp)
        for level in log_levels:
            plain = secretsvc_process(workdir, level)
            without = await run_one(plain, load, needs_initialize=True)
            guarded = secretsvc_process(workdir, level, auth="token")
            await create_token(guarded)
            with_token = await run_one(guarded, load, needs_initialize=True)

            label = "token/no auth"
            if len(log_levels) > 1:
                label = f"{level} {label}"
            measurements += [without, with_token]
            compared.append((label, with_token, without))

    return measurements, compared


async def run_until_sigterm(
    load: Load, log_levels: Sequence[str], *, auth: bool
) -> tuple[list[Measurement], list[Comparison]]:
    """Run the benchmark; SIGTERM cancels it, as Ctrl-C does, so servers stop."""
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)

    if auth:
        return await run_auth_cost(load, log_levels)
    return await run_against_minimal(load, log_levels)


def cpu_percent(seconds: float | None, elapsed: float) -> str:
    """Format CPU seconds over the window as a percentage of one core."""
    if seconds is None:
        return "-"
    return f"{seconds / elapsed * 100:.0f}"


def per_call_us(seconds: float | None) -> str:
    """Format CPU seconds per call in microseconds."""
    if seconds is None:
        return "-"
    return f"{seconds * 1e6:.0f}"


def ratio(measured: float | None, baseline: float | None) -> str:
    """Format a figure over the same figure of the baseline."""
    if measured is None or not baseline:
        return "-"
    return f"{measured / baseline:.2f}"


def table(
    load: Load, measurements: Sequence[Measurement], compared: Sequence[Comparison]
) -> str:
    """Lay the measurements out as a table, then a line of ratios per comparison."""
    cores = os.cpu_count() or 0
    clients = f"{load.clients} client{'s' if load.clients > 1 else ''}"
    header = (
        f"GetSecret({READ_NAME}): {clients}, {load.seconds:g} s after "
        f"{load.warmup:g} s warm-up; the load generator shares the {cores} cores"
    )
    columns = (
        f"{'server':<27} {'requests':>8} {'req/s':>6} {'p50 ms':>6} "
        f"{'p99 ms':>6} {'srv cpu%':>8} {'gen cpu%':>8} {'srv us/req':>10}"
    )
    lines = [header, columns]
    for m in measurements:
        lines.append(
            f"{m.server:<27} {m.requests:>8} {m.rate:>6.0f} "
            f"{m.percentile_ms(50):>6.2f} {m.percentile_ms(99):>6.2f} "
            f"{cpu_percent(m.server_cpu, m.elapsed):>8} "
            f"{cpu_percent(m.client_cpu, m.elapsed):>8} "
            f"{per_call_us(m.server_cpu_per_call):>10}"
        )

    for label, m, base in compared:
        rate = ratio(m.rate, base.rate)
        p50 = ratio(m.percentile_ms(50), base.percentile_ms(50))
        p99 = ratio(m.percentile_ms(99), base.percentile_ms(99))
        cpu = ratio(m.server_cpu_per_call, base.server_cpu_per_call)
        lines.append(
            f"{label:<27} {'':>8} {rate:>6} {p50:>6} {p99:>6} {'':>8} {'':>8} {cpu:>10}"
        )

    return "\n".join(lines)


def positive(kind: type[int] | type[float], limit: float) -> Callable[[str], float]:
    """Return an argparse type: a number above 0 and at most ``limit``."""

    def parse(text: str) -> float:
        value = kind(text)
        if not 0 < value <= limit:
            raise argparse.ArgumentTypeError(f"{text} is not in (0, {limit:g}]")
        return value

    return parse


def main() -> None:
    parser = argparse.ArgumentParser(
        description="Load GetSecret on secretsvc and on a minimal grpc.aio server."
    )
    parser.add_argument(
        "--auth",
        action="store_true",
        help="compare secretsvc with bearer-token auth against it without, "
        "instead of against the minimal server",
    )
    parser.add_argument(
        "--clients",
        type=positive(int, MAX_CLIENTS),
        default=8,
        help="concurrent clients, each with its own channel [8]",
    )
    parser.add_argument(
        "--seconds",
        type=positive(float, MAX_SECONDS),
        default=5.0,
        help="length of the measured window [5]",
    )
    parser.add_argument(
        "--warmup",
        type=positive(float, MAX_SECONDS),
        default=1.0,
        help="seconds of calls before the window, not measured [1]",
    )
    parser.add_argument(
        "--log-level",
        dest="log_levels",
        action="append",
        choices=LOG_LEVELS,
        help="secretsvc's log level; repeat to run it at several [WARNING]",
    )
    args = parser.parse_args()

    load = Load(clients=args.clients, seconds=args.seconds, warmup=args.warmup)
    try:
        levels = args.log_levels or ["WARNING"]
        run = run_until_sigterm(load, levels, auth=args.auth)
        measurements, compared = asyncio.run(run)
    except (BenchError, SecretsError) as error:
        sys.exit(f"bench failed: {error}")
    except asyncio.CancelledError:
        print("bench stopped by SIGTERM", file=sys.stderr)
        sys.exit(128 + signal.SIGTERM)
    print(table(load, measurements, compared))


if __name__ == "__main__":
    main()
