"""Deleting QR replay keys past the horizon after which no verification can accept their code."""

from __future__ import annotations

import asyncio
import os
import time

import asyncpg
import pytest

from gateway.config import load_config
from gateway.journal import Journal
from gateway.journal.retention import HORIZON_MARGIN_S, prune_replay_keys, replay_key_horizon_s
from gateway.reasons import Reason
from tests.journal.conftest import make_entry

DAY_MS = 86_400_000


def test_horizon_covers_offline_window() -> None:
    config = load_config(None, environ={"TAPGATE_FASTPATH_OFFLINE_UPLOAD_MAX_S": "3600",
                                        "TAPGATE_FASTPATH_CODE_LIFETIME_S": "60",
                                        "TAPGATE_FASTPATH_CLOCK_SKEW_S": "30",
                                        "TAPGATE_SERVER_TAP_TIME_TOLERANCE_S": "120"})
    # 3600 s offline window, 90 s code window, 120 s between tap time and signed time, and the margin.
    assert replay_key_horizon_s(config) == 3600 + 90 + 120 + HORIZON_MARGIN_S


async def test_old_keys_deleted_new_kept(pool: asyncpg.Pool) -> None:
    now_ms = int(time.time() * 1000)
    old_key, recent_key = os.urandom(32), os.urandom(32)
    async with Journal(pool, worker="retention") as journal:
        await asyncio.gather(
            journal.append(make_entry(medium=2, replay_key=old_key, tap_time_ms=now_ms - 10 * DAY_MS,
                                      received_at_ms=now_ms)),
            journal.append(make_entry(medium=2, replay_key=recent_key, tap_time_ms=now_ms - 1 * DAY_MS,
                                      received_at_ms=now_ms)))
        async with pool.acquire() as conn:
            deleted = await prune_replay_keys(conn, 8 * 86_400, chunk=1)
            left = {bytes(row[0]) for row in await conn.fetch("SELECT replay_key FROM replay_keys")}
            taps = await conn.fetchval("SELECT count(*) FROM taps")
        # The recent key still stops a replay of its code.
        replayed = await journal.append(make_entry(medium=2, replay_key=recent_key, tap_time_ms=now_ms - DAY_MS,
                                                   received_at_ms=now_ms))
    assert deleted == 1
    assert left == {recent_key}
    assert taps == 2
    assert replayed.reason == Reason.REPLAYED


async def test_negative_age_rejected(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        with pytest.raises(ValueError, match="older_than_s=-1"):
            await prune_replay_keys(conn, -1)
