"""A run killed with SIGKILL at any step resumes to the same files; re-running gives the same bytes."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import os
import pathlib
import signal
import subprocess
import sys

import asyncpg
import pytest

from gateway import timeutil
from settlement import days, run
from settlement.crypto import AccountCipher, load_or_create_key

from .conftest import DAY, Journal, seed, token

AFTER = dt.datetime(2026, 12, 5, tzinfo=timeutil.UTC)


async def _prepare(dsn: str, key_file: pathlib.Path) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        cipher = AccountCipher(load_or_create_key(key_file))
        await seed(conn, cipher, riders=range(1, 40))
        journal = Journal(conn)
        for n in range(1, 40):
            await journal.commit([{"account": token(n), "fare": 100 + n, "operator": "bus1" if n % 3 else "museum"}])
        await days.close_day(conn, DAY, dt.time(0, 0), now=AFTER)
    finally:
        await conn.close()


def _settle(dsn: str, key_file: pathlib.Path, out: pathlib.Path, kill_after: int | None = None):
    env = dict(os.environ, TAPGATE_SETTLEMENT_ACCOUNT_KEY_FILE=str(key_file), TAPGATE_LOG_LEVEL="WARNING")
    env.pop(run.KILL_AFTER_ENV, None)
    if kill_after is not None:
        env[run.KILL_AFTER_ENV] = str(kill_after)
    return subprocess.run([sys.executable, "-m", "tapgate", "settle", "run", DAY.isoformat(), "--dsn", dsn,
                           "--output-dir", str(out)], env=env, capture_output=True, text=True, timeout=120)


def _digests(folder: pathlib.Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("kill_after", [1, 3, 5, 6])
def test_killed_run_resumes(dsn, tmp_path, kill_after):
    key_file = tmp_path / "account.key"
    asyncio.run(_prepare(dsn, key_file))
    out = tmp_path / "out"

    killed = _settle(dsn, key_file, out, kill_after)
    assert killed.returncode == -signal.SIGKILL, killed.stderr

    resumed = _settle(dsn, key_file, out)
    assert resumed.returncode == 0, resumed.stderr
    first = _digests(out)
    assert len(first) == 8
    assert not any(name.endswith(".tmp") for name in first)

    # Deleting the files and running again reproduces the same bytes.
    for path in out.rglob("*.*"):
        path.unlink()
    again = _settle(dsn, key_file, out)
    assert again.returncode == 0, again.stderr
    assert _digests(out) == first

    async def check() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            recorded = {r["file_name"]: r["sha256"] for r in await conn.fetch("SELECT file_name, sha256 FROM settlement_files")}
            assert recorded == first
            debits = await conn.fetchval("SELECT count(*) FROM settlement_debits")
            assert debits == 39
            # Each posting exactly once; the day has no subsidised ride, so no subsidy posting.
            refs = sorted(r["ref"] for r in await conn.fetch("SELECT ref FROM ledger_postings"))
            assert refs == [f"accrual:{DAY}", f"credits:{DAY}", f"debits:{DAY}"]
        finally:
            await conn.close()

    asyncio.run(check())
