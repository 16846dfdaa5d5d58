"""Measure the cached client: the cost of a cached get, and how fast it follows.

A ``secretsvc serve`` process runs on a fresh SQLite store. This script
times ``get`` on a cached client against the same call over the network, then
rotates JWT_SECRET again and again while a second process holding a cached
client reports when it sees each new version. The delay is from the
RotateSecret call to that sighting (the follower polls its cache every
millisecond, which bounds the resolution).

    python bench/client_cache.py --rotations 300
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
from pathlib import Path

from secretsvc_client import NotFoundError, SecretsClient, UnavailableError

ROOT_KEY = "bench-only-root-key-0123456789abcdefghij"
NAME = "JWT_SECRET"
FOLLOWER = """
import asyncio, sys, time
from secretsvc_client import SecretsClient

async def main():
    async with SecretsClient(sys.argv[1], cache=True) as client:
        seen = (await client.get("JWT_SECRET")).version
        print(f"ready {seen}", flush=True)
        deadline = time.monotonic() + float(sys.argv[2])
        while time.monotonic() < deadline:
            version = (await client.get("JWT_SECRET")).version
            if version != seen:
                seen = version
                print(f"{version} {time.monotonic()}", flush=True)
            await asyncio.sleep(0.001)

asyncio.run(main())
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def wait_ready(target: str, within: float = 30.0) -> None:
    end = time.monotonic() + within
    async with SecretsClient(target, timeout=1) as client:
        while True:
            try:
                await client.get(NAME)
                return
            except NotFoundError:
                return
            except UnavailableError:
                if time.monotonic() > end:
                    raise
                await asyncio.sleep(0.1)


async def per_call_us(client: SecretsClient, calls: int) -> float:
    started = time.perf_counter()
    for _ in range(calls):
        await client.get(NAME)
    return (time.perf_counter() - started) / calls * 1e6


async def follow_delays(target: str, rotations: int) -> list[float]:
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        FOLLOWER,
        target,
        str(rotations * 0.5 + 30),
        stdout=asyncio.subprocess.PIPE,
    )
    assert child.stdout is not None
    try:
        ready = (await asyncio.wait_for(child.stdout.readline(), 30)).split()
        assert ready[0] == b"ready", ready
        delays = []
        async with SecretsClient(target) as client:
            for _ in range(rotations):
                called = time.monotonic()
                info = await client.rotate(NAME)
                while True:
                    line = await asyncio.wait_for(child.stdout.readline(), 10)
                    version, seen_at = line.split()
                    if int(version) == info.version:
                        break
                delays.append(float(seen_at) - called)
        return delays
    finally:
        child.terminate()
        await child.wait()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rotations", type=int, default=300)
    parser.add_argument("--calls", type=int, default=100_000)
    args = parser.parse_args()

    target = f"127.0.0.1:{free_port()}"
    with tempfile.TemporaryDirectory() as workdir:
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("SECRETSVC_")},
            "SECRETSVC_LISTEN": target,
            "SECRETSVC_DATABASE_URL": f"sqlite+aiosqlite:///{Path(workdir) / 's.db'}",
            "SECRETSVC_LOG_LEVEL": "WARNING",
            "PASSWORD_MASTER_KEY": ROOT_KEY,
        }
        with (Path(workdir) / "server.log").open("wb") as log:
            server = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "secretsvc",
                "serve",
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            await wait_ready(target)
            async with SecretsClient(target, cache=False) as plain:
                await plain.initialize("bench-user")
                network_us = await per_call_us(plain, max(args.calls // 100, 100))
            async with SecretsClient(target, cache=True) as cached:
                await cached.get(NAME)
                cached_us = await per_call_us(cached, args.calls)
            delays = await follow_delays(target, args.rotations)
        finally:
            server.terminate()
            await asyncio.wait_for(server.wait(), 15)

    cuts = statistics.quantiles(delays, n=100)
    print(f"get over the network:  {network_us:9.1f} us per call")
    print(f"get from the cache:    {cached_us:9.2f} us per call")
    print(f"cache/network:         {cached_us / network_us:9.4f}")
    print(
        f"RotateSecret call -> new version in another process's cache, "
        f"{len(delays)} rotations: p50 {statistics.median(delays) * 1000:.2f} ms, "
        f"p99 {cuts[98] * 1000:.2f} ms"
    )


if __name__ == "__main__":
    asyncio.run(main())
