"""Daily partitions of the taps table, created ahead of time.

A tap whose business day has no partition still lands in ``taps_default``
(migration 0001), and ``tapgate_ensure_tap_partitions`` moves such rows into
the day's partition when it is created, so no tap is ever refused. Keeping
partitions ahead keeps the default partition empty and cheap to check.
"""

from __future__ import annotations

import datetime as dt

import asyncpg

from gateway.timeutil import business_day

# Days before and after today's business day that must have a partition. Eight
# days back covers offline uploads, which may arrive up to seven days late.
DAYS_BEFORE = 8
DAYS_AFTER = 2
# Seconds between two partition checks of a running journal writer.
PARTITION_REFRESH_S = 3600.0

# Arbitrary constant naming the advisory lock that serialises partition creation across workers.
_PARTITION_LOCK = 0x7A9_7061


async def ensure_partitions(conn: asyncpg.Connection, cutoff: dt.time = dt.time(0, 0), *,
                            today: dt.date | None = None, before: int = DAYS_BEFORE,
                            after: int = DAYS_AFTER) -> int:
    """Create the missing partitions from ``today - before`` to ``today + after``; return how many were made."""
    if today is None:
        today = business_day(dt.datetime.now(dt.timezone.utc), cutoff)
    first = today - dt.timedelta(days=before)
    last = today + dt.timedelta(days=after)
    async with conn.transaction():
        # Two workers starting together would otherwise both try to create the same table.
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _PARTITION_LOCK)
        return await conn.fetchval("SELECT tapgate_ensure_tap_partitions($1, $2)", first, last)


async def list_partitions(conn: asyncpg.Connection) -> list[tuple[str, str, int]]:
    """Return (partition name, bounds, estimated rows) of every partition of taps, oldest first."""
    rows = await conn.fetch("""
        SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) AS bounds, c.reltuples::bigint AS rows
        FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'taps'::regclass
        ORDER BY c.relname = 'taps_default', c.relname""")
    return [(row["relname"], row["bounds"], max(row["rows"], 0)) for row in rows]


async def default_partition_days(conn: asyncpg.Connection) -> list[tuple[dt.date, int]]:
    """Return the business days with rows in taps_default and their row counts."""
    rows = await conn.fetch(
        "SELECT business_day, count(*) AS n FROM taps_default GROUP BY business_day ORDER BY business_day")
    return [(row["business_day"], row["n"]) for row in rows]
