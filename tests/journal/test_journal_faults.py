"""PostgreSQL faults during a group commit: clean failures, nothing half acknowledged, recovery."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest

from gateway.journal import Journal, JournalEntryError, JournalIntegrityError, JournalUnavailable, verify_chain
from tapgate import runtime
from tests.journal.conftest import make_entry


async def _hold_chain_head(dsn: str) -> asyncpg.Connection:
    """Open a transaction that locks the chain head, so every batch commit waits."""
    blocker = await asyncpg.connect(dsn)
    await blocker.execute("BEGIN")
    await blocker.execute("SELECT * FROM journal_chain_head FOR UPDATE")
    return blocker


async def _waiting_backends(conn: asyncpg.Connection) -> list[int]:
    for _ in range(200):
        pids = await conn.fetch("SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                                "AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()")
        if pids:
            return [row["pid"] for row in pids]
        await asyncio.sleep(0.01)
    raise AssertionError("no journal commit is waiting for the chain head lock")


async def test_lost_connection_fails_batch_then_recovers(dsn: str, pool: asyncpg.Pool):
    async with Journal(pool, worker="faulty") as journal:
        blocker = await _hold_chain_head(dsn)
        lost = [make_entry() for _ in range(3)]
        futures = [journal.append(entry) for entry in lost]
        for pid in await _waiting_backends(blocker):
            await blocker.execute("SELECT pg_terminate_backend($1)", pid)
        results = await asyncio.gather(*futures, return_exceptions=True)
        await blocker.execute("ROLLBACK")
        await blocker.close()

        assert all(isinstance(result, JournalUnavailable) for result in results)
        assert "流水提交失败" in str(results[0])
        after = await journal.append(make_entry())
        assert after.status == "new"

    assert await pool.fetchval("SELECT count(*) FROM taps") == 1
    assert await pool.fetchval("SELECT count(*) FROM tap_keys") == 1
    # The device retries the lost taps with the same ids: journaled now, once.
    async with Journal(pool, worker="retry") as journal:
        retried = await asyncio.gather(*(journal.append(entry) for entry in lost))
    assert [outcome.status for outcome in retried] == ["new"] * 3
    async with pool.acquire() as conn:
        assert (await verify_chain(conn)).ok


async def test_commit_timeout_fails_and_rolls_back(dsn: str, pool: asyncpg.Pool):
    async with Journal(pool, worker="slow", commit_timeout_s=0.3) as journal:
        blocker = await _hold_chain_head(dsn)
        entry = make_entry()
        with pytest.raises(JournalUnavailable, match="not recorded"):
            await journal.append(entry)
        await blocker.execute("ROLLBACK")
        await blocker.close()
        outcome = await journal.append(entry)
    assert outcome.status == "new"
    assert await pool.fetchval("SELECT count(*) FROM taps") == 1


async def test_rejected_value_fails_only_its_entry(journal: Journal, pool: asyncpg.Pool):
    # A lone surrogate cannot be encoded as UTF-8, so PostgreSQL never sees the batch as sent.
    bad = make_entry(route_id="r\ud800")
    good = [make_entry() for _ in range(4)]
    results = await asyncio.gather(journal.append(bad), *(journal.append(entry) for entry in good),
                                   return_exceptions=True)
    assert isinstance(results[0], JournalEntryError)
    assert all(result.status == "new" for result in results[1:])
    assert await pool.fetchval("SELECT count(*) FROM taps") == 4


async def test_outage_during_split_fails_rest_at_once(dsn: str, pool: asyncpg.Pool):
    # A rejected value splits the batch into single commits. If PostgreSQL then fails too, the
    # remaining entries fail at once instead of each waiting for a commit timeout and a back-off.
    async with Journal(pool, worker="split", commit_timeout_s=0.3, flush_interval_ms=50.0) as journal:
        blocker = await _hold_chain_head(dsn)
        try:
            bad = make_entry(route_id="r\ud800")
            good = [make_entry() for _ in range(20)]
            results = await asyncio.wait_for(
                asyncio.gather(journal.append(bad), *(journal.append(entry) for entry in good),
                               return_exceptions=True), 5)
        finally:
            await blocker.execute("ROLLBACK")
            await blocker.close()
    assert isinstance(results[0], JournalEntryError)
    assert all(isinstance(result, JournalUnavailable) for result in results[1:])
    assert await pool.fetchval("SELECT count(*) FROM taps") == 0


async def test_invalid_entry_raises_at_once(journal: Journal):
    with pytest.raises(JournalEntryError, match="medium=7"):
        journal.append(make_entry(medium=7))
    with pytest.raises(JournalEntryError, match="NUL"):
        journal.append(make_entry(stop_id="s\x00"))
    with pytest.raises(JournalEntryError, match="request_digest of 3 bytes"):
        journal.append(make_entry(request_digest=b"abc"))


async def test_append_after_close_raises(pool: asyncpg.Pool):
    journal = Journal(pool, worker="closed")
    await journal.start()
    await journal.close()
    with pytest.raises(JournalUnavailable, match="not running"):
        journal.append(make_entry())


async def test_close_flushes_pending(pool: asyncpg.Pool):
    journal = Journal(pool, worker="flush", flush_interval_ms=1000.0)
    await journal.start()
    futures = [journal.append(make_entry()) for _ in range(10)]
    await journal.close()
    assert all(future.done() and future.result().status == "new" for future in futures)
    assert await pool.fetchval("SELECT count(*) FROM taps") == 10


@pytest.mark.slow
async def test_server_restart_loses_no_acknowledged_tap(embedded_server):
    name = f"j_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(embedded_server.dsn)
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    dsn = embedded_server.dsn.rsplit("/", 1)[0] + "/" + name
    await runtime.migrate_all(dsn)

    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=4)
    acknowledged: dict[tuple[str, int], int] = {}
    failed = []
    try:
        async with Journal(pool, worker="restart", flush_interval_ms=2.0, commit_timeout_s=5.0) as journal:
            restart = asyncio.ensure_future(asyncio.to_thread(embedded_server.restart, "fast"))
            while not restart.done() or len(acknowledged) < 50:
                entry = make_entry()
                try:
                    outcome = await journal.append(entry)
                except JournalUnavailable:
                    failed.append(entry)
                    await asyncio.sleep(0.01)
                    continue
                acknowledged[(entry.device_id, entry.device_tap_id)] = outcome.journal_id
            await restart
            # The devices retry what failed: each is journaled exactly once.
            retried = await asyncio.gather(*(journal.append(entry) for entry in failed))
        rows = await pool.fetch("SELECT device_id, device_tap_id, tap_id FROM taps")
        async with pool.acquire() as conn:
            report = await verify_chain(conn)
    finally:
        await pool.close()

    stored = {(row["device_id"], row["device_tap_id"]): row["tap_id"] for row in rows}
    assert failed, "the restart should have failed at least one append"
    assert all(stored[key] == tap_id for key, tap_id in acknowledged.items())
    assert all(outcome.status in ("new", "retry") for outcome in retried)
    assert len(stored) == len(acknowledged) + len(failed)
    assert report.ok, report.problems


async def test_retry_of_deleted_row_raises_integrity_error(journal: Journal, pool: asyncpg.Pool):
    entry = make_entry()
    first = await journal.append(entry)
    await pool.execute("DELETE FROM taps WHERE tap_id = $1", first.journal_id)
    with pytest.raises(JournalIntegrityError, match="no row in taps"):
        await journal.append(entry)
    # The writer goes on with other entries.
    assert (await journal.append(make_entry())).status == "new"


async def test_cancelled_flusher_fails_batch_in_flight(dsn: str, pool: asyncpg.Pool):
    journal = Journal(pool, worker="cancelled", commit_timeout_s=30.0)
    await journal.start()
    blocker = await _hold_chain_head(dsn)
    try:
        future = journal.append(make_entry())
        await _waiting_backends(blocker)
        assert journal._task is not None
        journal._task.cancel()
        with pytest.raises(JournalUnavailable, match="cancelled"):
            await asyncio.wait_for(future, 5)
    finally:
        await blocker.execute("ROLLBACK")
        await blocker.close()
