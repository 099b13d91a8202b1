"""Invariants over many days with late uploads: each fare in one debit, batches balance, ledger balances."""

from __future__ import annotations

import datetime as dt
import random

from gateway import timeutil
from settlement import days, ledger, run

from .conftest import DAY, Journal, seed, token

CUTOFF = dt.time(2, 0)
AFTER = dt.datetime(2027, 1, 1, tzinfo=timeutil.UTC)
SEED = 20261204


async def _random_journal(conn, cipher, rng: random.Random, riders: range = range(1, 30)) -> list[dt.date]:
    """Commit taps over four days, closing each day while later taps (some for closed days) keep coming.

    Accounts 30 to 35 have no bank account unless ``riders`` includes them, so their debits are held.
    """
    await seed(conn, cipher, riders=riders)
    journal = Journal(conn)
    closing = [DAY + dt.timedelta(days=n) for n in range(4)]
    for index, day in enumerate(closing):
        for _ in range(6):
            taps = []
            for _ in range(rng.randint(1, 8)):
                # Mostly today's taps; some offline uploads for a day closed earlier.
                tap_day = day if rng.random() < 0.8 or index == 0 else closing[rng.randrange(index)]
                local = dt.datetime.combine(tap_day, dt.time(rng.randrange(24), rng.randrange(60)),
                                            tzinfo=timeutil.LOCAL_TZ)
                fare = rng.choice([0, 100, 150, 200, 350])
                taps.append({"account": token(rng.randint(1, 35)), "tap_time": local, "fare": fare,
                             "full_fare": max(fare, 200), "operator": rng.choice(["bus1", "museum"]),
                             "decision": 1 if rng.random() < 0.9 else 0,
                             "discounts": ["category"] if fare < 200 else [], "category": "senior"})
            await journal.commit(taps)
        await days.close_day(conn, day, CUTOFF, now=AFTER)
    return closing


async def test_each_fare_in_exactly_one_debit(conn, cipher, tmp_path):
    closing = await _random_journal(conn, cipher, random.Random(SEED))
    for day in closing:
        await run.run_day(conn, day, cipher, tmp_path)

    membership: dict[int, list[dt.date]] = {}
    day_fares: dict[tuple[dt.date, bytes], int] = {}
    for day in closing:
        closed = await days.get_closed_day(conn, day)
        rows = await conn.fetch(days.day_taps_sql("tap_id, account_token, fare_fen, decision"), *days.day_params(closed))
        for row in rows:
            membership.setdefault(row["tap_id"], []).append(day)
            if row["decision"] == 1 and row["fare_fen"] > 0:
                key = (day, bytes(row["account_token"]))
                day_fares[key] = day_fares.get(key, 0) + row["fare_fen"]

    taps = await conn.fetch("SELECT tap_id, decision, fare_fen FROM taps")
    payable = [t for t in taps if t["decision"] == 1 and t["fare_fen"] > 0]
    assert payable, f"seed {SEED} produced no payable taps"
    for tap in payable:
        assert len(membership.get(tap["tap_id"], [])) == 1, f"tap {tap['tap_id']} settled by {membership.get(tap['tap_id'])}"

    debits = await conn.fetch("SELECT business_day, account_token, day_fen FROM settlement_debits WHERE day_fen > 0")
    assert {(d["business_day"], bytes(d["account_token"])): d["day_fen"] for d in debits} == day_fares


async def test_batch_debits_equal_credits_plus_fees(conn, cipher, tmp_path):
    closing = await _random_journal(conn, cipher, random.Random(SEED + 1), riders=range(1, 36))
    for day in closing:
        await run.run_day(conn, day, cipher, tmp_path)
        debit_fen = await conn.fetchval(
            "SELECT coalesce(sum(amount_fen), 0)::bigint FROM settlement_debits WHERE business_day = $1", day)
        credit_fen, fee_fen = await conn.fetchrow(
            "SELECT coalesce(sum(amount_fen), 0)::bigint, coalesce(sum(fee_fen), 0)::bigint "
            "FROM settlement_credits WHERE business_day = $1", day)
        assert debit_fen == credit_fen + fee_fen, day
        fares = await conn.fetchval("SELECT coalesce(sum(fare_fen), 0)::bigint FROM settlement_account_fares "
                                    "WHERE business_day = $1", day)
        assert debit_fen == fares, day


async def test_batch_day_fares_split_with_held_debits(conn, cipher, tmp_path):
    closing = await _random_journal(conn, cipher, random.Random(SEED + 3))
    for day in closing:
        await run.run_day(conn, day, cipher, tmp_path)
        day_fen, carried_fen = await conn.fetchrow(
            "SELECT coalesce(sum(day_fen), 0)::bigint, coalesce(sum(carried_fen), 0)::bigint "
            "FROM settlement_debits WHERE business_day = $1", day)
        fare_fen, fee_fen, credit_fen = await conn.fetchrow(
            "SELECT coalesce(sum(fare_fen), 0)::bigint, coalesce(sum(fee_fen), 0)::bigint, "
            "coalesce(sum(amount_fen - carried_fen), 0)::bigint FROM settlement_credits WHERE business_day = $1", day)
        assert day_fen == fare_fen == credit_fen + fee_fen, day
    held = await conn.fetchval("SELECT count(*) FROM settlement_debits WHERE status = 'held'")
    assert held > 0, "the held-debit case was not exercised"
    # Held amounts stay receivable and are carried, never lost.
    receivable = await conn.fetchval("SELECT coalesce(sum(amount_fen), 0)::bigint FROM ledger_lines "
                                     "WHERE account = 'rider_receivable'")
    last_held = await conn.fetchval("SELECT coalesce(sum(amount_fen), 0)::bigint FROM settlement_debits "
                                    "WHERE business_day = $1 AND status = 'held'", closing[-1])
    assert receivable == last_held


async def test_ledger_balances_per_posting(conn, cipher, tmp_path):
    closing = await _random_journal(conn, cipher, random.Random(SEED + 2), riders=range(1, 36))
    for day in closing:
        await run.run_day(conn, day, cipher, tmp_path)
    assert sum((await ledger.trial_balance(conn)).values()) == 0
    unbalanced = await conn.fetch("SELECT posting_id FROM ledger_lines GROUP BY posting_id HAVING sum(amount_fen) <> 0")
    assert unbalanced == []
    # Everything receivable was instructed (all riders have accounts): no receivable balance is left.
    left = await conn.fetchval("SELECT coalesce(sum(amount_fen), 0)::bigint FROM ledger_lines "
                               "WHERE account = 'rider_receivable'")
    assert left == 0
