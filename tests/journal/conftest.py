"""Fixtures of the journal tests: a pool on a fresh database, and entry builders."""

from __future__ import annotations

import hashlib
import itertools
import os

import asyncpg
import pytest

from gateway.journal import Journal, JournalEntry

# 2026-12-04 10:00:00 UTC (18:00 in Yiyuan).
BASE_MS = 1_796_378_400_000

_tap_ids = itertools.count(1)


def make_entry(**changes: object) -> JournalEntry:
    """Return an accepted card tap on route r1; ``changes`` overrides fields."""
    fields: dict[str, object] = dict(
        device_id="bus-0001", device_tap_id=next(_tap_ids), tap_time_ms=BASE_MS, received_at_ms=BASE_MS + 40,
        offline=False, operator_id="yiyuan-bus", route_id="r1", stop_id=None, site_id=None, tap_kind=0,
        medium=1, credential_id=os.urandom(16), holder_token=os.urandom(16), account_token=os.urandom(16),
        decision=1, reason=0, rider_category="adult", product_id="single", fare_fen=200, full_fare_fen=200,
        discount_kinds=(), rule_set_version=1, request_digest=b"", replay_key=None, rider_state=None)
    fields.update(changes)
    if not fields["request_digest"]:
        # A digest of the fields the device would have sent.
        body = f"{fields['device_id']}|{fields['device_tap_id']}|{fields['tap_time_ms']}".encode()
        fields["request_digest"] = hashlib.sha256(body).digest()
    return JournalEntry(**fields)  # type: ignore[arg-type]


@pytest.fixture
async def pool(dsn: str):
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=4)
    try:
        yield pool
    finally:
        await pool.close()


@pytest.fixture
async def journal(pool: asyncpg.Pool):
    writer = Journal(pool, worker="test-w1", flush_interval_ms=5.0, batch_max=64)
    await writer.start()
    try:
        yield writer
    finally:
        await writer.close()
