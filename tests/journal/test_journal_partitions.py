"""Day partitions of taps: created ahead, and no tap lost to a missing one."""

from __future__ import annotations

import asyncio
import datetime as dt

import asyncpg

from gateway.journal import Journal, ensure_partitions, list_partitions, verify_chain
from gateway.timeutil import business_day
from tests.journal.conftest import BASE_MS, make_entry

DAY_MS = 86_400_000


async def test_start_creates_partitions_around_today(pool: asyncpg.Pool):
    async with Journal(pool, worker="parts"):
        pass
    async with pool.acquire() as conn:
        names = [name for name, _, _ in await list_partitions(conn)]
    today = business_day(dt.datetime.now(dt.timezone.utc))
    for offset in range(-8, 3):
        assert f"taps_{(today + dt.timedelta(days=offset)):%Y%m%d}" in names
    assert names[-1] == "taps_default"


async def test_tap_without_partition_kept_then_moved(pool: asyncpg.Pool):
    old_day_ms = BASE_MS - 40 * DAY_MS
    async with Journal(pool, worker="old") as journal:
        outcome = await journal.append(make_entry(tap_time_ms=old_day_ms, offline=True))
    assert await pool.fetchval("SELECT count(*) FROM taps_default") == 1

    async with pool.acquire() as conn:
        made = await ensure_partitions(conn, today=outcome.business_day, before=0, after=0)
        report = await verify_chain(conn)
    assert made == 1
    assert await pool.fetchval("SELECT count(*) FROM taps_default") == 0
    partition = f"taps_{outcome.business_day:%Y%m%d}"
    assert await pool.fetchval(f"SELECT count(*) FROM {partition}") == 1
    # Moving a row between partitions changes none of its contents.
    assert report.ok, report.problems


async def test_concurrent_ensure_is_safe(dsn: str):
    first, second = await asyncpg.connect(dsn), await asyncpg.connect(dsn)
    try:
        day = dt.date(2030, 1, 10)
        made = await asyncio.gather(ensure_partitions(first, today=day), ensure_partitions(second, today=day))
    finally:
        await first.close()
        await second.close()
    assert sorted(made) == [0, 11]
