"""Bank returns: settled and rejected items, arrears on the deny list, idempotent imports."""

from __future__ import annotations

import datetime as dt

import pytest

from gateway import timeutil
from settlement import days, ledger, reconcile, returns, run
from settlement.errors import InputFileError

from .conftest import DAY, Journal, seed, token

AFTER = dt.datetime(2026, 12, 10, tzinfo=timeutil.UTC)
NEXT = DAY + dt.timedelta(days=1)


async def _settled_day(conn, cipher, tmp_path, day=DAY, taps=None):
    journal = Journal(conn)
    await journal.commit(taps or [{"account": token(1), "fare": 200, "day": day},
                                  {"account": token(2), "fare": 300, "day": day},
                                  {"account": token(3), "fare": 400, "day": day, "operator": "museum"}])
    await days.close_day(conn, day, dt.time(0, 0), now=AFTER)
    await run.run_day(conn, day, cipher, tmp_path)
    return {bytes(r["account_token"]): r for r in await conn.fetch(
        "SELECT * FROM settlement_debits WHERE business_day = $1", day)}


def _camt(items, message_id="BANK-1") -> bytes:
    created = dt.datetime(2026, 12, 3, 10, 0, tzinfo=timeutil.LOCAL_TZ)
    return returns.build_camt054(items, message_id=message_id, created_at=created,
                                 account_number="1602000119000012345").encode()


async def _deny(conn, account: bytes):
    return await conn.fetchrow("SELECT active, version FROM deny_list WHERE kind = 'arrears' AND subject = $1", account)


async def test_rejected_debit_enters_deny_list(conn, cipher, tmp_path):
    await seed(conn, cipher)
    debits = await _settled_day(conn, cipher, tmp_path)
    items = [returns.ReturnItem(debits[token(1)]["end_to_end_id"], "rejected", 200, "AM04", DAY),
             returns.ReturnItem(debits[token(2)]["end_to_end_id"], "settled", 300, None, DAY)]
    report = await returns.import_returns(conn, _camt(items), "camt1.xml")
    assert (report.new_items, report.settled, report.rejected, report.deny_added) == (2, 1, 1, 1)
    assert (await _deny(conn, token(1)))["active"] is True
    assert await _deny(conn, token(2)) is None
    statuses = {bytes(r["account_token"]): (r["status"], r["reason_code"])
                for r in await conn.fetch("SELECT * FROM settlement_debits")}
    assert statuses[token(1)] == ("rejected", "AM04")
    assert statuses[token(2)] == ("settled", None)
    assert await ledger.balance(conn, "rider_receivable", token(1).hex()) == 200
    assert sum((await ledger.trial_balance(conn)).values()) == 0


async def test_same_return_file_twice_changes_nothing(conn, cipher, tmp_path):
    await seed(conn, cipher)
    debits = await _settled_day(conn, cipher, tmp_path)
    items = [returns.ReturnItem(debits[token(1)]["end_to_end_id"], "rejected", 200, "AC04", DAY)]
    await returns.import_returns(conn, _camt(items), "camt1.xml")
    snapshot = await conn.fetch("SELECT * FROM deny_list ORDER BY subject")
    lines = await conn.fetchval("SELECT count(*) FROM ledger_lines")

    again = await returns.import_returns(conn, _camt(items), "camt1-copy.xml")
    assert again.already_imported
    # The CSV twin of the same items is another file but contains no new item.
    twin = await returns.import_returns(conn, returns.items_to_csv(items).encode(), "returns.csv")
    assert (twin.items, twin.new_items) == (1, 0)
    assert await conn.fetch("SELECT * FROM deny_list ORDER BY subject") == snapshot
    assert await conn.fetchval("SELECT count(*) FROM ledger_lines") == lines


async def test_arrears_collected_next_run_then_cleared(conn, cipher, tmp_path):
    await seed(conn, cipher)
    debits = await _settled_day(conn, cipher, tmp_path)
    rejected = [returns.ReturnItem(debits[token(1)]["end_to_end_id"], "rejected", 200, "AM04", DAY)]
    await returns.import_returns(conn, _camt(rejected), "day1.xml")
    listed = await _deny(conn, token(1))

    next_debits = await _settled_day(conn, cipher, tmp_path, NEXT, [{"account": token(1), "fare": 150, "day": NEXT}])
    debit = next_debits[token(1)]
    assert (debit["day_fen"], debit["carried_fen"], debit["amount_fen"]) == (150, 200, 350)

    paid = [returns.ReturnItem(debit["end_to_end_id"], "settled", 350, None, NEXT)]
    report = await returns.import_returns(conn, returns.items_to_csv(paid).encode(), "day2.csv")
    assert report.deny_removed == 1
    cleared = await _deny(conn, token(1))
    assert cleared["active"] is False
    assert cleared["version"] > listed["version"]
    assert await conn.fetchval("SELECT count(*) FROM settlement_arrears") == 0


async def test_arrears_grace_amount_and_rides(conn, cipher, tmp_path):
    await seed(conn, cipher)
    debits = await _settled_day(conn, cipher, tmp_path)
    items = [returns.ReturnItem(debits[token(1)]["end_to_end_id"], "rejected", 200, "AM04", DAY),
             returns.ReturnItem(debits[token(2)]["end_to_end_id"], "rejected", 300, "AM04", DAY)]
    report = await returns.import_returns(conn, _camt(items), "r.xml", grace_fen=250, grace_rides=2)
    # token 1 owes 200 <= 250 fen: tolerated. token 2 owes 300 but has taken no ride since.
    assert report.deny_added == 0
    assert await conn.fetchval("SELECT count(*) FROM settlement_arrears") == 1

    later = dt.datetime.now(timeutil.UTC) + dt.timedelta(minutes=1)
    journal = Journal(conn)
    await journal.commit([{"account": token(2), "fare": 100, "tap_time": later, "received_at": later}])
    async with conn.transaction():
        from settlement import arrears
        assert await arrears.refresh(conn, grace_rides=2, grace_fen=250) == (0, 0)
        await journal.commit([{"account": token(2), "fare": 100, "tap_time": later, "received_at": later}])
        assert await arrears.refresh(conn, grace_rides=2, grace_fen=250) == (1, 0)
    assert (await _deny(conn, token(2)))["active"] is True


async def test_return_with_wrong_amount_rejected_whole(conn, cipher, tmp_path):
    await seed(conn, cipher)
    debits = await _settled_day(conn, cipher, tmp_path)
    items = [returns.ReturnItem(debits[token(1)]["end_to_end_id"], "settled", 201, None, DAY),
             returns.ReturnItem("TG20990101D000000001", "settled", 100, None, DAY)]
    with pytest.raises(InputFileError, match="does not match") as caught:
        await returns.import_returns(conn, _camt(items), "bad.xml")
    assert [line for line, _ in caught.value.problems] == [1, 2]
    assert "expected 200" in caught.value.problems[0][1]
    assert "未知的端到端标识" in caught.value.problems[1][1]
    assert await conn.fetchval("SELECT count(*) FROM settlement_returns") == 0


async def test_invalid_camt_rejected_by_schema(conn):
    bad = _camt([]).replace(b"<MsgId>BANK-1</MsgId>", b"")
    with pytest.raises(Exception, match="camt.054.001.08") as caught:
        await returns.import_returns(conn, bad, "broken.xml")
    # The error names the operator's file, not the temporary copy that was validated.
    assert "broken.xml is not a valid camt.054.001.08 message" in str(caught.value)


async def test_returns_csv_bad_rows_listed(conn):
    text = ("end_to_end_id,outcome,amount_fen,reason_code,booked_on\n"
            "X1,paid,100,,\nX2,rejected,abc,AM04,\nX3,rejected,100,,\n")
    with pytest.raises(InputFileError) as caught:
        await returns.import_returns(conn, text.encode(), "r.csv")
    assert [line for line, _ in caught.value.problems] == [2, 3, 4]
    assert "outcome 'paid'" in caught.value.problems[0][1]


async def test_reconciliation_shows_returned_and_outstanding(conn, cipher, tmp_path):
    await seed(conn, cipher)
    debits = await _settled_day(conn, cipher, tmp_path)
    items = [returns.ReturnItem(debits[token(1)]["end_to_end_id"], "rejected", 200, "AM04", DAY),
             returns.ReturnItem(debits[token(2)]["end_to_end_id"], "settled", 300, None, DAY)]
    await returns.import_returns(conn, _camt(items), "r.xml")
    lines, totals = await reconcile.reconcile_day(conn, DAY)
    by_operator = {line.operator_id: line for line in lines}
    bus = by_operator["bus1"]
    assert (bus.taps, bus.fare_fen, bus.collected_fen, bus.returned_fen, bus.outstanding_fen) == (2, 500, 300, 200, 200)
    museum = by_operator["museum"]
    assert (museum.pending_fen, museum.outstanding_fen) == (400, 400)
    assert (totals.debits, totals.settled_fen, totals.rejected_fen, totals.pending_fen) == (3, 300, 200, 400)
    assert reconcile.reconciliation_csv(lines).splitlines()[0].startswith("business_day,operator_id,taps")
