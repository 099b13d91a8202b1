"""Faults under load: SIGKILL gateway workers and restart PostgreSQL while validators keep tapping.

``tapgate serve`` runs as a child process with two workers on a PostgreSQL
that the test starts itself. Retrying validators (``tests.faults.validator``)
send QR and card taps back to back; every tap that is not answered is sent
again with the same body, as a validator does. Meanwhile the test kills a
worker with SIGKILL (the supervisor starts a new one) and restarts
PostgreSQL. Afterwards:

- every tap a validator saw acknowledged is in the journal exactly once,
  with the journal id and fare it was answered with;
- no (device, tap id) has two rows, so a retried tap is never charged twice;
- the journal's hash chain verifies, by ``gateway.journal.verify_chain`` and by
  ``tapgate journal verify``;
- the gateway answered again within seconds after every fault: the longest
  stretch without any acknowledged tap is bounded, both workers run again,
  and /readyz is ready.

The short variant runs in the default suite; the long one is marked slow.
Each run prints one summary line (``FAULT-SUMMARY ...``) that
docs/reliability.md quotes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import itertools
import os
import pathlib
import random
import signal
import sys
import time
from typing import Any

import asyncpg
import pytest

from fastpath.entitlements import Entitlements
from fastpath.issuer import Card, IssuerKey, Phone, new_reader_nonce
from gateway import devices
from gateway.client import DeviceCredentials, GatewayClient, card_presented
from gateway.journal import verify_chain
from gateway.pgembed import EmbeddedPostgres
from tests.faults.gatewayproc import GatewayProcess
from tests.faults.validator import Acknowledged, LoadResult, RetryingValidator, drive
from tests.gateway import conftest as gw

# Longest stretch, in seconds, in which no validator may get any tap acknowledged.
SERVICE_GAP_MAX_S = 10.0


@dataclasses.dataclass
class Fleet:
    """Validators on route 1 with the riders that tap on them."""

    issuer: IssuerKey
    devices: list[DeviceCredentials]
    phones: list[Phone]
    cards: list[Card]
    tap_ids: dict[str, itertools.count]

    def make_tap(self, validator: RetryingValidator) -> dict[str, Any]:
        device = validator.creds.device_id
        at = gw.now_ms()
        tap: dict[str, Any] = {"tap_id": next(self.tap_ids[device]), "tap_time_ms": at, "route_id": gw.ROUTE,
                               "stop_id": "s01", "tap_kind": "board"}
        if random.random() < 0.25:
            card = random.choice(self.cards)
            tap.update(medium="card", presented=card_presented(card.answer(device.encode(), new_reader_nonce(), at)))
        else:
            tap.update(medium="qr", presented=random.choice(self.phones).qr_text(at))
        return tap


async def provision(dsn: str, validators: int, riders: int = 40) -> Fleet:
    issuer, first, _ = await gw.seed(dsn)
    creds = [first]
    conn = await asyncpg.connect(dsn)
    try:
        for n in range(2, validators + 1):
            device_id = f"bus-1-{n:03d}"
            secret = await devices.add_device(conn, device_id, gw.BUS_OPERATOR, "validator", route_id=gw.ROUTE)
            creds.append(DeviceCredentials(device_id, secret))
    finally:
        await conn.close()
    start = gw.now_ms() - gw.DAY_MS
    born = [dt.date(1990, 1, 1), dt.date(1950, 6, 1), dt.date(2012, 3, 1)]
    phones = [Phone.new(issuer, entitlements=Entitlements(birth_date=born[n % 3]), valid_from_ms=start)
              for n in range(riders)]
    cards = [Card.new(issuer, entitlements=Entitlements(birth_date=born[n % 3]), valid_from_ms=start)
             for n in range(riders)]
    return Fleet(issuer, creds, phones, cards, {c.device_id: itertools.count(1) for c in creds})


@dataclasses.dataclass
class FaultLog:
    worker_kills: int = 0
    postgres_restarts: int = 0
    # (what, started, ended) in time.monotonic() seconds.
    events: list[tuple[str, float, float]] = dataclasses.field(default_factory=list)


async def inject_faults(gateway: GatewayProcess, server: EmbeddedPostgres, plan: list[tuple[float, str]],
                        log: FaultLog) -> None:
    """Carry out ``plan``: (seconds after start, "kill" or "restart") in order."""
    started = time.monotonic()
    for at_s, what in plan:
        await asyncio.sleep(max(0.0, started + at_s - time.monotonic()))
        begin = time.monotonic()
        if what == "kill":
            # Wait until the supervisor has both workers again, so each kill hits a serving gateway.
            # Kill the older one, because a worker killed within 10 s of its start counts as a crash
            # loop and is restarted only after a growing delay (gateway/workers.py).
            pids = await gateway.wait_for_workers(timeout_s=45.0)
            os.kill(min(pids, key=gateway.started_ticks), signal.SIGKILL)
            log.worker_kills += 1
        elif what == "kill-all":
            for pid in await gateway.wait_for_workers(timeout_s=45.0):
                os.kill(pid, signal.SIGKILL)
            log.worker_kills += gateway.workers
        else:
            await asyncio.to_thread(server.restart, "fast")
            log.postgres_restarts += 1
        log.events.append((what, begin, time.monotonic()))


def longest_gap(acks: list[Acknowledged], start: float, end: float) -> float:
    times = sorted([start] + [ack.acknowledged_at for ack in acks] + [end])
    return max(b - a for a, b in zip(times, times[1:]))


@dataclasses.dataclass
class JournalCheck:
    rows: int
    acknowledged: int
    lost: int
    charged_twice: int
    mismatched: int
    unacknowledged_rows: int
    chain_ok: bool
    chain_batches: int


async def check_journal(dsn: str, acks: list[Acknowledged]) -> JournalCheck:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT tap_id, device_id, device_tap_id, decision, fare_fen FROM taps ORDER BY tap_id")
        report = await verify_chain(conn)
    finally:
        await conn.close()
    by_key: dict[tuple[str, int], list[asyncpg.Record]] = {}
    for row in rows:
        by_key.setdefault((row["device_id"], row["device_tap_id"]), []).append(row)
    lost = mismatched = 0
    for ack in acks:
        found = by_key.get((ack.device_id, ack.tap_id), [])
        if not found:
            lost += 1
        elif (found[0]["tap_id"], found[0]["fare_fen"], found[0]["decision"] == 1) != \
                (ack.journal_id, ack.fare_fen, ack.decision == "accepted"):
            mismatched += 1
    acked = {(ack.device_id, ack.tap_id) for ack in acks}
    return JournalCheck(
        rows=len(rows), acknowledged=len(acks), lost=lost,
        charged_twice=sum(1 for found in by_key.values() if len(found) > 1 and any(r["decision"] == 1 for r in found)),
        mismatched=mismatched + sum(1 for found in by_key.values() if len(found) > 1),
        unacknowledged_rows=sum(1 for key in by_key if key not in acked),
        chain_ok=report.ok, chain_batches=report.batches_checked)


async def ready(port: int) -> int:
    async with GatewayClient("127.0.0.1", port, None, timeout_s=5.0) as client:
        return (await client.request("GET", "/readyz", sign=False)).status


async def run_scenario(tmp_path: pathlib.Path, *, validators: int, duration_s: float,
                       plan: list[tuple[float, str]], label: str) -> None:
    random.seed(8)
    server = EmbeddedPostgres(tmp_path / "pgdata")
    server.start()
    gateway: GatewayProcess | None = None
    try:
        from tapgate import runtime

        await runtime.migrate_all(server.dsn)
        fleet = await provision(server.dsn, validators)
        gateway = GatewayProcess(server.dsn, tmp_path)
        port = await gateway.start()

        clients = [RetryingValidator("127.0.0.1", port, creds, attempt_timeout_s=3.0, give_up_after_s=20.0)
                   for creds in fleet.devices]
        faults = FaultLog()
        started = time.monotonic()
        load = asyncio.create_task(drive(clients, fleet.make_tap, duration_s))
        await inject_faults(gateway, server, plan, faults)
        result: LoadResult = await load
        ended = time.monotonic()

        await gateway.wait_for_workers(timeout_s=30.0)
        readiness = await ready(port)
        check = await check_journal(server.dsn, result.acknowledged)
        # The operator's check too: the CLI verifies the chain on its own and exits 0 only if it holds.
        verified = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tapgate", "journal", "verify", "--dsn", server.dsn,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        verify_output = b"".join(await asyncio.wait_for(verified.communicate(), 120))
        gap = longest_gap(result.acknowledged, started, ended)
        print(f"\nFAULT-SUMMARY {label}: duration_s={result.duration_s:.1f} validators={validators} "
              f"worker_kills={faults.worker_kills} postgres_restarts={faults.postgres_restarts} "
              f"submitted={result.submitted} acknowledged={check.acknowledged} "
              f"unacknowledged={result.unacknowledged} lost={check.lost} charged_twice={check.charged_twice} "
              f"mismatched={check.mismatched} journal_rows={check.rows} "
              f"journaled_not_acknowledged={check.unacknowledged_rows} chain_ok={check.chain_ok} "
              f"chain_batches={check.chain_batches} longest_gap_s={gap:.2f} retries={result.retries()}")

        assert faults.worker_kills == sum({"kill": 1, "kill-all": gateway.workers}.get(what, 0) for _, what in plan)
        assert faults.postgres_restarts == sum(1 for _, what in plan if what == "restart")
        assert check.acknowledged > 0
        assert check.lost == 0
        assert check.charged_twice == 0
        assert check.mismatched == 0
        assert check.chain_ok
        assert verified.returncode == 0, verify_output.decode(errors="replace")[-2000:]
        assert result.unacknowledged == 0
        # Every tap the journal holds was answered to its validator, possibly on a retry.
        assert check.unacknowledged_rows == 0
        assert gap < SERVICE_GAP_MAX_S
        assert readiness == 200
        # Each fault was actually felt: a worker kill or a restart makes some attempt fail and be retried.
        assert sum(result.retries().values()) > 0
        # A fault is a 503 (retry later), never a 500: asyncpg's InternalClientError during PostgreSQL
        # restarts counts as a connection error in the journal, the nonce check and the routes.
        assert result.retries().get("500", 0) == 0
    finally:
        if gateway is not None:
            await gateway.stop()
        server.destroy()


@pytest.mark.timeout(120)
async def test_worker_kills_and_postgres_restart_lose_nothing(tmp_path: pathlib.Path) -> None:
    plan = [(1.5, "kill"), (4.0, "restart"), (7.0, "kill")]
    await run_scenario(tmp_path, validators=6, duration_s=10.0, plan=plan, label="short")


@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_repeated_faults_for_a_minute_lose_nothing(tmp_path: pathlib.Path) -> None:
    # A kill every 6 s, so each worker lives about 12 s and no restart is delayed as a crash loop;
    # PostgreSQL restarts between them, and once every worker is killed at the same moment.
    plan = sorted([(2.0 + 6.0 * n, "kill") for n in range(8)] + [(5.0 + 15.0 * n, "restart") for n in range(4)]
                  + [(53.0, "kill-all")])
    await run_scenario(tmp_path, validators=10, duration_s=60.0, plan=plan, label="long")
