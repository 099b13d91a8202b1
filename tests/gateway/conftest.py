"""A real gateway worker in the test's event loop, with a real issuer key, devices and rule set.

``gateway_env`` publishes the example Yiyuan rule set, registers an issuer
key, an operator with a bus validator on route 1 and a gate at the Lushan
scenic spot, and starts a :class:`gateway.server.Worker` on a free loopback
port. Tests talk to it over HTTP with :class:`gateway.client.GatewayClient`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
from typing import Any, AsyncIterator

import asyncpg
import msgspec
import pytest

from fastpath.entitlements import Entitlements
from fastpath.issuer import Card, IssuerKey, Phone, new_reader_nonce
from gateway import devices
from gateway.client import DeviceCredentials, GatewayClient, card_presented
from gateway.config import Config
from gateway.server import Worker

BUS_OPERATOR = "yiyuan-bus"
VALIDATOR = "bus-1-001"
ROUTE = "1"
SCENIC_OPERATOR = "lushan-park"
GATE = "lushan-gate-01"
SITE = "lushan"
DAY_MS = 86_400_000


def now_ms() -> int:
    return int(time.time() * 1000)


def worker_config(**server: Any) -> Config:
    """Configuration of an in-process test worker: loopback, free port, fast refresh."""
    settings = {"host": "127.0.0.1", "port": 0, "refresh_interval_s": 0.2, "request_timeout_s": 2.0,
                "shutdown_timeout_s": 5.0, "device_rate_per_s": 1000.0, "device_rate_burst": 1000}
    settings.update(server)
    return msgspec.convert({"server": settings, "journal": {"flush_interval_ms": 1.0},
                            "database": {"pool_min": 1, "pool_max": 4}}, Config)


async def publish_example_rules(conn: asyncpg.Connection, effective_from_ms: int) -> int:
    """Publish the shipped Yiyuan rule set, effective from ``effective_from_ms``; return its version."""
    from gateway.rules import example_document_text, store

    draft = await store.create_draft(conn, example_document_text(), "toml", "test")
    await store.publish(conn, draft, effective_from_ms, "test", allow_past=True)
    return draft


@dataclasses.dataclass
class GatewayEnv:
    dsn: str
    worker: Worker
    issuer: IssuerKey
    validator: DeviceCredentials
    gate: DeviceCredentials
    tap_ids: Any = dataclasses.field(default_factory=lambda: iter(range(1, 1 << 40)))

    @property
    def port(self) -> int:
        assert self.worker.port is not None
        return self.worker.port

    def client(self, creds: DeviceCredentials | None = None, **options: Any) -> GatewayClient:
        return GatewayClient("127.0.0.1", self.port, creds if creds is not None else self.validator, **options)

    def phone(self, **entitlements: Any) -> Phone:
        ent = Entitlements(birth_date=entitlements.pop("birth_date", dt.date(1990, 1, 1)), **entitlements)
        return Phone.new(self.issuer, entitlements=ent, valid_from_ms=now_ms() - DAY_MS)

    def card(self, **entitlements: Any) -> Card:
        ent = Entitlements(birth_date=entitlements.pop("birth_date", dt.date(1990, 1, 1)), **entitlements)
        return Card.new(self.issuer, entitlements=ent, valid_from_ms=now_ms() - DAY_MS)

    def qr_tap(self, phone: Phone, *, tap_time_ms: int | None = None, **fields: Any) -> dict[str, Any]:
        at = tap_time_ms if tap_time_ms is not None else now_ms()
        tap = {"tap_id": next(self.tap_ids), "tap_time_ms": at, "medium": "qr", "presented": phone.qr_text(at),
               "route_id": ROUTE, "stop_id": "s01", "tap_kind": "board"}
        tap.update(fields)
        return tap

    def card_tap(self, card: Card, device_id: str = VALIDATOR, *, tap_time_ms: int | None = None,
                 **fields: Any) -> dict[str, Any]:
        at = tap_time_ms if tap_time_ms is not None else now_ms()
        response = card.answer(device_id.encode(), new_reader_nonce(), at)
        tap = {"tap_id": next(self.tap_ids), "tap_time_ms": at, "medium": "card",
               "presented": card_presented(response), "route_id": ROUTE, "stop_id": "s01", "tap_kind": "board"}
        tap.update(fields)
        return tap

    async def journal_rows(self, device_id: str = VALIDATOR) -> list[asyncpg.Record]:
        conn = await asyncpg.connect(self.dsn)
        try:
            return await conn.fetch("SELECT * FROM taps WHERE device_id = $1 ORDER BY tap_id", device_id)
        finally:
            await conn.close()

    async def execute(self, sql: str, *args: Any) -> Any:
        conn = await asyncpg.connect(self.dsn)
        try:
            return await conn.execute(sql, *args)
        finally:
            await conn.close()


async def seed(dsn: str, rules_from_ms: int | None = None) -> tuple[IssuerKey, DeviceCredentials, DeviceCredentials]:
    """Register the issuer key, operators and devices, and publish the rule set (default: 30 days ago)."""
    issuer = IssuerKey.generate(key_id=1)
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("INSERT INTO issuer_keys (key_id, public_key) VALUES ($1, $2)", 1, issuer.public_key)
        await devices.add_operator(conn, BUS_OPERATOR, "bus", "沂源公交", "Yiyuan Bus")
        await devices.add_operator(conn, SCENIC_OPERATOR, "scenic", "鲁山森林公园", "Lushan Forest Park")
        validator_secret = await devices.add_device(conn, VALIDATOR, BUS_OPERATOR, "validator", route_id=ROUTE)
        gate_secret = await devices.add_device(conn, GATE, SCENIC_OPERATOR, "gate", site_id=SITE)
        await publish_example_rules(conn, rules_from_ms if rules_from_ms is not None else now_ms() - 30 * DAY_MS)
    finally:
        await conn.close()
    return issuer, DeviceCredentials(VALIDATOR, validator_secret), DeviceCredentials(GATE, gate_secret)


@pytest.fixture
async def gateway_env(dsn: str) -> AsyncIterator[GatewayEnv]:
    issuer, validator, gate = await seed(dsn)
    worker = Worker(worker_config(), dsn, name="test-worker")
    await worker.start()
    try:
        yield GatewayEnv(dsn, worker, issuer, validator, gate)
    finally:
        await worker.drain(5.0)
