"""Schema migrations against a real PostgreSQL."""

from __future__ import annotations

import asyncpg
import pytest

from gateway import db
from gateway.errors import MigrationError
from tapgate import runtime


async def test_migrate_applies_every_component(empty_dsn: str) -> None:
    applied = await runtime.migrate_all(empty_dsn)
    labels = [m.label for m in applied]
    assert "gateway/0001_core.sql" in labels

    conn = await asyncpg.connect(empty_dsn)
    try:
        rows = await conn.fetch("SELECT component, version FROM schema_migrations")
        assert ("gateway", 1) in {(r["component"], r["version"]) for r in rows}
        assert await conn.fetchval("SELECT to_regclass('taps') IS NOT NULL")
        for sequence in runtime.all_migrations():
            await db.check_current(conn, sequence)
    finally:
        await conn.close()


async def test_migrate_twice_changes_nothing(empty_dsn: str) -> None:
    await runtime.migrate_all(empty_dsn)
    again = await runtime.migrate_all(empty_dsn)
    assert again == []


async def test_failing_migration_keeps_previous_version(empty_dsn: str) -> None:
    good = db.Migration("scratch", 1, "make_table", "CREATE TABLE scratch_a (x int)")
    bad = db.Migration("scratch", 2, "broken", "CREATE TABLE scratch_b (x int); SELECT no_such_function()")
    conn = await asyncpg.connect(empty_dsn)
    try:
        with pytest.raises(MigrationError, match=r"scratch/0002_broken\.sql failed and was rolled back"):
            await db.migrate(conn, [good, bad])
        versions = await db.applied_versions(conn, "scratch")
        assert set(versions) == {1}
        assert await conn.fetchval("SELECT to_regclass('scratch_b')") is None
        assert await conn.fetchval("SELECT to_regclass('scratch_a')") is not None
    finally:
        await conn.close()


async def test_changed_migration_detected(empty_dsn: str) -> None:
    original = db.Migration("scratch", 1, "make_table", "CREATE TABLE scratch_c (x int)")
    edited = db.Migration("scratch", 1, "make_table", "CREATE TABLE scratch_c (x bigint)")
    conn = await asyncpg.connect(empty_dsn)
    try:
        await db.migrate(conn, [original])
        with pytest.raises(MigrationError, match="was changed after it was applied"):
            await db.migrate(conn, [edited])
    finally:
        await conn.close()


async def test_check_current_reports_missing(empty_dsn: str) -> None:
    conn = await asyncpg.connect(empty_dsn)
    try:
        with pytest.raises(MigrationError, match=r"run `tapgate migrate`"):
            await db.check_current(conn, db.gateway_migrations())
    finally:
        await conn.close()


async def test_tap_partitions_move_default_rows(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            """INSERT INTO operators (operator_id, kind, name_zh, name_en) VALUES ('bus', 'bus', '公交', 'Bus')""")
        await conn.execute(
            """INSERT INTO taps (tap_id, business_day, batch_id, device_id, device_tap_id, tap_time, received_at,
                                 operator_id, tap_kind, medium, decision, reason, request_digest)
               VALUES (1, '2026-12-04', 1, 'v1', 1, now(), now(), 'bus', 0, 2, 1, 0, '\\x00')""")
        made = await conn.fetchval("SELECT tapgate_ensure_tap_partitions('2026-12-03', '2026-12-05')")
        assert made == 3
        where = await conn.fetchval("SELECT tableoid::regclass::text FROM taps WHERE tap_id = 1")
        assert where == "taps_20261204"
        assert await conn.fetchval("SELECT tapgate_ensure_tap_partitions('2026-12-03', '2026-12-05')") == 0
    finally:
        await conn.close()


async def test_embedded_restart_keeps_port(tmp_path) -> None:
    from gateway.pgembed import EmbeddedPostgres

    server = EmbeddedPostgres(tmp_path / "data")
    dsn = server.start()
    try:
        server.stop()
        assert server.start() == dsn
        conn = await asyncpg.connect(dsn)
        assert await conn.fetchval("SELECT 1") == 1
        await conn.close()
    finally:
        server.destroy()
