"""The hash chain: verify passes on an intact journal and names every kind of tampering."""

from __future__ import annotations

import asyncio
import datetime as dt
import os

import asyncpg
import pytest

from gateway.journal import Journal, verify_chain
from gateway.journal import encoding
from tests.journal.conftest import make_entry


async def _fill(pool: asyncpg.Pool, batches: int = 4, per_batch: int = 5) -> list[int]:
    """Commit ``batches`` batches of ``per_batch`` varied taps; return the batch ids in order."""
    ids = []
    async with Journal(pool, worker="chain", flush_interval_ms=50.0, batch_max=per_batch) as journal:
        for b in range(batches):
            entries = [make_entry(discount_kinds=("category", "cap")[: i % 3], stop_id=None if i % 2 else "站点-1",
                                  credential_id=None if i == 3 else os.urandom(16), offline=bool(i % 2),
                                  rule_set_version=None if i == 4 else 7, medium=2, replay_key=os.urandom(32))
                       for i in range(per_batch)]
            outcomes = await asyncio.gather(*(journal.append(entry) for entry in entries))
            assert len({outcome.batch_id for outcome in outcomes}) == 1
            ids.append(outcomes[0].batch_id)
    return ids


async def _verify(pool: asyncpg.Pool, **options: int):
    async with pool.acquire() as conn:
        return await verify_chain(conn, **options)


async def test_intact_chain_verifies(pool: asyncpg.Pool):
    batch_ids = await _fill(pool)
    report = await _verify(pool)
    assert report.ok, report.problems
    assert report.batches_checked == 4
    assert report.rows_checked == 20
    assert report.head_batch_id == batch_ids[-1]


async def test_small_chunks_verify_the_same(pool: asyncpg.Pool):
    await _fill(pool, batches=5, per_batch=3)
    report = await _verify(pool, chunk_batches=2)
    assert report.ok, report.problems
    assert report.rows_checked == 15


async def test_empty_journal_verifies(pool: asyncpg.Pool):
    report = await _verify(pool)
    assert report.ok
    assert report.batches_checked == 0


_SQL_ENCODINGS = f"""SELECT {', '.join(encoding.TAP_COLUMNS)}, tapgate_tap_encoding(t) AS sql_v1,
                            tapgate_tap_encoding_v2(t) AS sql_v2 FROM taps t"""


async def test_python_encoding_matches_database(pool: asyncpg.Pool):
    await _fill(pool, batches=1)
    await pool.execute("UPDATE taps SET tap_kind = 2, adjustment_fen = -150, full_fare_adjustment_fen = -300 "
                       "WHERE tap_id = (SELECT min(tap_id) FROM taps)")
    rows = await pool.fetch(_SQL_ENCODINGS)
    for row in rows:
        assert encoding.encode_row(row, 1) == bytes(row["sql_v1"])
        assert encoding.encode_row(row, 2) == bytes(row["sql_v2"])
        assert encoding.encode_row(row) == bytes(row["sql_v2"])


async def test_unknown_encoding_version_rejected():
    with pytest.raises(ValueError, match="row encoding version 3 is unknown"):
        encoding.encode_row({}, 3)


@pytest.mark.parametrize("kinds", [
    [], ["cap"], ["category", "transfer", "cap"], ["a,b"], [""], [None], ["x", None], ["车站"],
    [["a", "b"], ["c", "d"]],
])
async def test_array_encoding_matches_database(pool: asyncpg.Pool, kinds: list):
    assert encoding.text_array_bytes(kinds) == bytes(await pool.fetchval("SELECT array_send($1::text[])", kinds))


async def test_encoding_of_unusual_values_matches_database(pool: asyncpg.Pool):
    await _fill(pool, batches=1)
    await pool.execute("""UPDATE taps SET discount_kinds = '{"a,b",NULL,""}', route_id = '线路 "1"',
                          tap_time = '1999-12-31 23:59:59.999999+00', stop_id = NULL, fare_fen = 2147483647,
                          tap_kind = 2, adjustment_fen = -2147483648, full_fare_adjustment_fen = 2147483647""")
    rows = await pool.fetch(_SQL_ENCODINGS)
    for row in rows:
        assert encoding.encode_row(row, 1) == bytes(row["sql_v1"])
        assert encoding.encode_row(row, 2) == bytes(row["sql_v2"])


async def test_updated_row_detected(pool: asyncpg.Pool):
    batch_ids = await _fill(pool)
    tap_id = await pool.fetchval("SELECT min(tap_id) FROM taps WHERE batch_id = $1", batch_ids[1])
    await pool.execute("UPDATE taps SET fare_fen = fare_fen + 1 WHERE tap_id = $1", tap_id)
    report = await _verify(pool)
    assert [(p.kind, p.batch_id, p.tap_id) for p in report.problems] == [("row_altered", batch_ids[1], tap_id)]


async def test_time_shift_of_one_microsecond_detected(pool: asyncpg.Pool):
    await _fill(pool, batches=1)
    await pool.execute("UPDATE taps SET tap_time = tap_time + interval '1 microsecond' "
                       "WHERE tap_id = (SELECT max(tap_id) FROM taps)")
    report = await _verify(pool)
    assert report.kinds() == {"row_altered"}


async def test_deleted_row_detected(pool: asyncpg.Pool):
    batch_ids = await _fill(pool)
    tap_id = await pool.fetchval("SELECT max(tap_id) FROM taps WHERE batch_id = $1", batch_ids[2])
    await pool.execute("DELETE FROM taps WHERE tap_id = $1", tap_id)
    report = await _verify(pool)
    assert [(p.kind, p.batch_id, p.tap_id) for p in report.problems] == [("row_removed", batch_ids[2], tap_id)]


async def test_inserted_row_detected(pool: asyncpg.Pool):
    batch_ids = await _fill(pool)
    await pool.execute("""
        INSERT INTO taps SELECT nextval('tap_id_seq'), business_day, batch_id, device_id, device_tap_id + 1000,
               tap_time, received_at, offline, operator_id, route_id, stop_id, site_id, tap_kind, medium,
               credential_id, holder_token, account_token, decision, reason, rider_category, product_id,
               fare_fen, full_fare_fen, discount_kinds, rule_set_version, request_digest
        FROM taps WHERE batch_id = $1 LIMIT 1""", batch_ids[0])
    report = await _verify(pool)
    assert [(p.kind, p.batch_id) for p in report.problems] == [("row_inserted", batch_ids[0])]


async def test_row_moved_to_other_batch_detected(pool: asyncpg.Pool):
    batch_ids = await _fill(pool)
    tap_id = await pool.fetchval("SELECT min(tap_id) FROM taps WHERE batch_id = $1", batch_ids[0])
    await pool.execute("UPDATE taps SET batch_id = $1 WHERE tap_id = $2", batch_ids[1], tap_id)
    report = await _verify(pool)
    assert sorted((p.kind, p.batch_id) for p in report.problems) == [
        ("row_inserted", batch_ids[1]), ("row_removed", batch_ids[0])]


async def test_orphan_row_detected(pool: asyncpg.Pool):
    await _fill(pool, batches=1)
    await pool.execute("UPDATE taps SET batch_id = 999999 WHERE tap_id = (SELECT max(tap_id) FROM taps)")
    report = await _verify(pool)
    assert ("row_inserted", 999999) in [(p.kind, p.batch_id) for p in report.problems]
    assert "row_removed" in report.kinds()


async def test_batch_edit_detected(pool: asyncpg.Pool):
    batch_ids = await _fill(pool)
    await pool.execute("UPDATE journal_batches SET worker = 'someone-else' WHERE batch_id = $1", batch_ids[1])
    report = await _verify(pool)
    assert [(p.kind, p.batch_id) for p in report.problems] == [("batch_altered", batch_ids[1])]


async def test_batch_row_list_edit_detected(pool: asyncpg.Pool):
    # Hiding a deleted row by also removing it from its batch's row list breaks the digest.
    batch_ids = await _fill(pool)
    tap_id = await pool.fetchval("SELECT max(tap_id) FROM taps WHERE batch_id = $1", batch_ids[1])
    await pool.execute("DELETE FROM taps WHERE tap_id = $1", tap_id)
    await pool.execute("""UPDATE journal_batches SET tap_ids = tap_ids[1:4], row_hashes = substr(row_hashes, 1, 128),
                          tap_count = 4 WHERE batch_id = $1""", batch_ids[1])
    report = await _verify(pool)
    assert [(p.kind, p.batch_id) for p in report.problems] == [("batch_altered", batch_ids[1])]


async def test_recomputed_batch_breaks_next_link(pool: asyncpg.Pool):
    # An editor who recomputes the digest and chain hash of the batch they changed
    # is caught by the next batch, whose prev_hash still contains the old chain hash.
    batch_ids = await _fill(pool)
    target = await pool.fetchrow("SELECT * FROM journal_batches WHERE batch_id = $1", batch_ids[1])
    worker = "someone-else"
    hashes = bytes(target["row_hashes"])
    pairs = [(tap_id, hashes[32 * i:32 * i + 32]) for i, tap_id in enumerate(target["tap_ids"])]
    digest = encoding.batch_digest(target["batch_id"], target["committed_at"], worker, pairs)
    chained = encoding.chain_hash(bytes(target["prev_hash"]), digest)
    await pool.execute("UPDATE journal_batches SET worker = $1, digest = $2, chain_hash = $3 WHERE batch_id = $4",
                       worker, digest, chained, batch_ids[1])
    report = await _verify(pool)
    assert [(p.kind, p.batch_id) for p in report.problems] == [("batch_removed", batch_ids[2])]


async def test_deleted_batch_detected(pool: asyncpg.Pool):
    batch_ids = await _fill(pool)
    await pool.execute("DELETE FROM taps WHERE batch_id = $1", batch_ids[1])
    await pool.execute("DELETE FROM journal_batches WHERE batch_id = $1", batch_ids[1])
    report = await _verify(pool)
    assert [(p.kind, p.batch_id) for p in report.problems] == [("batch_removed", batch_ids[2])]


async def test_deleted_last_batch_detected(pool: asyncpg.Pool):
    batch_ids = await _fill(pool)
    await pool.execute("DELETE FROM taps WHERE batch_id = $1", batch_ids[-1])
    await pool.execute("DELETE FROM journal_batches WHERE batch_id = $1", batch_ids[-1])
    report = await _verify(pool)
    assert [(p.kind, p.batch_id) for p in report.problems] == [("batch_removed", batch_ids[-1])]


async def test_inserted_batch_detected(pool: asyncpg.Pool):
    # A forged batch that links correctly to its predecessor: the following batch skips it.
    batch_ids = await _fill(pool, batches=2)
    await pool.execute("SELECT setval('journal_batch_seq', nextval('journal_batch_seq') + 10)")
    batch_ids += await _fill(pool, batches=2)
    before = await pool.fetchrow("SELECT * FROM journal_batches WHERE batch_id = $1", batch_ids[1])
    forged_id = batch_ids[1] + 5
    committed_at = dt.datetime.now(dt.timezone.utc)
    digest = encoding.batch_digest(forged_id, committed_at, "forger", [])
    await pool.execute("""INSERT INTO journal_batches (batch_id, committed_at, worker, tap_count, digest, prev_hash,
                          chain_hash, tap_ids, row_hashes) VALUES ($1, $2, 'forger', 0 + 1, $3, $4, $5, '{}', '\\x')""",
                       forged_id, committed_at, digest, before["chain_hash"],
                       encoding.chain_hash(bytes(before["chain_hash"]), digest))
    report = await _verify(pool)
    problems = [(p.kind, p.batch_id) for p in report.problems]
    # tap_count 1 with an empty row list also makes the forged batch inconsistent in itself.
    assert ("batch_inserted", forged_id) in problems
    assert all(batch_id == forged_id for _, batch_id in problems)


async def test_head_edit_detected(pool: asyncpg.Pool):
    await _fill(pool, batches=2)
    await pool.execute("UPDATE journal_chain_head SET chain_hash = $1", bytes(32))
    report = await _verify(pool)
    assert report.kinds() == {"head_mismatch"}


@pytest.mark.parametrize("column", ["credential_id", "holder_token", "request_digest"])
async def test_flipped_byte_detected(pool: asyncpg.Pool, column: str):
    await _fill(pool, batches=1)
    tap_id = await pool.fetchval(f"SELECT min(tap_id) FROM taps WHERE {column} IS NOT NULL")
    await pool.execute(f"UPDATE taps SET {column} = set_byte({column}, 0, get_byte({column}, 0) # 1) "
                       "WHERE tap_id = $1", tap_id)
    report = await _verify(pool)
    assert [(p.kind, p.tap_id) for p in report.problems] == [("row_altered", tap_id)]
