"""Journal.append: group commit, exactly once, QR replay and rider states."""

from __future__ import annotations

import asyncio
import os
import random

import asyncpg

from gateway.journal import Journal
from gateway.journal.verify import verify_chain
from gateway.reasons import Reason
from tests.journal.conftest import make_entry


async def test_append_returns_new_outcome(journal: Journal, pool: asyncpg.Pool):
    entry = make_entry(fare_fen=100, full_fare_fen=200, discount_kinds=("category",))
    outcome = await journal.append(entry)
    assert outcome.status == "new"
    assert outcome.decision == 1
    assert outcome.fare_fen == 100
    assert outcome.discount_kinds == ("category",)
    row = await pool.fetchrow("SELECT * FROM taps WHERE tap_id = $1", outcome.journal_id)
    assert row["device_tap_id"] == entry.device_tap_id
    assert row["batch_id"] == outcome.batch_id
    assert row["business_day"] == outcome.business_day
    assert list(row["discount_kinds"]) == ["category"]


async def test_concurrent_appends_share_few_batches(pool: asyncpg.Pool):
    async with Journal(pool, worker="group", flush_interval_ms=20.0, batch_max=512) as journal:
        outcomes = await asyncio.gather(*(journal.append(make_entry()) for _ in range(1000)))
    assert all(outcome.status == "new" for outcome in outcomes)
    batches = await pool.fetchval("SELECT count(*) FROM journal_batches")
    taps = await pool.fetchval("SELECT count(*) FROM taps")
    assert taps == 1000
    # 1000 entries at batch_max 512 need at least 2 commits; one commit per tap would be 1000.
    assert 2 <= batches <= 4
    assert journal.batches_committed == batches


async def test_batch_max_flushes_before_interval(pool: asyncpg.Pool):
    # A flush interval of 10 s would time the test out unless a full batch flushes at once.
    async with Journal(pool, worker="full", flush_interval_ms=10_000.0, batch_max=8) as journal:
        outcomes = await asyncio.wait_for(asyncio.gather(*(journal.append(make_entry()) for _ in range(8))), 5)
    assert len({outcome.batch_id for outcome in outcomes}) == 1


async def test_retry_returns_original_outcome(journal: Journal, pool: asyncpg.Pool):
    entry = make_entry(fare_fen=150)
    first = await journal.append(entry)
    # The pipeline may price a retry differently; the journal returns what it stored first.
    again = await journal.append(make_entry(device_tap_id=entry.device_tap_id, request_digest=entry.request_digest,
                                            fare_fen=999, decision=0, reason=60))
    assert first.status == "new"
    assert again.status == "retry"
    assert again.journal_id == first.journal_id
    assert again.fare_fen == 150
    assert again.decision == 1
    assert await pool.fetchval("SELECT count(*) FROM taps") == 1


async def test_same_tap_id_other_digest_conflicts(journal: Journal, pool: asyncpg.Pool):
    entry = make_entry()
    first = await journal.append(entry)
    clash = await journal.append(make_entry(device_tap_id=entry.device_tap_id, request_digest=os.urandom(32)))
    assert clash.status == "conflict"
    assert clash.journal_id == first.journal_id
    assert await pool.fetchval("SELECT count(*) FROM taps") == 1


async def test_same_tap_id_on_other_device_is_new(journal: Journal):
    entry = make_entry()
    await journal.append(entry)
    other = await journal.append(make_entry(device_id="bus-0002", device_tap_id=entry.device_tap_id))
    assert other.status == "new"


async def test_duplicates_within_one_batch(journal: Journal, pool: asyncpg.Pool):
    entry = make_entry()
    clash = make_entry(device_tap_id=entry.device_tap_id, request_digest=os.urandom(32))
    first, retry, conflict = await asyncio.gather(journal.append(entry), journal.append(entry), journal.append(clash))
    assert first.batch_id == retry.batch_id == conflict.batch_id
    assert (first.status, retry.status, conflict.status) == ("new", "retry", "conflict")
    assert retry.journal_id == first.journal_id
    assert await pool.fetchval("SELECT count(*) FROM taps") == 1


async def test_tap_id_unique_across_business_days(journal: Journal, pool: asyncpg.Pool):
    entry = make_entry()
    await journal.append(entry)
    # Same device tap id, a tap time three days later: another partition, still a conflict.
    later = make_entry(device_tap_id=entry.device_tap_id, tap_time_ms=entry.tap_time_ms + 3 * 86_400_000)
    outcome = await journal.append(later)
    assert outcome.status == "conflict"
    assert await pool.fetchval("SELECT count(*) FROM taps") == 1


async def test_qr_replay_rejected_across_workers(pool: asyncpg.Pool):
    key = os.urandom(32)
    holder = os.urandom(16)
    async with Journal(pool, worker="w1") as first_worker, Journal(pool, worker="w2") as second_worker:
        used = await first_worker.append(make_entry(medium=2, replay_key=key, holder_token=holder,
                                                    rider_state=b"state-1"))
        replayed = await second_worker.append(make_entry(medium=2, replay_key=key, holder_token=holder,
                                                         rider_state=b"state-2", fare_fen=200))
        states = await second_worker.load_rider_states([holder])
    assert used.status == "new"
    assert used.decision == 1
    assert replayed.status == "new"
    assert replayed.decision == 0
    assert replayed.reason == Reason.REPLAYED
    assert replayed.fare_fen == 0
    assert states == {holder: b"state-1"}
    row = await pool.fetchrow("SELECT decision, reason, fare_fen FROM taps WHERE tap_id = $1", replayed.journal_id)
    assert tuple(row) == (0, 43, 0)


async def test_qr_replay_within_one_batch(journal: Journal):
    key = os.urandom(32)
    first, second = await asyncio.gather(journal.append(make_entry(medium=2, replay_key=key)),
                                         journal.append(make_entry(medium=2, replay_key=key)))
    assert first.batch_id == second.batch_id
    assert first.reason == Reason.ACCEPTED
    assert second.reason == Reason.REPLAYED


async def test_retry_of_qr_tap_is_not_replay(journal: Journal):
    entry = make_entry(medium=2, replay_key=os.urandom(32))
    first = await journal.append(entry)
    again = await journal.append(entry)
    assert again.status == "retry"
    assert again.reason == Reason.ACCEPTED
    assert again.journal_id == first.journal_id


async def test_rider_state_stored_only_when_accepted(journal: Journal):
    accepted_holder, rejected_holder = os.urandom(16), os.urandom(16)
    await journal.append(make_entry(holder_token=accepted_holder, rider_state=b"after-ride"))
    await journal.append(make_entry(holder_token=rejected_holder, rider_state=b"never", decision=0, reason=60,
                                    fare_fen=0))
    states = await journal.load_rider_states([accepted_holder, rejected_holder, os.urandom(16)])
    assert states == {accepted_holder: b"after-ride"}


async def test_rider_state_last_in_batch_wins(journal: Journal):
    holder = os.urandom(16)
    await asyncio.gather(*(journal.append(make_entry(holder_token=holder, rider_state=f"s{i}".encode()))
                           for i in range(5)))
    assert await journal.load_rider_states([holder]) == {holder: b"s4"}
    await journal.append(make_entry(holder_token=holder, rider_state=b"s5"))
    assert await journal.load_rider_states([holder]) == {holder: b"s5"}


async def test_load_rider_states_empty(journal: Journal):
    assert await journal.load_rider_states([]) == {}


async def test_business_day_follows_cutoff(pool: asyncpg.Pool):
    import datetime as dt

    # 2026-12-04 17:30 UTC is 01:30 on 12-05 in Yiyuan: before a 02:00 cut-off, so still 12-04.
    tap_ms = 1_796_405_400_000
    async with Journal(pool, worker="cut", day_cutoff=dt.time(2, 0)) as journal:
        late = await journal.append(make_entry(tap_time_ms=tap_ms))
    async with Journal(pool, worker="mid") as journal:
        midnight = await journal.append(make_entry(tap_time_ms=tap_ms))
    assert late.business_day == dt.date(2026, 12, 4)
    assert midnight.business_day == dt.date(2026, 12, 5)


class _CountingJournal(Journal):
    """A journal that counts its rider-state queries."""

    queries = 0

    async def load_rider_states(self, holder_tokens):
        self.queries += 1
        return await super().load_rider_states(holder_tokens)


async def test_concurrent_state_loads_share_queries(pool: asyncpg.Pool):
    holders = [os.urandom(16) for _ in range(50)]
    unknown = os.urandom(16)
    async with _CountingJournal(pool, worker="states") as journal:
        await asyncio.gather(*(journal.append(make_entry(holder_token=h, rider_state=h[::-1])) for h in holders))
        states = await asyncio.gather(*(journal.load_rider_state(h) for h in holders + [unknown, holders[0]]))
    assert states[:50] == [h[::-1] for h in holders]
    assert states[50] is None
    assert states[51] == holders[0][::-1]
    assert journal.queries == 1


async def test_business_day_changes_at_cutoff(pool: asyncpg.Pool):
    import datetime as dt

    # 2026-12-04 18:00 UTC is 02:00 on 12-05 in Yiyuan: the cut-off itself starts the new day.
    cutoff_ms = 1_796_407_200_000
    async with Journal(pool, worker="edge", day_cutoff=dt.time(2, 0)) as journal:
        days = [(await journal.append(make_entry(tap_time_ms=ms))).business_day
                for ms in (cutoff_ms - 1, cutoff_ms, cutoff_ms - 1, cutoff_ms + 86_400_000)]
    assert days == [dt.date(2026, 12, 4), dt.date(2026, 12, 5), dt.date(2026, 12, 4), dt.date(2026, 12, 6)]


async def _sequential_scans(conn: asyncpg.Connection) -> dict[str, int]:
    await conn.execute("SELECT pg_stat_clear_snapshot()")
    rows = await conn.fetch("SELECT relname, seq_scan FROM pg_stat_user_tables "
                            "WHERE relname IN ('tap_keys', 'replay_keys')")
    return {row["relname"]: row["seq_scan"] for row in rows}


async def test_commit_reads_keys_by_index(dsn: str):
    # With no statistics on a table that has grown, the planner may hash the
    # whole key table for a batch instead of probing its index, and every
    # commit then reads every key ever written. Claims must use the index.
    # One connection runs the commits and reads the statistics, so that
    # pg_stat_force_next_flush() covers every scan.
    async with asyncpg.create_pool(dsn, min_size=1, max_size=1) as pool:
        async with pool.acquire() as conn:
            for table in ("tap_keys", "replay_keys"):
                await conn.execute(f"ALTER TABLE {table} SET (autovacuum_enabled = false)")
        async with Journal(pool, worker="scan", flush_interval_ms=50.0, batch_max=100,
                           maintain_partitions=False) as journal:
            for _ in range(10):
                await asyncio.gather(*(journal.append(make_entry(medium=2, replay_key=os.urandom(32)))
                                       for _ in range(100)))
            async with pool.acquire() as conn:
                assert await conn.fetchval("SELECT count(*) FROM tap_keys") == 1000
                await conn.execute("SELECT pg_stat_force_next_flush()")
                before = await _sequential_scans(conn)
            batch = [make_entry(medium=2, replay_key=os.urandom(32)) for _ in range(99)]
            batch.append(make_entry(device_tap_id=batch[0].device_tap_id, request_digest=batch[0].request_digest))
            outcomes = await asyncio.gather(*(journal.append(entry) for entry in batch))
        async with pool.acquire() as conn:
            await conn.execute("SELECT pg_stat_force_next_flush()")
            after = await _sequential_scans(conn)
    assert [outcome.status for outcome in outcomes].count("retry") == 1
    assert after == before


async def test_idle_writer_commits_without_waiting(pool: asyncpg.Pool):
    # A flush interval of 10 s would time the test out if a tap reaching an
    # idle writer waited for the interval.
    async with Journal(pool, worker="idle", flush_interval_ms=10_000.0, batch_max=64) as journal:
        outcome = await asyncio.wait_for(journal.append(make_entry()), 5)
    assert outcome.status == "new"


async def test_busy_writer_waits_to_group(pool: asyncpg.Pool):
    # Right after a commit, the next entries wait for the interval and go together.
    async with Journal(pool, worker="busy", flush_interval_ms=300.0, batch_max=64) as journal:
        await journal.append(make_entry())
        first = journal.append(make_entry())
        await asyncio.sleep(0.05)
        second = journal.append(make_entry())
        outcomes = await asyncio.gather(first, second)
    assert outcomes[0].batch_id == outcomes[1].batch_id


async def test_batch_of_retry_replay_and_conflict(journal: Journal, pool: asyncpg.Pool):
    key = os.urandom(32)
    holder = os.urandom(16)
    first = make_entry(medium=2, replay_key=key, holder_token=holder, rider_state=b"state-1")
    used = await journal.append(first)
    # One group: a retry of the tap that used the code, a new tap replaying it,
    # and the first tap's id with another digest.
    retry, replay, conflict = await asyncio.gather(
        journal.append(first),
        journal.append(make_entry(medium=2, replay_key=key, holder_token=holder, rider_state=b"state-2")),
        journal.append(make_entry(device_tap_id=first.device_tap_id, request_digest=os.urandom(32), medium=2,
                                  replay_key=key)))
    states = await journal.load_rider_states([holder])

    assert (retry.status, replay.status, conflict.status) == ("retry", "new", "conflict")
    assert retry.journal_id == used.journal_id
    assert retry.decision == 1
    assert replay.reason == Reason.REPLAYED
    assert replay.fare_fen == 0
    assert conflict.journal_id == used.journal_id
    assert states == {holder: b"state-1"}
    async with pool.acquire() as conn:
        assert (await verify_chain(conn)).ok


async def test_batch_of_only_retries_writes_nothing(journal: Journal, pool: asyncpg.Pool):
    entries = [make_entry(medium=2, replay_key=os.urandom(32)) for _ in range(5)]
    firsts = await asyncio.gather(*(journal.append(entry) for entry in entries))
    head = await pool.fetchrow("SELECT batch_id, chain_hash FROM journal_chain_head")
    batches = await pool.fetchval("SELECT count(*) FROM journal_batches")

    again = await asyncio.gather(*(journal.append(entry) for entry in entries + entries))

    assert [outcome.status for outcome in again] == ["retry"] * 10
    assert [outcome.journal_id for outcome in again] == [outcome.journal_id for outcome in firsts] * 2
    assert [outcome.reason for outcome in again] == [0] * 10
    assert await pool.fetchrow("SELECT batch_id, chain_hash FROM journal_chain_head") == head
    assert await pool.fetchval("SELECT count(*) FROM journal_batches") == batches


async def test_two_pools_claim_each_key_once(dsn: str):
    # Two writers on their own pools commit overlapping tap ids and QR codes at once.
    rng = random.Random(5)
    codes = [os.urandom(32) for _ in range(300)]
    tap_ids = range(10**9, 10**9 + 400)
    first_pool = await asyncpg.create_pool(dsn, min_size=1, max_size=4)
    second_pool = await asyncpg.create_pool(dsn, min_size=1, max_size=4)
    try:
        async with Journal(first_pool, worker="x", flush_interval_ms=1.0, batch_max=37) as first, \
                Journal(second_pool, worker="y", flush_interval_ms=1.0, batch_max=53) as second:
            futures = []
            for i in range(1500):
                tap_id = rng.choice(tap_ids)
                # Mostly retries of the same request, sometimes another request with the same id.
                digest = bytes([tap_id % 256]) * 32 if rng.random() < 0.9 else os.urandom(32)
                entry = make_entry(device_tap_id=tap_id, medium=2, replay_key=rng.choice(codes),
                                   request_digest=digest)
                futures.append((first if rng.random() < 0.5 else second).append(entry))
                if i % 50 == 0:
                    await asyncio.sleep(0)
            outcomes = await asyncio.gather(*futures)

        async with first_pool.acquire() as conn:
            report = await verify_chain(conn)
            rows = await conn.fetchval("SELECT count(*) FROM taps")
            repeated_ids = await conn.fetchval("SELECT count(*) - count(DISTINCT device_tap_id) FROM taps")
            accepted = await conn.fetchval("SELECT count(*) FROM taps WHERE decision = 1")
            claimed = await conn.fetchval("SELECT count(*) FROM replay_keys")
            accepted_codes = await conn.fetchval(
                "SELECT count(DISTINCT r.replay_key) FROM replay_keys r JOIN taps t USING (tap_id) "
                "WHERE t.decision = 1")
    finally:
        await first_pool.close()
        await second_pool.close()

    assert report.ok, report.problems[:5]
    assert repeated_ids == 0
    assert rows == [outcome.status for outcome in outcomes].count("new")
    assert accepted == claimed
    assert accepted_codes == claimed
