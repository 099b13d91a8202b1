"""``tapgate journal`` and ``tapgate deny``, run in a subprocess as an operator runs them."""

from __future__ import annotations

import asyncio
import os

import asyncpg

from gateway.journal import Journal
from tests.journal.conftest import make_entry
from tests.test_cli import run_cli


async def _journal_some_taps(dsn: str, count: int = 6) -> None:
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    try:
        async with Journal(pool, worker="cli") as journal:
            await asyncio.gather(*(journal.append(make_entry()) for _ in range(count)))
    finally:
        await pool.close()


async def test_verify_intact_then_broken(dsn: str):
    await _journal_some_taps(dsn)
    intact = await asyncio.to_thread(run_cli, "journal", "verify", "--dsn", dsn)
    assert intact.returncode == 0, intact.stderr
    assert "hash chain intact" in intact.stdout
    assert "哈希链完好" in intact.stdout

    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("UPDATE taps SET fare_fen = 0 WHERE tap_id = (SELECT min(tap_id) FROM taps)")
    finally:
        await conn.close()
    broken = await asyncio.to_thread(run_cli, "journal", "verify", "--dsn", dsn)
    assert broken.returncode == 1
    assert "[row_altered]" in broken.stdout
    assert "hash chain BROKEN: row_altered 1" in broken.stdout
    assert "流水被修改 1" in broken.stdout

    as_json = await asyncio.to_thread(run_cli, "journal", "verify", "--json", "--dsn", dsn)
    assert as_json.returncode == 1
    assert '"kind": "row_altered"' in as_json.stdout


async def test_partitions_created_and_listed(dsn: str):
    result = await asyncio.to_thread(run_cli, "journal", "partitions", "--dsn", dsn)
    assert result.returncode == 0, result.stderr
    assert "created 11 partitions" in result.stdout
    assert "taps_default" in result.stdout
    again = await asyncio.to_thread(run_cli, "journal", "partitions", "--dsn", dsn)
    assert "created 0 partitions" in again.stdout


async def test_deny_add_list_remove(dsn: str):
    subject = os.urandom(16).hex()
    added = await asyncio.to_thread(run_cli, "deny", "add", "--kind", "card_lost", subject,
                                    "--source", "issuer report 42", "--dsn", dsn)
    assert added.returncode == 0, added.stderr
    assert f"added card_lost {subject}" in added.stdout

    listed = await asyncio.to_thread(run_cli, "deny", "list", "--dsn", dsn)
    assert subject in listed.stdout
    assert "issuer report 42" in listed.stdout

    removed = await asyncio.to_thread(run_cli, "deny", "remove", "--kind", "card_lost", subject,
                                      "--source", "card found", "--dsn", dsn)
    assert removed.returncode == 0, removed.stderr
    active = await asyncio.to_thread(run_cli, "deny", "list", "--dsn", dsn)
    assert subject not in active.stdout
    everything = await asyncio.to_thread(run_cli, "deny", "list", "--all", "--dsn", dsn)
    assert subject in everything.stdout

    missing = await asyncio.to_thread(run_cli, "deny", "remove", "--kind", "card_lost", subject,
                                      "--source", "again", "--dsn", dsn)
    assert missing.returncode == 1
    assert "no active card_lost entry" in missing.stdout


async def test_deny_bad_subject_is_clear_error(dsn: str):
    not_hex = await asyncio.to_thread(run_cli, "deny", "add", "--kind", "card_lost", "xyz", "--source", "s",
                                      "--dsn", dsn)
    assert not_hex.returncode == 1
    assert "is not hexadecimal" in not_hex.stderr
    short = await asyncio.to_thread(run_cli, "deny", "add", "--kind", "arrears", "abcd", "--source", "s",
                                    "--dsn", dsn)
    assert short.returncode == 1
    assert "16-byte account token, got 2 bytes" in short.stderr
