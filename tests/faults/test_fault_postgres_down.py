"""PostgreSQL unreachable: taps get 503 with Retry-After in bounded time, /readyz says not ready,
and the worker recovers by itself when PostgreSQL returns, without a restart.

The worker runs in the test's event loop on an embedded PostgreSQL that the
test starts and stops itself (``own_postgres``), with a 2 s connect timeout.
"""

from __future__ import annotations

import asyncio
import time

import asyncpg
import msgspec

from gateway.client import GatewayClient
from gateway.pgembed import EmbeddedPostgres
from gateway.server import Worker
from tests.faults.conftest import fault_config
from tests.faults.validator import RetryingValidator
from tests.gateway import conftest as gw

CONNECT_TIMEOUT_S = 2.0
# A tap during the outage must be answered within this many seconds: the
# pipeline's own timeout (the connect timeout) plus scheduling slack on a busy machine.
ANSWER_BOUND_S = 2 * CONNECT_TIMEOUT_S + 2.0
RECOVERY_BOUND_S = 15.0


def start_on_same_port(server: EmbeddedPostgres) -> None:
    """Start a stopped server on the port it had, so the worker's DSN reaches it again."""
    # NOTE: EmbeddedPostgres.start() picks a new free port, and restart() never leaves the server
    # down, so this test calls pg_ctl through the class's private runner.
    server._run("pg_ctl", "-D", str(server.data_dir), "-l", str(server.log_file), "-w", "-t", "60",
                "-o", f"-p {server.port}", "start", timeout=90)
    server._started_here = True


async def timed(client: GatewayClient, method: str, target: str, body: bytes = b"",
                sign: bool = True) -> tuple[int, dict[str, str], dict, float]:
    started = time.monotonic()
    response = await client.request(method, target, body, sign=sign)
    return response.status, response.headers, response.decode() or {}, time.monotonic() - started


async def test_outage_answered_503_then_recovers(own_postgres: EmbeddedPostgres) -> None:
    server = own_postgres
    issuer, validator, gate = await gw.seed(server.dsn)
    worker = Worker(fault_config(), server.dsn, name="outage-worker")
    await worker.start()
    env = gw.GatewayEnv(server.dsn, worker, issuer, validator, gate)
    try:
        async with env.client(timeout_s=30.0) as client:
            assert (await client.tap(env.qr_tap(env.phone()))).status == 200

            await asyncio.to_thread(server.stop, "fast")

            # Several taps at once, each on its own connection, as several validators would send them.
            outage_taps = [env.qr_tap(env.phone()) for _ in range(5)]

            async def one(tap: dict) -> tuple[int, dict[str, str], dict, float]:
                async with env.client(timeout_s=30.0) as own:
                    return await timed(own, "POST", "/v1/taps", msgspec.json.encode(tap))

            answers = await asyncio.gather(*(one(tap) for tap in outage_taps))
            for status, headers, body, elapsed in answers:
                assert status == 503, body
                assert body["error"]["code"] == "database_unavailable"
                assert body["error"]["message_zh"] and body["error"]["message_en"]
                assert headers.get("retry-after", "").isdigit()
                assert elapsed < ANSWER_BOUND_S

            status, headers, body, elapsed = await timed(client, "GET", "/readyz", sign=False)
            assert status == 503, body
            assert body["error"]["code"] == "not_ready"
            assert elapsed < ANSWER_BOUND_S
            status, _, _, _ = await timed(client, "GET", "/healthz", sign=False)
            assert status == 200

            await asyncio.to_thread(start_on_same_port, server)
            returned = time.monotonic()

            # The same taps, retried as a validator would, are journaled once each.
            retrying = RetryingValidator("127.0.0.1", env.port, env.validator, give_up_after_s=RECOVERY_BOUND_S)
            try:
                acks = [await retrying.submit(tap) for tap in outage_taps]
            finally:
                await retrying.close()
            recovered_s = time.monotonic() - returned
            assert all(ack is not None and ack.decision == "accepted" for ack in acks), acks
            assert recovered_s < RECOVERY_BOUND_S

            deadline = time.monotonic() + RECOVERY_BOUND_S
            while (await timed(client, "GET", "/readyz", sign=False))[0] != 200:
                assert time.monotonic() < deadline, "/readyz stayed not ready after PostgreSQL returned"
                await asyncio.sleep(0.2)
    finally:
        await worker.drain(5.0)

    conn = await asyncpg.connect(server.dsn)
    try:
        rows = await conn.fetch("SELECT device_tap_id, count(*) AS n FROM taps GROUP BY device_tap_id")
    finally:
        await conn.close()
    counts = {row["device_tap_id"]: row["n"] for row in rows}
    assert all(counts.get(tap["tap_id"]) == 1 for tap in outage_taps), counts
    assert sum(counts.values()) == 1 + len(outage_taps)
    print(f"\nOUTAGE-SUMMARY 503_answer_max_s={max(a[3] for a in answers):.2f} recovered_s={recovered_s:.2f}")


def server_pids(server: EmbeddedPostgres) -> list[int]:
    """The postmaster of ``server`` (from postmaster.pid) and its children."""
    import pathlib

    postmaster = int((server.data_dir / "postmaster.pid").read_text().split()[0])
    pids = [postmaster]
    for entry in pathlib.Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == postmaster:
                pids.append(int(entry.name))
    return pids


async def test_hung_postgres_answered_503_in_bounded_time(own_postgres: EmbeddedPostgres) -> None:
    # SIGSTOP freezes the server without closing its sockets: connections and queries hang instead of
    # failing, which is what a dead network path looks like. Only timeouts can bound the answer.
    import os
    import signal

    server = own_postgres
    issuer, validator, gate = await gw.seed(server.dsn)
    worker = Worker(fault_config(), server.dsn, name="hung-worker")
    await worker.start()
    env = gw.GatewayEnv(server.dsn, worker, issuer, validator, gate)
    frozen = server_pids(server)
    tap = env.qr_tap(env.phone())
    try:
        for pid in frozen:
            os.kill(pid, signal.SIGSTOP)
        try:
            async with env.client(timeout_s=30.0) as client:
                status, headers, body, elapsed = await timed(client, "POST", "/v1/taps", msgspec.json.encode(tap))
                ready_status, _, _, ready_elapsed = await timed(client, "GET", "/readyz", sign=False)
        finally:
            for pid in frozen:
                os.kill(pid, signal.SIGCONT)
        assert status == 503, body
        assert headers.get("retry-after", "").isdigit()
        assert elapsed < ANSWER_BOUND_S
        assert ready_status == 503
        assert ready_elapsed < ANSWER_BOUND_S

        retrying = RetryingValidator("127.0.0.1", env.port, env.validator, give_up_after_s=RECOVERY_BOUND_S)
        try:
            ack = await retrying.submit(tap)
        finally:
            await retrying.close()
        assert ack is not None and ack.decision == "accepted"
    finally:
        await worker.drain(5.0)
    conn = await asyncpg.connect(server.dsn)
    try:
        assert await conn.fetchval("SELECT count(*) FROM taps WHERE device_tap_id = $1", tap["tap_id"]) == 1
    finally:
        await conn.close()
    print(f"\nHUNG-SUMMARY 503_answer_s={elapsed:.2f} readyz_s={ready_elapsed:.2f}")
