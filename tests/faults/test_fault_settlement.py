"""Settlement under faults: a run killed again and again, and bank returns imported twice.

``tapgate settle run`` runs as a child process with the test hook
``TAPGATE_SETTLE_KILL_AFTER_STEPS``, which makes it SIGKILL itself after a
number of committed steps (each posting step and each written file is one).
The test kills it at random hook points until a run completes, runs it once
more, and then imports the bank's answer three times: the CSV, the same CSV
again, and a camt.054 file carrying the same items. Afterwards every
account is debited once for exactly its fares, every operator credited
once for its fares less the fee, and every returned item counted once in
the ledger: no double debit, no lost credit.
"""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import os
import pathlib
import signal
import subprocess
import sys

import asyncpg

from gateway import timeutil
from settlement import days, ledger, run
from settlement.crypto import AccountCipher, load_or_create_key
from settlement.returns import ReturnItem, build_camt054, items_to_csv
from tests.settlement.conftest import DAY, Journal, seed, token

AFTER = dt.datetime(2026, 12, 5, tzinfo=timeutil.UTC)
RIDERS = range(1, 25)
FEE_BP = {"bus1": 50, "museum": 0}


def fares_of(n: int) -> list[tuple[str, int]]:
    """The (operator, fare) of rider ``n``'s accepted taps; every third rider also rides the museum."""
    taps = [("bus1", 100 + n), ("bus1", 200)]
    if n % 3 == 0:
        taps.append(("museum", 1500))
    return taps


async def prepare(dsn: str, key_file: pathlib.Path) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        cipher = AccountCipher(load_or_create_key(key_file))
        await seed(conn, cipher, riders=RIDERS)
        journal = Journal(conn)
        for n in RIDERS:
            await journal.commit([{"account": token(n), "fare": fare, "operator": operator}
                                  for operator, fare in fares_of(n)]
                                 + [{"account": token(n), "fare": 999, "decision": 0}])
        await days.close_day(conn, DAY, dt.time(0, 0), now=AFTER)
    finally:
        await conn.close()


def tapgate(dsn: str, key_file: pathlib.Path, *args: str, kill_after: int | None = None):
    env = dict(os.environ, TAPGATE_SETTLEMENT_ACCOUNT_KEY_FILE=str(key_file), TAPGATE_LOG_LEVEL="WARNING")
    env.pop(run.KILL_AFTER_ENV, None)
    if kill_after is not None:
        env[run.KILL_AFTER_ENV] = str(kill_after)
    return subprocess.run([sys.executable, "-m", "tapgate", "settle", *args, "--dsn", dsn], env=env,
                          capture_output=True, text=True, timeout=120)


def expected_debits() -> dict[bytes, int]:
    return {token(n): sum(fare for _, fare in fares_of(n)) for n in RIDERS}


def expected_credits() -> dict[str, int]:
    fares: dict[str, int] = {}
    for n in RIDERS:
        for operator, fare in fares_of(n):
            fares[operator] = fares.get(operator, 0) + fare
    return {op: fare - (fare * FEE_BP[op] + 5000) // 10000 for op, fare in fares.items()}


def csv_rows(folder: pathlib.Path, suffix: str) -> list[dict[str, str]]:
    rows = []
    for path in sorted(folder.rglob(f"*{suffix}")):
        with open(path, newline="", encoding="utf-8") as file:
            rows += list(csv.DictReader(file))
    return rows


def test_killed_runs_and_repeated_returns_keep_money_exact(dsn: str, tmp_path: pathlib.Path) -> None:
    key_file = tmp_path / "account.key"
    out = tmp_path / "out"
    asyncio.run(prepare(dsn, key_file))

    # The hook counts the steps a process goes through, finished ones included, so each
    # attempt is killed one hook point further on, until an attempt has fewer steps than
    # its limit and completes.
    kills = 0
    for kill_after in range(1, 30):
        attempt = tapgate(dsn, key_file, "run", DAY.isoformat(), "--output-dir", str(out), kill_after=kill_after)
        if attempt.returncode == 0:
            break
        assert attempt.returncode == -signal.SIGKILL, (kill_after, attempt.returncode, attempt.stderr)
        kills += 1
    assert kills >= 5
    finished = tapgate(dsn, key_file, "run", DAY.isoformat(), "--output-dir", str(out))
    assert finished.returncode == 0, finished.stderr
    again = tapgate(dsn, key_file, "run", DAY.isoformat(), "--output-dir", str(out))
    assert again.returncode == 0, again.stderr

    # The bank files: one instruction per account and operator, for exactly the expected amounts.
    debit_rows = csv_rows(out, "_debits.csv")
    credit_rows = csv_rows(out, "_credits.csv")
    assert len({r["end_to_end_id"] for r in debit_rows}) == len(debit_rows) == len(RIDERS)
    assert sum(int(r["amount_fen"]) for r in debit_rows) == sum(expected_debits().values())
    assert sorted(int(r["amount_fen"]) for r in credit_rows) == sorted(expected_credits().values())

    async def instructed() -> tuple[list[asyncpg.Record], list[asyncpg.Record]]:
        conn = await asyncpg.connect(dsn)
        try:
            debits = await conn.fetch("SELECT * FROM settlement_debits ORDER BY debit_no")
            credits = await conn.fetch("SELECT * FROM settlement_credits ORDER BY credit_no")
            refs = [r["ref"] for r in await conn.fetch("SELECT ref FROM ledger_postings")]
            assert sorted(refs) == sorted({f"accrual:{DAY}", f"debits:{DAY}", f"credits:{DAY}"})
            for n in RIDERS:
                assert await ledger.balance(conn, "rider_receivable", token(n).hex()) == 0
            for operator in FEE_BP:
                assert await ledger.balance(conn, "operator_payable", operator) == 0
            assert sum((await ledger.trial_balance(conn)).values()) == 0
        finally:
            await conn.close()
        return debits, credits

    debits, credits = asyncio.run(instructed())
    assert {bytes(d["account_token"]): d["amount_fen"] for d in debits} == expected_debits()
    assert {c["operator_id"]: c["amount_fen"] for c in credits} == expected_credits()
    assert all(d["status"] == "instructed" for d in debits)

    # The bank's answer: two debits and one credit rejected, everything else settled.
    rejected_debits = {debits[0]["end_to_end_id"], debits[5]["end_to_end_id"]}
    rejected_credit = credits[0]["end_to_end_id"]
    items = [ReturnItem(d["end_to_end_id"], "rejected" if d["end_to_end_id"] in rejected_debits else "settled",
                        d["amount_fen"], "AM04" if d["end_to_end_id"] in rejected_debits else None, DAY)
             for d in debits]
    items += [ReturnItem(c["end_to_end_id"], "rejected" if c["end_to_end_id"] == rejected_credit else "settled",
                         c["amount_fen"], "AC04" if c["end_to_end_id"] == rejected_credit else None, DAY)
              for c in credits]
    csv_file = tmp_path / "returns.csv"
    csv_file.write_text(items_to_csv(items), encoding="utf-8")
    camt_file = tmp_path / "returns.xml"
    camt_file.write_text(build_camt054(items, message_id="RET-8", created_at=AFTER,
                                       account_number="1602000119000012345"), encoding="utf-8")
    for path in (csv_file, csv_file, camt_file):
        imported = tapgate(dsn, key_file, "import-returns", str(path))
        assert imported.returncode == 0, imported.stderr

    async def returned() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            assert await conn.fetchval("SELECT count(*) FROM settlement_returns") == len(items)
            assert await conn.fetchval("SELECT count(*) FROM ledger_postings WHERE kind = 'returns'") == 1
            by_id = {d["end_to_end_id"]: d for d in debits}
            for e2e in rejected_debits:
                # The rejected debit is owed again, once.
                subject = bytes(by_id[e2e]["account_token"]).hex()
                assert await ledger.balance(conn, "rider_receivable", subject) == by_id[e2e]["amount_fen"]
            rejected = next(c for c in credits if c["end_to_end_id"] == rejected_credit)
            # The rejected credit is owed to the operator again, once (payables are negative).
            assert await ledger.balance(conn, "operator_payable", rejected["operator_id"]) == -rejected["amount_fen"]
            settled_in = sum(d["amount_fen"] for d in debits if d["end_to_end_id"] not in rejected_debits)
            settled_out = sum(c["amount_fen"] for c in credits if c["end_to_end_id"] != rejected_credit)
            banks = await conn.fetch("SELECT subject, sum(amount_fen) AS total FROM ledger_lines "
                                     "WHERE account = 'bank' GROUP BY subject")
            assert sum(int(r["total"]) for r in banks) == settled_in - settled_out
            clearing = await conn.fetchval("SELECT coalesce(sum(amount_fen), 0) FROM ledger_lines "
                                           "WHERE account IN ('collections_clearing', 'payouts_clearing')")
            assert clearing == 0
            assert sum((await ledger.trial_balance(conn)).values()) == 0
            statuses = dict(await conn.fetch("SELECT end_to_end_id, status FROM settlement_debits"))
            assert {e for e, s in statuses.items() if s == "rejected"} == rejected_debits
        finally:
            await conn.close()

    asyncio.run(returned())
    print(f"\nSETTLE-SUMMARY kills={kills} debits={len(debits)} credits={len(credits)} "
          f"return_items={len(items)} imports=3")
