"""Deny lists: entries, versions in commit order, deltas, the in-memory view, and issuer key polling."""

from __future__ import annotations

import asyncio
import os

import asyncpg
import pytest
from nacl.signing import SigningKey

from gateway import denylist
from gateway.denylist import ARREARS, CARD_LOST, CREDENTIAL_REVOKED, DenyList, DenyListError
from gateway.keyring_store import build_key_ring, load_issuer_keys, load_issuer_keys_if_changed
from gateway.reasons import Reason


@pytest.fixture
async def conn(dsn: str):
    connection = await asyncpg.connect(dsn)
    try:
        yield connection
    finally:
        await connection.close()


async def test_add_and_check(conn: asyncpg.Connection):
    lost, revoked, account = os.urandom(16), os.urandom(16), os.urandom(16)
    await denylist.add_entry(conn, CARD_LOST, lost, "issuer report 1")
    await denylist.add_entry(conn, CREDENTIAL_REVOKED, revoked, "issuer")
    await denylist.add_entry(conn, ARREARS, account, "settlement")
    deny = DenyList()
    assert await deny.refresh(conn) == 3
    assert deny.check(lost, os.urandom(16)) == Reason.CARD_REPORTED_LOST
    assert deny.check(revoked, os.urandom(16)) == Reason.CREDENTIAL_REVOKED
    assert deny.check(os.urandom(16), account) == Reason.ACCOUNT_IN_ARREARS
    assert deny.check(os.urandom(16), os.urandom(16)) == 0
    assert deny.check(None, None) == 0
    assert deny.counts() == {CARD_LOST: 1, CREDENTIAL_REVOKED: 1, ARREARS: 1}


async def test_removal_reaches_worker(conn: asyncpg.Connection):
    subject = os.urandom(16)
    deny = DenyList()
    await denylist.add_entry(conn, CARD_LOST, subject, "issuer")
    await deny.refresh(conn)
    version = await denylist.remove_entry(conn, CARD_LOST, subject, "card found")
    assert version is not None
    assert await deny.refresh(conn) == 1
    assert deny.check(subject, None) == 0
    assert deny.version == version
    assert await denylist.remove_entry(conn, CARD_LOST, subject, "again") is None


async def test_versions_increase_per_change(conn: asyncpg.Connection):
    subject = os.urandom(16)
    first = await denylist.add_entry(conn, CARD_LOST, subject, "issuer")
    second = await denylist.remove_entry(conn, CARD_LOST, subject, "found")
    third = await denylist.add_entry(conn, CARD_LOST, subject, "lost again")
    assert first < second < third


async def test_delta_pages_and_skips_inactive_for_new_reader(conn: asyncpg.Connection):
    subjects = [os.urandom(16) for _ in range(5)]
    for subject in subjects:
        await denylist.add_entry(conn, ARREARS, subject, "settlement")
    await denylist.remove_entry(conn, ARREARS, subjects[0], "paid")

    fresh = await denylist.delta(conn, 0)
    assert {entry.subject for entry in fresh.entries} == set(subjects[1:])
    assert all(entry.active for entry in fresh.entries)

    page = await denylist.delta(conn, 0, limit=2)
    assert page.more
    assert len(page.entries) == 2
    rest = await denylist.delta(conn, page.version, limit=100)
    assert not rest.more
    assert rest.entries[-1].active is False
    assert rest.entries[-1].subject == subjects[0]

    unchanged = await denylist.delta(conn, rest.version)
    assert unchanged.entries == []
    assert unchanged.version == rest.version


async def test_delete_is_rejected(conn: asyncpg.Connection):
    await denylist.add_entry(conn, CARD_LOST, os.urandom(16), "issuer")
    with pytest.raises(asyncpg.RestrictViolationError, match="set active = false"):
        await conn.execute("DELETE FROM deny_list")


async def test_explicit_version_is_overridden(conn: asyncpg.Connection):
    # Writers that set version themselves (as settlement does) still get one in commit order.
    await conn.execute("INSERT INTO deny_list (kind, subject, source, version) VALUES ('arrears', $1, 'x', 1)",
                       os.urandom(16))
    later = await denylist.add_entry(conn, CARD_LOST, os.urandom(16), "issuer")
    rows = await conn.fetch("SELECT version FROM deny_list ORDER BY version")
    assert [row["version"] for row in rows][-1] == later
    assert len({row["version"] for row in rows}) == 2


async def test_concurrent_writer_commits_in_version_order(dsn: str, conn: asyncpg.Connection):
    # A writer that took a version but has not committed blocks the next writer,
    # so a reader can never see the later version without the earlier one.
    slow = await asyncpg.connect(dsn)
    try:
        await slow.execute("BEGIN")
        await denylist.add_entry(slow, CARD_LOST, os.urandom(16), "slow writer")
        second = asyncio.ensure_future(denylist.add_entry(conn, CARD_LOST, os.urandom(16), "fast writer"))
        await asyncio.sleep(0.2)
        assert not second.done()
        reader = DenyList()
        async with asyncpg.create_pool(dsn, min_size=1, max_size=1) as pool:
            async with pool.acquire() as read_conn:
                await reader.refresh(read_conn)
                assert reader.version == 0
                await slow.execute("COMMIT")
                second_version = await second
                await reader.refresh(read_conn)
        assert reader.version == second_version
        assert sum(reader.counts().values()) == 2
    finally:
        await slow.close()


@pytest.mark.parametrize(("kind", "subject", "message"), [
    ("stolen", os.urandom(16), "unknown deny-list kind 'stolen'"),
    (CARD_LOST, b"\x01\x02", "16-byte credential id, got 2 bytes"),
    (ARREARS, os.urandom(20), "16-byte account token, got 20 bytes"),
])
async def test_invalid_entry_rejected(conn: asyncpg.Connection, kind: str, subject: bytes, message: str):
    with pytest.raises(DenyListError, match=message):
        await denylist.add_entry(conn, kind, subject, "issuer")


async def test_entry_needs_source(conn: asyncpg.Connection):
    with pytest.raises(DenyListError, match="needs a source"):
        await denylist.add_entry(conn, CARD_LOST, os.urandom(16), "  ")


async def test_list_entries(conn: asyncpg.Connection):
    kept, removed = os.urandom(16), os.urandom(16)
    await denylist.add_entry(conn, CARD_LOST, kept, "issuer")
    await denylist.add_entry(conn, CARD_LOST, removed, "issuer")
    await denylist.remove_entry(conn, CARD_LOST, removed, "found")
    assert [entry.subject for entry in await denylist.list_entries(conn)] == [kept]
    everything = await denylist.list_entries(conn, CARD_LOST, include_inactive=True)
    assert [entry.subject for entry in everything] == [removed, kept]
    assert await denylist.list_entries(conn, ARREARS) == []


async def test_issuer_key_changes_change_marker(conn: asyncpg.Connection):
    public = bytes(SigningKey.generate().verify_key)
    empty = await load_issuer_keys(conn)
    assert empty.keys == ()
    await conn.execute("INSERT INTO issuer_keys (key_id, public_key) VALUES (1, $1)", public)
    added = await load_issuer_keys_if_changed(conn, empty.marker)
    assert added is not None
    assert [(key.key_id, key.status) for key in added.keys] == [(1, "active")]
    assert await load_issuer_keys_if_changed(conn, added.marker) is None

    # A retirement that does not bump version is still seen.
    await conn.execute("UPDATE issuer_keys SET status = 'retired', retired_at = now() WHERE key_id = 1")
    retired = await load_issuer_keys_if_changed(conn, added.marker)
    assert retired is not None
    assert retired.keys[0].status == "retired"
    assert retired.keys[0].retired_at_ms is not None
    ring = build_key_ring(retired)
    assert ring is not None
