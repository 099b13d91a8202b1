"""Closing days, the ledger's database rules, and a settlement run end to end."""

from __future__ import annotations

import datetime as dt

import asyncpg
import pytest

from gateway import timeutil
from settlement import days, ledger, run
from settlement.errors import SettlementError

from .conftest import DAY, Journal, seed, token

CUTOFF = dt.time(0, 0)
AFTER = dt.datetime(2026, 12, 5, tzinfo=timeutil.UTC)


async def test_day_close_records_high_water_mark(conn, cipher):
    await seed(conn, cipher)
    journal = Journal(conn)
    batch = await journal.commit([{"account": token(1)}, {"account": token(2), "fare": 300}])
    closed = await days.close_day(conn, DAY, CUTOFF, now=AFTER)
    assert [d.business_day for d in closed] == [DAY]
    assert closed[0].high_water_batch == batch
    rows = await conn.fetch("SELECT * FROM settlement_account_fares ORDER BY fare_fen")
    assert [r["fare_fen"] for r in rows] == [200, 300]


async def test_day_close_before_cutoff_rejected(conn, cipher):
    early = dt.datetime(2026, 12, 1, 12, 0, tzinfo=timeutil.UTC)
    with pytest.raises(SettlementError, match="has not ended yet"):
        await days.close_day(conn, DAY, CUTOFF, now=early)


async def test_late_tap_goes_to_next_closed_day(conn, cipher):
    await seed(conn, cipher)
    journal = Journal(conn)
    await journal.commit([{"account": token(1)}])
    await days.close_day(conn, DAY, CUTOFF, now=AFTER)
    # Uploaded after DAY closed, but tapped on DAY.
    await journal.commit([{"account": token(1), "fare": 150, "offline": True}])
    await journal.commit([{"account": token(2), "day": DAY + dt.timedelta(days=1)}])
    await days.close_day(conn, DAY + dt.timedelta(days=1), CUTOFF, now=AFTER)
    rows = await conn.fetch("SELECT business_day, account_token, fare_fen FROM settlement_account_fares "
                            "ORDER BY business_day, fare_fen")
    assert [(r["business_day"], r["fare_fen"]) for r in rows] == [
        (DAY, 200), (DAY + dt.timedelta(days=1), 150), (DAY + dt.timedelta(days=1), 200)]
    assert sum(r["fare_fen"] for r in rows) == await conn.fetchval("SELECT sum(fare_fen) FROM taps")


async def test_closing_earlier_day_rejected(conn, cipher):
    await days.close_day(conn, DAY + dt.timedelta(days=2), CUTOFF, now=AFTER)
    with pytest.raises(SettlementError, match="before the last closed day"):
        await days.close_day(conn, DAY, CUTOFF, now=AFTER)


async def test_unbalanced_posting_rejected(conn):
    with pytest.raises(asyncpg.CheckViolationError, match="unbalanced"):
        async with conn.transaction():
            await ledger.post(conn, "bad", "adjustment", [ledger.Line("bank", "ICBC", 100),
                                                          ledger.Line("fee_income", "bus1", -99)])


async def test_ledger_rows_immutable(conn):
    async with conn.transaction():
        posting = await ledger.post(conn, "ok", "adjustment", [ledger.Line("bank", "ICBC", 100),
                                                               ledger.Line("fee_income", "bus1", -100)])
    with pytest.raises(asyncpg.IntegrityConstraintViolationError, match="immutable"):
        await conn.execute("UPDATE ledger_lines SET amount_fen = 1 WHERE posting_id = $1", posting)
    with pytest.raises(asyncpg.IntegrityConstraintViolationError, match="immutable"):
        await conn.execute("DELETE FROM ledger_postings WHERE posting_id = $1", posting)
    with pytest.raises(asyncpg.IntegrityConstraintViolationError, match="committed earlier"):
        await conn.execute("INSERT INTO ledger_lines VALUES ($1, 3, 'bank', 'ICBC', 5), ($1, 4, 'bank', 'RCB', -5)",
                           posting)
    reversal = await ledger.reverse(conn, posting)
    assert await ledger.balance(conn, "bank", "ICBC") == 0
    assert await ledger.reverse(conn, posting) == reversal


async def test_run_produces_debits_credits_and_files(conn, cipher, tmp_path):
    await seed(conn, cipher)
    journal = Journal(conn)
    await journal.commit([{"account": token(1), "fare": 200}, {"account": token(1), "fare": 200},
                          {"account": token(2), "fare": 300, "operator": "museum"},
                          {"account": token(3), "fare": 0, "full_fare": 200, "discounts": ["category"],
                           "category": "senior"},
                          {"account": token(4), "fare": 500, "decision": 0}])
    await days.close_day(conn, DAY, CUTOFF, now=AFTER)
    result = await run.run_day(conn, DAY, cipher, tmp_path / "out")
    assert (result.debits, result.debit_fen) == (2, 700)
    # bus1 keeps a 0.5 % fee: 400 fen -> 2 fen.
    assert (result.credits, result.credit_fen, result.fee_fen) == (2, 698, 2)
    assert sorted(p.rsplit("/", 1)[1] for p in result.files) == sorted([
        "20261201_ICBC_pain.008.001.08.xml", "20261201_ICBC_debits.csv", "20261201_ICBC_pain.001.001.09.xml",
        "20261201_ICBC_credits.csv", "20261201_RCB_pain.008.001.08.xml", "20261201_RCB_debits.csv",
        "20261201_RCB_pain.001.001.09.xml", "20261201_RCB_credits.csv"])
    assert sum((await ledger.trial_balance(conn)).values()) == 0


async def test_invalid_bank_file_not_written(conn, cipher, tmp_path, monkeypatch):
    from settlement import isofiles
    from settlement.errors import SchemaValidationError

    await seed(conn, cipher)
    await Journal(conn).commit([{"account": token(1), "fare": 200}])
    await days.close_day(conn, DAY, CUTOFF, now=AFTER)
    # Nm is Max140Text in pain.008, so a longer initiating party name fails the XSD.
    monkeypatch.setattr(isofiles, "AGENCY_NAME", "x" * 141)
    with pytest.raises(SchemaValidationError, match="not a valid pain.008.001.08 message"):
        await run.run_day(conn, DAY, cipher, tmp_path)
    assert list(tmp_path.rglob("*.xml*")) == []
    assert list(tmp_path.rglob("*.csv*")) == []
    assert await conn.fetchval("SELECT count(*) FROM settlement_files") == 0
