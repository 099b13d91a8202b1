"""``tapgate serve`` in a subprocess: several workers on one port, SIGTERM drain, restart of a dead worker."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
from typing import AsyncIterator

import asyncpg
import pytest

from gateway.client import GatewayClient
from tests.gateway.conftest import GatewayEnv, seed

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServeProcess:
    """A ``tapgate serve`` subprocess and what the tests need from it."""

    def __init__(self, process: subprocess.Popen[bytes], port: int, log_path: pathlib.Path) -> None:
        self.process = process
        self.port = port
        self.log_path = log_path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def worker_pids(self) -> set[int]:
        """Pids of the worker processes (children running multiprocessing's spawn entry point)."""
        pids = set()
        children = pathlib.Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children").read_text().split()
        for pid in map(int, children):
            with contextlib.suppress(OSError):
                cmdline = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes()
                if b"spawn_main" in cmdline and b"resource_tracker" not in cmdline:
                    pids.add(pid)
        return pids


@contextlib.asynccontextmanager
async def serve(dsn: str, tmp_path: pathlib.Path, workers: int = 2,
                shutdown_timeout_s: float = 8.0) -> AsyncIterator[ServeProcess]:
    port = free_port()
    log_path = tmp_path / "serve.log"
    environ = {k: v for k, v in os.environ.items() if not k.startswith("TAPGATE_")}
    environ.update(TAPGATE_SERVER_REFRESH_INTERVAL_S="0.2", TAPGATE_SERVER_SHUTDOWN_TIMEOUT_S=str(shutdown_timeout_s),
                   TAPGATE_SERVER_DEVICE_RATE_PER_S="10000", TAPGATE_SERVER_DEVICE_RATE_BURST="10000")
    with open(log_path, "wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "tapgate", "serve", "--dsn", dsn, "--port", str(port),
                                    "--workers", str(workers)], stdout=log, stderr=subprocess.STDOUT, env=environ)
    server = ServeProcess(process, port, log_path)
    try:
        deadline = time.monotonic() + 60
        while "gateway serving on" not in server.log():
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"tapgate serve did not start:\n{server.log()}")
            await asyncio.sleep(0.1)
        yield server
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(process.wait, 30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


async def make_env(dsn: str, port: int) -> GatewayEnv:
    issuer, validator, gate = await seed(dsn)
    env = GatewayEnv(dsn, None, issuer, validator, gate)  # type: ignore[arg-type]
    env.__dict__["fixed_port"] = port
    return env


def client_for(env: GatewayEnv, port: int) -> GatewayClient:
    return GatewayClient("127.0.0.1", port, env.validator)


async def test_workers_share_port_and_metrics(dsn: str, tmp_path: pathlib.Path) -> None:
    env = await make_env(dsn, 0)
    async with serve(dsn, tmp_path, workers=2) as server:
        assert len(server.worker_pids()) == 2
        clients = [client_for(env, server.port) for _ in range(16)]
        for client in clients:
            await client.connect()
        taps = [env.qr_tap(env.phone()) for _ in range(64)]
        answers = await asyncio.gather(*(clients[i % 16].tap(tap) for i, tap in enumerate(taps)))
        metrics = (await clients[0].request("GET", "/metrics", sign=False)).body.decode()
        for client in clients:
            await client.close()
    assert all(answer.status == 200 for answer in answers)
    conn = await asyncpg.connect(dsn)
    try:
        workers = await conn.fetchval("SELECT count(DISTINCT worker) FROM journal_batches")
        rows = await conn.fetchval("SELECT count(*) FROM taps")
    finally:
        await conn.close()
    # 16 connections all landing on one of two SO_REUSEPORT sockets has probability 2**-15.
    assert workers == 2
    assert rows == 64
    # /metrics on one worker sums the taps of both.
    total = sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                if line.startswith("tapgate_taps_total{"))
    assert total == 64


async def test_sigterm_drains_taps_in_flight(dsn: str, tmp_path: pathlib.Path) -> None:
    env = await make_env(dsn, 0)
    answered: list[dict] = []
    failed = 0

    async def device_loop(port: int, stop_at: float) -> None:
        nonlocal failed
        client = client_for(env, port)
        try:
            await client.connect()
            while time.monotonic() < stop_at:
                response = await client.tap(env.qr_tap(env.phone()))
                if response.status != 200:
                    failed += 1
                    return
                answered.append(response.decode())
        except (ConnectionError, OSError, TimeoutError):
            return
        finally:
            await client.close()

    async with serve(dsn, tmp_path, workers=2, shutdown_timeout_s=8.0) as server:
        loops = [asyncio.create_task(device_loop(server.port, time.monotonic() + 30)) for _ in range(24)]
        await asyncio.sleep(1.5)
        in_flight_before = len(answered)
        signalled = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(server.process.wait, 20)
        stopped_s = time.monotonic() - signalled
        await asyncio.gather(*loops)
        log = server.log()

    assert in_flight_before > 0
    assert code == 0, log
    assert stopped_s < 8.0 + 2.0
    assert "worker.stopped" in log
    assert "clean=False" not in log
    assert failed == 0
    # Every tap whose response reached a device is in the journal, exactly once.
    conn = await asyncpg.connect(dsn)
    try:
        journaled = {row[0] for row in await conn.fetch("SELECT tap_id FROM taps")}
    finally:
        await conn.close()
    assert {a["journal_id"] for a in answered} <= journaled
    assert len(answered) == len({a["journal_id"] for a in answered})


async def test_dead_worker_is_restarted(dsn: str, tmp_path: pathlib.Path) -> None:
    env = await make_env(dsn, 0)
    async with serve(dsn, tmp_path, workers=2) as server:
        before = server.worker_pids()
        victim = min(before)
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while True:
            now = server.worker_pids()
            if len(now) == 2 and victim not in now:
                break
            assert time.monotonic() < deadline, server.log()
            await asyncio.sleep(0.2)
        # New connections are served (by either worker) once the new one listens.
        await asyncio.sleep(1.0)
        statuses = []
        for _ in range(8):
            async with client_for(env, server.port) as client:
                statuses.append((await client.tap(env.qr_tap(env.phone()))).status)
        assert server.process.poll() is None
        log = server.log()
    assert statuses == [200] * 8
    assert "supervisor.worker_died" in log


async def test_workers_exit_when_supervisor_killed(dsn: str, tmp_path: pathlib.Path) -> None:
    await seed(dsn)
    async with serve(dsn, tmp_path, workers=2) as server:
        workers = server.worker_pids()
        server.process.kill()
        server.process.wait()
        deadline = time.monotonic() + 20
        while any(is_worker(pid) for pid in workers):
            assert time.monotonic() < deadline, "orphaned workers kept running"
            await asyncio.sleep(0.2)


def is_worker(pid: int) -> bool:
    try:
        return b"spawn_main" in pathlib.Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
