"""Tap-off adjustments in the journal (migration 0026) and the chain across the encoding change."""

from __future__ import annotations

import asyncio
import datetime as dt
import os

import asyncpg
import pytest

from gateway import db
from gateway.journal import Journal, JournalEntryError, verify_chain
from gateway.journal import encoding
from gateway.journal.writer import _record
from tapgate import runtime
from tests.journal.conftest import make_entry

TAP_OFF = dict(tap_kind=2, fare_fen=0, full_fare_fen=0, adjustment_fen=-150, full_fare_adjustment_fen=-300)


async def _verify(pool: asyncpg.Pool):
    async with pool.acquire() as conn:
        return await verify_chain(conn)


async def test_tap_off_adjustment_stored(journal: Journal, pool: asyncpg.Pool):
    outcome = await journal.append(make_entry(**TAP_OFF))
    assert outcome.status == "new"
    assert outcome.adjustment_fen == -150
    assert outcome.full_fare_adjustment_fen == -300
    row = await pool.fetchrow("SELECT adjustment_fen, full_fare_adjustment_fen FROM taps WHERE tap_id = $1",
                              outcome.journal_id)
    assert tuple(row) == (-150, -300)
    version = await pool.fetchval("SELECT encoding_version FROM journal_batches WHERE batch_id = $1",
                                  outcome.batch_id)
    assert version == encoding.ENCODING_VERSION == 2


async def test_retry_returns_original_adjustment(journal: Journal):
    entry = make_entry(**TAP_OFF)
    first = await journal.append(entry)
    again = await journal.append(make_entry(**{**TAP_OFF, "adjustment_fen": -10, "full_fare_adjustment_fen": -20},
                                            device_tap_id=entry.device_tap_id, request_digest=entry.request_digest))
    assert again.status == "retry"
    assert again.journal_id == first.journal_id
    assert (again.adjustment_fen, again.full_fare_adjustment_fen) == (-150, -300)


async def test_replayed_tap_off_has_no_adjustment(journal: Journal, pool: asyncpg.Pool):
    code = os.urandom(32)
    first = await journal.append(make_entry(**TAP_OFF, medium=2, replay_key=code))
    second = await journal.append(make_entry(**TAP_OFF, medium=2, replay_key=code))
    assert first.adjustment_fen == -150
    assert second.reason == 43
    assert (second.adjustment_fen, second.full_fare_adjustment_fen) == (0, 0)
    stored = await pool.fetchrow("SELECT adjustment_fen, full_fare_adjustment_fen FROM taps WHERE tap_id = $1",
                                 second.journal_id)
    assert tuple(stored) == (0, 0)


@pytest.mark.parametrize("changes, message", [
    (dict(tap_kind=2, adjustment_fen=1), r"adjustment_fen=1 \(expected -2147483648 to 0\)"),
    (dict(tap_kind=1, adjustment_fen=-100), r"not an accepted tap-off"),
    (dict(tap_kind=2, decision=0, reason=60, full_fare_adjustment_fen=-100), r"not an accepted tap-off"),
    (dict(tap_kind=2, full_fare_adjustment_fen=2 ** 31), r"full_fare_adjustment_fen=2147483648"),
])
async def test_invalid_adjustment_rejected(journal: Journal, changes: dict, message: str):
    with pytest.raises(JournalEntryError, match=message):
        journal.append(make_entry(**changes))


async def test_database_rejects_positive_adjustment(pool: asyncpg.Pool):
    # The check holds for writers other than the journal too.
    async with Journal(pool, worker="w") as journal:
        outcome = await journal.append(make_entry(**TAP_OFF))
    with pytest.raises(asyncpg.CheckViolationError):
        await pool.execute("UPDATE taps SET adjustment_fen = 5 WHERE tap_id = $1", outcome.journal_id)
    with pytest.raises(asyncpg.CheckViolationError):
        await pool.execute("UPDATE taps SET tap_kind = 1 WHERE tap_id = $1", outcome.journal_id)


async def test_adjustment_tampering_detected(pool: asyncpg.Pool):
    async with Journal(pool, worker="w") as journal:
        outcome = await journal.append(make_entry(**TAP_OFF))
    assert (await _verify(pool)).ok
    await pool.execute("UPDATE taps SET adjustment_fen = -199 WHERE tap_id = $1", outcome.journal_id)
    report = await _verify(pool)
    assert [(p.kind, p.tap_id) for p in report.problems] == [("row_altered", outcome.journal_id)]


async def test_encoding_version_change_detected(pool: asyncpg.Pool):
    async with Journal(pool, worker="w") as journal:
        outcome = await journal.append(make_entry(**TAP_OFF))
    await pool.execute("UPDATE journal_batches SET encoding_version = 1 WHERE batch_id = $1", outcome.batch_id)
    report = await _verify(pool)
    assert ("batch_altered", outcome.batch_id) in [(p.kind, p.batch_id) for p in report.problems]


async def _commit_with_0020(conn: asyncpg.Connection, entries: list) -> list[asyncpg.Record]:
    # What the writer sent before migration 0026: the 26 fields of the 0020 entry type.
    day = dt.date(2026, 12, 4)
    records = [_record(entry, day)[:26] for entry in entries]
    return await conn.fetch("SELECT * FROM tapgate_journal_commit($1, $2::tapgate_journal_entry[])", "old", records)


async def test_chain_verifies_across_migration(empty_dsn: str):
    conn = await asyncpg.connect(empty_dsn)
    try:
        before = [m for m in db.gateway_migrations() if m.version < 26]
        await db.migrate(conn, before)
        await conn.execute("SELECT tapgate_ensure_tap_partitions('2026-12-03', '2026-12-05')")
        old_rows = await _commit_with_0020(conn, [make_entry(), make_entry(fare_fen=300)])
        assert [row["status"] for row in old_rows] == [0, 0]
    finally:
        await conn.close()

    await runtime.migrate_all(empty_dsn)
    pool = await asyncpg.create_pool(empty_dsn, min_size=1, max_size=2)
    try:
        async with Journal(pool, worker="new") as journal:
            new = await asyncio.gather(journal.append(make_entry(**TAP_OFF)), journal.append(make_entry()))
        versions = await pool.fetch("SELECT batch_id, encoding_version FROM journal_batches ORDER BY batch_id")
        assert [row["encoding_version"] for row in versions] == [1, 2]
        assert new[0].batch_id == versions[1]["batch_id"]

        report = await _verify(pool)
        assert report.ok, report.problems
        assert report.batches_checked == 2
        assert report.rows_checked == 4

        # An old row's adjustment is not in its v1 hash, but it must keep the default 0.
        old_tap = old_rows[0]["tap_id"]
        await pool.execute("UPDATE taps SET tap_kind = 2, adjustment_fen = -100 WHERE tap_id = $1", old_tap)
        report = await _verify(pool)
        assert [(p.kind, p.tap_id) for p in report.problems] == [("row_altered", old_tap)]
    finally:
        await pool.close()
