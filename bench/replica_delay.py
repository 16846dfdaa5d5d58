"""Measure how long a rotation on replica B takes to reach a watcher of replica A.

Two ``secretsvc serve`` processes share a fresh PostgreSQL database. A
watcher follows A; the script rotates a secret on B, waits for the event on
A, and repeats. It prints p50 and p99 of the delay from B's reply to A's
event, beside the same delay for a watcher of B itself, and their ratio.

    python bench/replica_delay.py --rotations 500
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
from secretsvc_client import RotationEvent, SecretsClient, UnavailableError

ADMIN_DSN = os.environ.get(
    "SECRETSVC_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres"
)
# A fixed root key: the database is dropped at the end.
ROOT_KEY = "bench-only-root-key-0123456789abcdefghij"
NAMES = ("JWT_SECRET", "CSRF_SECRET")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_replica(url: str, workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    target = f"127.0.0.1:{free_port()}"
    env = {
        **os.environ,
        "SECRETSVC_LISTEN": target,
        "SECRETSVC_DATABASE_URL": url,
        "SECRETSVC_LOG_LEVEL": "WARNING",
        "PASSWORD_MASTER_KEY": ROOT_KEY,
    }
    log = (workdir / f"{target.replace(':', '-')}.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "secretsvc", "serve"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    return process, target


async def wait_ready(target: str, deadline: float = 30.0) -> None:
    async with SecretsClient(target, timeout=1) as client:
        end = time.monotonic() + deadline
        while True:
            try:
                await client.list()
                return
            except UnavailableError:
                if time.monotonic() > end:
                    raise
                await asyncio.sleep(0.1)


async def delays(
    rotate_on: SecretsClient, watch_on: SecretsClient, rotations: int, since: int
) -> tuple[list[float], list[float]]:
    """Rotate ``rotations`` times; return the delays to the watcher, in seconds.

    The first list counts from the RotateSecret call, the second from its
    reply (an event may arrive before the reply does: those are negative).
    ``since`` is the id of the newest event in the log before the first one.
    """
    arrivals: asyncio.Queue[tuple[RotationEvent, float]] = asyncio.Queue()

    async def follow() -> None:
        async for event in watch_on.watch(since_event_id=since):
            arrivals.put_nowait((event, time.perf_counter()))

    watcher = asyncio.create_task(follow())
    await asyncio.sleep(0.2)
    from_call, from_reply = [], []
    try:
        for i in range(rotations):
            called = time.perf_counter()
            info = await rotate_on.rotate(NAMES[i % 2])
            replied = time.perf_counter()
            while True:
                event, arrived = await asyncio.wait_for(arrivals.get(), 10)
                if (event.name, event.new_version) == (info.name, info.version):
                    break
            from_call.append(arrived - called)
            from_reply.append(arrived - replied)
    finally:
        watcher.cancel()
    return from_call, from_reply


def summary(label: str, values: list[float]) -> tuple[float, float]:
    cuts = statistics.quantiles(values, n=100)
    p50, p99 = statistics.median(values) * 1000, cuts[98] * 1000
    print(f"{label:40} {len(values):>6} {p50:>9.2f} {p99:>9.2f}")
    return p50, p99


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rotations", type=int, default=500)
    args = parser.parse_args()

    name = f"secretsvc_bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(ADMIN_DSN)
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = f"postgresql+asyncpg://{urlsplit(ADMIN_DSN).netloc}/{name}"
    processes = []
    try:
        with tempfile.TemporaryDirectory() as workdir:
            for _ in range(2):
                processes.append(start_replica(url, Path(workdir)))
            (_, target_a), (_, target_b) = processes
            await asyncio.gather(wait_ready(target_a), wait_ready(target_b))
            async with SecretsClient(target_a) as a, SecretsClient(target_b) as b:
                await b.initialize("bench-user")
                # Initialization wrote events 1 to 3.
                across = await delays(b, a, args.rotations, since=3)
                same = await delays(b, b, args.rotations, since=3 + args.rotations)
    finally:
        for process, _ in processes:
            process.terminate()
            process.wait(15)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()

    header = f"{'':40} {'events':>6} {'p50 ms':>9} {'p99 ms':>9}"
    print(header)
    p50_across, p99_across = summary("B -> A, from the RotateSecret call", across[0])
    summary("B -> A, from its reply", across[1])
    p50_same, p99_same = summary("B -> B, from the RotateSecret call", same[0])
    summary("B -> B, from its reply", same[1])
    print(
        f"ratio across/same replica, from the call: p50 {p50_across / p50_same:.2f},"
        f" p99 {p99_across / p99_same:.2f}"
    )


if __name__ == "__main__":
    asyncio.run(main())
