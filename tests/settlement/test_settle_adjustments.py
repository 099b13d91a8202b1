"""County-line tap-offs: their adjustments reduce debits, operator payables and subsidies."""

from __future__ import annotations

import datetime as dt
import random

from gateway import timeutil
from settlement import days, ledger, run, subsidy

from .conftest import DAY, Journal, seed, token

CUTOFF = dt.time(0, 0)
AFTER = dt.datetime(2027, 1, 1, tzinfo=timeutil.UTC)
# Adult county trip: 6.00 yuan charged at the tap-on, the real trip costs 4.00.
TAP_ON = {"kind": 1, "fare": 600, "full_fare": 600}
TAP_OFF = {"kind": 2, "fare": 0, "full_fare": 0, "adjustment": -200, "full_fare_adjustment": -200}


def at(day: dt.date, hour: int, minute: int = 0) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(hour, minute), tzinfo=timeutil.LOCAL_TZ)


async def _settle(conn, cipher, tmp_path, *closing: dt.date) -> None:
    for day in closing:
        await days.close_day(conn, day, CUTOFF, now=AFTER)
        await run.run_day(conn, day, cipher, tmp_path)


async def _debits(conn, day: dt.date) -> dict[bytes, tuple[int, int, int]]:
    rows = await conn.fetch("SELECT account_token, day_fen, carried_fen, amount_fen FROM settlement_debits "
                            "WHERE business_day = $1", day)
    return {bytes(r["account_token"]): (r["day_fen"], r["carried_fen"], r["amount_fen"]) for r in rows}


async def _receivable(conn, account: bytes) -> int:
    return await conn.fetchval("SELECT coalesce(sum(amount_fen), 0)::bigint FROM ledger_lines "
                               "WHERE account = 'rider_receivable' AND subject = $1", account.hex())


async def test_tap_off_debits_trip_fare(conn, cipher, tmp_path):
    await seed(conn, cipher)
    journal = Journal(conn)
    await journal.commit([{"account": token(1), "tap_time": at(DAY, 8), **TAP_ON},
                          {"account": token(2), "tap_time": at(DAY, 8), **TAP_ON}])
    # Rider 1 taps off; rider 2 never does, so the maximum fare remains charged.
    await journal.commit([{"account": token(1), "tap_time": at(DAY, 8, 40), **TAP_OFF}])
    await _settle(conn, cipher, tmp_path, DAY)

    assert await _debits(conn, DAY) == {token(1): (400, 0, 400), token(2): (600, 0, 600)}
    fares = await conn.fetch("SELECT account_token, fare_fen FROM settlement_account_fares ORDER BY fare_fen")
    assert [(bytes(r["account_token"]), r["fare_fen"]) for r in fares] == [(token(1), 400), (token(2), 600)]
    credit = await conn.fetchrow("SELECT fare_fen, fee_fen, amount_fen FROM settlement_credits "
                                 "WHERE operator_id = 'bus1'")
    # bus1's fee is 50 basis points of the net fares: 1000 fen * 0.5 % = 5 fen.
    assert tuple(credit) == (1000, 5, 995)


async def test_tap_off_next_day_reduces_next_debit(conn, cipher, tmp_path):
    await seed(conn, cipher)
    journal = Journal(conn)
    second = DAY + dt.timedelta(days=1)
    await journal.commit([{"account": token(1), "tap_time": at(DAY, 23, 50), **TAP_ON}])
    await journal.commit([{"account": token(1), "tap_time": at(second, 0, 20), **TAP_OFF},
                          {"account": token(1), "tap_time": at(second, 9), "fare": 300}])
    await _settle(conn, cipher, tmp_path, DAY, second)

    assert await _debits(conn, DAY) == {token(1): (600, 0, 600)}
    assert await _debits(conn, second) == {token(1): (100, 0, 100)}
    credit = await conn.fetchval("SELECT fare_fen FROM settlement_credits WHERE business_day = $1", second)
    assert credit == 100


async def test_negative_day_carried_as_credit(conn, cipher, tmp_path):
    await seed(conn, cipher)
    journal = Journal(conn)
    closing = [DAY + dt.timedelta(days=n) for n in range(4)]
    await journal.commit([{"account": token(2), "tap_time": at(closing[0], 23, 50), **TAP_ON},
                          {"account": token(3), "tap_time": at(closing[0], 10), "fare": 500}])
    # Day 2 holds only rider 2's tap-off: a net of -400, which is no debit but a credit balance.
    await journal.commit([{"account": token(2), "tap_time": at(closing[1], 0, 30),
                           **{**TAP_OFF, "adjustment": -400, "full_fare_adjustment": -400}},
                          {"account": token(3), "tap_time": at(closing[1], 10), "fare": 500}])
    await journal.commit([{"account": token(2), "tap_time": at(closing[2], 9), "fare": 200}])
    await journal.commit([{"account": token(2), "tap_time": at(closing[3], 9), "fare": 300}])
    await _settle(conn, cipher, tmp_path, *closing)

    assert token(2) not in await _debits(conn, closing[1])
    assert token(2) not in await _debits(conn, closing[2])
    assert await _receivable(conn, token(2)) == 0
    # Day 4: 300 fen of fares less the 200 fen of credit left after day 3.
    assert (await _debits(conn, closing[3]))[token(2)] == (300, -200, 100)

    # The operator's payable on day 2 is its net fares: 500 - 400.
    credit = await conn.fetchrow("SELECT fare_fen, fee_fen FROM settlement_credits WHERE business_day = $1",
                                 closing[1])
    assert tuple(credit) == (100, 1)
    assert sum((await ledger.trial_balance(conn)).values()) == 0
    debited = await conn.fetchval("SELECT sum(amount_fen)::bigint FROM settlement_debits "
                                  "WHERE account_token = $1", token(2))
    assert debited == 600 - 400 + 200 + 300


async def test_subsidy_uses_adjustments(conn, cipher, tmp_path):
    await seed(conn, cipher)
    journal = Journal(conn)
    senior = {"category": "senior", "discounts": ["category"]}
    await journal.commit([
        # Half fare: 3.00 of 6.00 at the tap-on; the trip is 2.00 of 4.00.
        {"account": token(1), "tap_time": at(DAY, 8), **senior, "kind": 1, "fare": 300, "full_fare": 600},
        {"account": token(1), "tap_time": at(DAY, 8, 30), **senior, "kind": 2, "fare": 0, "full_fare": 0,
         "adjustment": -100, "full_fare_adjustment": -200},
        # Free: 0 of 6.00 at the tap-on; the trip's full fare is 4.00.
        {"account": token(2), "tap_time": at(DAY, 9), **senior, "kind": 1, "fare": 0, "full_fare": 600},
        {"account": token(2), "tap_time": at(DAY, 9, 30), **senior, "kind": 2, "fare": 0, "full_fare": 0,
         "full_fare_adjustment": -200},
    ])
    await _settle(conn, cipher, tmp_path, DAY)

    totals = await conn.fetchrow("SELECT * FROM settlement_category_totals WHERE rider_category = 'senior'")
    assert totals["taps"] == 4
    assert (totals["free_taps"], totals["discounted_taps"]) == (1, 1)
    assert (totals["fare_fen"], totals["full_fare_fen"]) == (200, 800)
    assert (totals["subsidy_full_fare_fen"], totals["subsidy_fen"]) == (800, 600)

    claim = await subsidy.build_claim(conn, DAY.strftime("%Y-%m"))
    [line] = claim.lines
    assert (line.free_rides, line.discounted_rides, line.full_fare_fen, line.subsidy_fen) == (1, 1, 800, 600)
    posted = await conn.fetchval("SELECT sum(amount_fen)::bigint FROM ledger_lines "
                                 "WHERE account = 'subsidy_receivable'")
    assert posted == 600


async def test_random_tap_offs_settle_net_fares(conn, cipher, tmp_path):
    # Per account, what was debited plus what is still receivable equals the
    # net fares of its taps; per operator, credits plus fees plus what is
    # still payable equal its net fares. Some tap-offs cross midnight.
    seed_value = 20261205
    rng = random.Random(seed_value)
    await seed(conn, cipher, riders=range(1, 13))
    journal = Journal(conn)
    closing = [DAY + dt.timedelta(days=n) for n in range(4)]
    carried_offs: list[dict] = []
    crossed = 0
    for index, day in enumerate(closing):
        taps, later = list(carried_offs), []
        for _ in range(rng.randint(5, 12)):
            account = token(rng.randint(1, 12))
            last_day = index == len(closing) - 1
            on_time = at(day, rng.randrange(6, 22 if last_day else 24), rng.randrange(60))
            taps.append({"account": account, "tap_time": on_time, "operator": rng.choice(["bus1", "museum"]),
                         **TAP_ON})
            if rng.random() < 0.25:
                continue  # No tap-off: the maximum fare remains charged.
            off_time = on_time + dt.timedelta(minutes=rng.randrange(10, 90))
            credit = -rng.randrange(0, 500, 50)
            off = {"account": account, "tap_time": off_time, "operator": taps[-1]["operator"], **TAP_OFF,
                   "adjustment": credit, "full_fare_adjustment": credit}
            if timeutil.business_day(off_time) > day:
                later.append(off)
                crossed += 1
            else:
                taps.append(off)
        carried_offs = later
        await journal.commit(taps)
        await days.close_day(conn, day, CUTOFF, now=AFTER)
        await run.run_day(conn, day, cipher, tmp_path)
    assert not carried_offs, f"seed {seed_value}: a tap-off was left after the last day"

    assert crossed > 0, f"seed {seed_value} produced no tap-off after midnight"

    nets = await conn.fetch("SELECT account_token, sum(fare_fen + adjustment_fen)::bigint AS net FROM taps "
                            "WHERE decision = 1 GROUP BY account_token")
    for row in nets:
        account = bytes(row["account_token"])
        debited = await conn.fetchval("SELECT coalesce(sum(amount_fen), 0)::bigint FROM settlement_debits "
                                      "WHERE account_token = $1 AND status = 'instructed'", account)
        assert debited + await _receivable(conn, account) == row["net"], f"seed {seed_value}, {account.hex()}"

    operators = await conn.fetch("SELECT operator_id, sum(fare_fen + adjustment_fen)::bigint AS net FROM taps "
                                 "WHERE decision = 1 GROUP BY operator_id")
    for row in operators:
        paid, fees = await conn.fetchrow(
            "SELECT coalesce(sum(c.amount_fen), 0)::bigint, "
            "(SELECT -coalesce(sum(amount_fen), 0)::bigint FROM ledger_lines "
            " WHERE account = 'fee_income' AND subject = $1) FROM settlement_credits c "
            "WHERE c.operator_id = $1 AND c.status = 'instructed'", row["operator_id"])
        payable = await conn.fetchval("SELECT -coalesce(sum(amount_fen), 0)::bigint FROM ledger_lines "
                                      "WHERE account = 'operator_payable' AND subject = $1", row["operator_id"])
        assert paid + fees + payable == row["net"], f"seed {seed_value}, {row['operator_id']}"
    assert sum((await ledger.trial_balance(conn)).values()) == 0
