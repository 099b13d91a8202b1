"""Rule-set versions in PostgreSQL: drafts, publication, immutability, audit, rollback, loading."""

from __future__ import annotations

import asyncpg
import pytest

from gateway.rules import PricingRequest, RuleSetError, example_document_text
from gateway.rules import store
from tests.rules.conftest import local_ms

NOW = local_ms(2026, 12, 1, 12)
TEXT = example_document_text()
CHEAPER = TEXT.replace("price_fen = 100\n", "price_fen = 80\n", 1)


async def test_draft_publish_and_load(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        assert await store.rules_marker(conn) == 0
        version = await store.create_draft(conn, TEXT, "toml", "alice", note="first")
        assert (await store.load_books(conn)).for_time(NOW) is None

        info = await store.publish(conn, version, NOW, "alice", now_ms=NOW)
        assert info.status == "published"
        assert await store.rules_changed_since(conn, 0)

        books = await store.load_books(conn)
        assert books.marker == await store.rules_marker(conn)
        assert books.for_time(NOW - 1) is None
        book = books.for_time(NOW)
        assert book is not None and book.version == version
        price, _ = book.price(PricingRequest(tap_time_ms=NOW + 1000, route_id="1"), None)
        assert price.fare_fen == 100
        assert price.rule_set_version == version
    finally:
        await conn.close()


async def test_tap_priced_by_version_in_effect(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        first = await store.create_draft(conn, TEXT, "toml", "alice")
        await store.publish(conn, first, NOW, "alice", now_ms=NOW)
        second = await store.create_draft(conn, CHEAPER, "toml", "alice", based_on=first)
        tomorrow = local_ms(2026, 12, 2)
        await store.publish(conn, second, tomorrow, "bob", now_ms=NOW)
        books = await store.load_books(conn)

        # A tap uploaded late (offline validator) is priced by the version of its tap time.
        late_tap = PricingRequest(tap_time_ms=tomorrow - 1, route_id="1")
        price, _ = books.for_time(late_tap.tap_time_ms).price(late_tap, None)
        assert (price.fare_fen, price.rule_set_version) == (100, first)
        new_tap = PricingRequest(tap_time_ms=tomorrow, route_id="1")
        price, _ = books.for_time(new_tap.tap_time_ms).price(new_tap, None)
        assert (price.fare_fen, price.rule_set_version) == (80, second)
    finally:
        await conn.close()


async def test_published_version_is_immutable(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        version = await store.create_draft(conn, TEXT, "toml", "alice")
        await store.publish(conn, version, NOW, "alice", now_ms=NOW)
        with pytest.raises(store.RuleStoreError, match=f"version {version} is published"):
            await store.update_draft(conn, version, CHEAPER, "toml", "alice")
        with pytest.raises(store.RuleStoreError, match="已发布，不可修改"):
            await store.delete_draft(conn, version, "alice")
        with pytest.raises(store.RuleStoreError, match="is published"):
            await store.publish(conn, version, NOW, "alice", now_ms=NOW)
        # Even SQL written by hand cannot change or delete it.
        with pytest.raises(asyncpg.IntegrityConstraintViolationError, match="cannot be changed"):
            await conn.execute("UPDATE rule_set_versions SET note = 'x' WHERE version = $1", version)
        with pytest.raises(asyncpg.IntegrityConstraintViolationError, match="cannot be changed"):
            await conn.execute("DELETE FROM rule_set_versions WHERE version = $1", version)
        with pytest.raises(asyncpg.IntegrityConstraintViolationError, match="append-only"):
            await conn.execute("DELETE FROM rule_set_audit")
    finally:
        await conn.close()


async def test_invalid_draft_rejected(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        with pytest.raises(RuleSetError, match=r"\$\.products\[0\]\.price_fen"):
            await store.create_draft(conn, TEXT.replace("price_fen = 100\n", "price_fen = -1\n", 1), "toml", "a")
        assert await store.list_versions(conn) == []
    finally:
        await conn.close()


async def test_past_effective_time_rejected(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        version = await store.create_draft(conn, TEXT, "toml", "alice")
        with pytest.raises(store.RuleStoreError, match="is in the past"):
            await store.publish(conn, version, NOW - 3_600_000, "alice", now_ms=NOW)
        info = await store.publish(conn, version, NOW - 3_600_000, "alice", now_ms=NOW, allow_past=True)
        assert info.status == "published"
    finally:
        await conn.close()


async def test_audit_records_diff(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        version = await store.create_draft(conn, TEXT, "toml", "alice")
        changes = await store.update_draft(conn, version, CHEAPER, "toml", "bob")
        assert changes == [{"path": "$.products[urban-single].price_fen", "op": "changed", "old": 100, "new": 80}]
        await store.publish(conn, version, NOW, "carol", now_ms=NOW)

        entries = await store.audit_log(conn, version)
        assert [(e.action, e.actor) for e in entries] == [("publish", "carol"), ("update_draft", "bob"),
                                                          ("create_draft", "alice")]
        assert entries[1].detail["changes"][0]["new"] == 80
    finally:
        await conn.close()


async def test_rollback_republishes_earlier_version(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        first = await store.create_draft(conn, TEXT, "toml", "alice")
        await store.publish(conn, first, NOW, "alice", now_ms=NOW)
        second = await store.create_draft(conn, CHEAPER, "toml", "alice")
        await store.publish(conn, second, NOW + 60_000, "alice", now_ms=NOW)
        restored = await store.rollback(conn, first, NOW + 120_000, "bob", now_ms=NOW)

        assert restored.version > second
        assert restored.based_on == first
        books = await store.load_books(conn)
        assert [b.version for b in books.books] == [first, second, restored.version]
        tap = PricingRequest(tap_time_ms=NOW + 180_000, route_id="1")
        price, _ = books.for_time(tap.tap_time_ms).price(tap, None)
        assert (price.fare_fen, price.rule_set_version) == (100, restored.version)
        actions = [e.action for e in await store.audit_log(conn)]
        assert actions[:3] == ["publish", "rollback", "create_draft"]
    finally:
        await conn.close()


async def test_missing_version_not_found(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        with pytest.raises(store.RuleVersionNotFound, match="version 42 not found"):
            await store.get_version(conn, 42)
        with pytest.raises(LookupError):
            await store.publish(conn, 42, NOW, "alice", now_ms=NOW)
    finally:
        await conn.close()
