"""Business days: closing a day fixes the set of taps it settles.

Closing day D records the journal's high-water mark H_D, the largest
``journal_batches.batch_id`` committed at that moment. Batch ids are assigned
in commit order, so every tap committed later has a larger batch id. Day D
settles the taps with ``business_day <= D and batch_id <= H_D`` that the
previous closed day P did not settle (``business_day <= P and batch_id <= H_P``).
Days close in order and H never decreases, so these sets are nested and the
differences are disjoint: each tap is settled by exactly one day, and a tap
uploaded after its own day closed is settled by the next day closed after its
commit.

A rider's charge for a tap is ``fare_fen + adjustment_fen``. The adjustment
(zero or negative) is carried by a county-line tap-off and corrects the
maximum fare charged at its tap-on. When the tap-off falls in a later
business day than its tap-on (after midnight, or uploaded late), that later
day's net charge for the account is reduced and can be negative.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging

import asyncpg

from gateway import timeutil
from gateway.logs import log_event
from settlement.errors import SettlementError

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ClosedDay:
    business_day: dt.date
    high_water_batch: int
    prev_day: dt.date | None
    prev_high_water_batch: int
    closed_at: dt.datetime

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> "ClosedDay":
        return cls(row["business_day"], row["high_water_batch"], row["prev_day"],
                   row["prev_high_water_batch"], row["closed_at"])


def day_taps_sql(columns: str, *, first_param: int = 1) -> str:
    """Return SQL selecting ``columns`` of the taps settled by one closed day.

    The statement takes four parameters starting at ``$first_param``: the day,
    its high-water batch, the previous closed day (NULL for the first) and the
    previous high-water batch. The two branches let PostgreSQL prune the daily
    partitions in the first and use the batch index in the second.
    """
    d, h, p, hp = (f"${first_param + i}" for i in range(4))
    return f"""
        SELECT {columns} FROM taps
        WHERE business_day <= {d}::date AND ({p}::date IS NULL OR business_day > {p}::date)
          AND batch_id <= {h}::bigint
        UNION ALL
        SELECT {columns} FROM taps
        WHERE {p}::date IS NOT NULL AND business_day <= {p}::date
          AND batch_id > {hp}::bigint AND batch_id <= {h}::bigint"""


def day_net_fares_sql(*, first_param: int = 1) -> str:
    """Return SQL of the net charge per (account_token, operator_id) of the taps settled by one closed day.

    Columns: account_token, operator_id, taps (accepted taps with a fare or
    an adjustment) and net_fen, the sum of ``fare_fen + adjustment_fen``,
    which is negative when tap-off credits outweigh the day's fares. Taps
    without an account token are left out. Parameters as in
    :func:`day_taps_sql`.
    """
    columns = "account_token, operator_id, fare_fen, adjustment_fen, decision"
    return f"""
        SELECT account_token, operator_id, count(*) AS taps, sum(fare_fen + adjustment_fen)::bigint AS net_fen
        FROM ({day_taps_sql(columns, first_param=first_param)}) t
        WHERE decision = 1 AND account_token IS NOT NULL AND (fare_fen > 0 OR adjustment_fen < 0)
        GROUP BY account_token, operator_id"""


def day_params(day: ClosedDay) -> tuple:
    return (day.business_day, day.high_water_batch, day.prev_day, day.prev_high_water_batch)


async def get_closed_day(conn: asyncpg.Connection, day: dt.date) -> ClosedDay | None:
    row = await conn.fetchrow("SELECT * FROM settlement_days WHERE business_day = $1", day)
    return ClosedDay.from_row(row) if row else None


async def require_closed_day(conn: asyncpg.Connection, day: dt.date) -> ClosedDay:
    closed = await get_closed_day(conn, day)
    if closed is None:
        raise SettlementError(
            f"business day {day} is not closed",
            f"营业日 {day} 尚未日结",
            f"run `tapgate settle close-day {day}` first / 请先运行 `tapgate settle close-day {day}`")
    return closed


def open_day_for(moment: dt.datetime, cutoff: dt.time) -> dt.date:
    """Return the business day that ``moment`` falls in (local time, with the cut-off)."""
    return timeutil.business_day(moment, cutoff)


async def close_day(conn: asyncpg.Connection, day: dt.date, cutoff: dt.time, *,
                    now: dt.datetime | None = None, force: bool = False) -> list[ClosedDay]:
    """Close ``day`` and every earlier unclosed day after the last closed one.

    Return the days closed now, oldest first; an empty list when ``day`` was
    already closed. A day can close only after its end (local time with the
    cut-off) unless ``force`` is set. Aggregates of each day's taps are
    written in the same transaction, so a closed day's figures never change.
    """
    now = now or dt.datetime.now(timeutil.UTC)
    async with conn.transaction():
        # Closings serialise here: no two can pick overlapping tap sets.
        await conn.execute("LOCK TABLE settlement_days IN SHARE ROW EXCLUSIVE MODE")
        if await get_closed_day(conn, day):
            return []
        last = await conn.fetchrow("SELECT * FROM settlement_days ORDER BY business_day DESC LIMIT 1")
        if last and last["business_day"] > day:
            raise SettlementError(
                f"business day {day} is before the last closed day {last['business_day']}; "
                "days close in order, and its late taps are settled by the next day closed",
                f"营业日 {day} 早于最近已日结的 {last['business_day']}；营业日须按顺序日结，迟到的交易计入下一个日结日",
                "close a later day instead / 请日结更晚的营业日")
        _, end = timeutil.day_bounds(day, cutoff)
        if now < end and not force:
            raise SettlementError(
                f"business day {day} has not ended yet: it ends at {end.astimezone(timeutil.LOCAL_TZ):%Y-%m-%d %H:%M} local time",
                f"营业日 {day} 尚未结束：结束于北京时间 {end.astimezone(timeutil.LOCAL_TZ):%Y-%m-%d %H:%M}",
                "wait for the cut-off, or pass --force / 请等到切日时间之后，或使用 --force")
        high_water = await conn.fetchval("SELECT coalesce(max(batch_id), 0) FROM journal_batches")

        days = [day]
        if last is not None:
            days = [last["business_day"] + dt.timedelta(days=n)
                    for n in range(1, (day - last["business_day"]).days + 1)]
        prev_day = last["business_day"] if last else None
        prev_high = last["high_water_batch"] if last else 0
        closed: list[ClosedDay] = []
        for current in days:
            row = await conn.fetchrow(
                """INSERT INTO settlement_days (business_day, high_water_batch, prev_day, prev_high_water_batch)
                   VALUES ($1, $2, $3, $4) RETURNING *""", current, high_water, prev_day, prev_high)
            closed_day = ClosedDay.from_row(row)
            await _aggregate(conn, closed_day)
            closed.append(closed_day)
            prev_day, prev_high = current, high_water
    for closed_day in closed:
        log_event(log, logging.INFO, "settlement.day_closed", day=closed_day.business_day,
                  high_water_batch=closed_day.high_water_batch)
    return closed


async def _aggregate(conn: asyncpg.Connection, day: ClosedDay) -> None:
    params = day_params(day)
    # settlement_account_fares accepts only positive amounts, so an account and
    # operator whose tap-off credits outweigh the day's fares has no row here.
    # The accrual posting reads every net, negative ones included, from the
    # journal (settlement.run).
    await conn.execute(f"""
        INSERT INTO settlement_account_fares (business_day, account_token, operator_id, taps, fare_fen)
        SELECT $1, account_token, operator_id, taps, net_fen
        FROM ({day_net_fares_sql()}) n
        WHERE net_fen > 0""", *params)

    # A free or discounted ride is one whose fare the rider category reduced.
    # A tap-off carries the category kind of its trip and corrects the
    # tap-on's fare and full fare, so its adjustments count with the tap-on
    # (its own fare_fen and full_fare_fen are 0). It is not a ride of its own.
    columns = ("operator_id, fare_fen, full_fare_fen, adjustment_fen, full_fare_adjustment_fen, rider_category, "
               "discount_kinds, decision, tap_kind")
    reduced = "'category' = ANY(discount_kinds) AND (tap_kind = 2 OR fare_fen < full_fare_fen)"
    ride = "tap_kind <> 2"
    await conn.execute(f"""
        INSERT INTO settlement_category_totals (business_day, operator_id, rider_category, taps, free_taps,
            discounted_taps, fare_fen, full_fare_fen, subsidy_full_fare_fen, subsidy_fen)
        SELECT $1, operator_id, coalesce(rider_category, ''), count(*),
               count(*) FILTER (WHERE {reduced} AND {ride} AND fare_fen = 0),
               count(*) FILTER (WHERE {reduced} AND {ride} AND fare_fen > 0),
               sum(fare_fen + adjustment_fen), sum(full_fare_fen + full_fare_adjustment_fen),
               coalesce(sum(full_fare_fen + full_fare_adjustment_fen) FILTER (WHERE {reduced}), 0),
               coalesce(sum((full_fare_fen + full_fare_adjustment_fen) - (fare_fen + adjustment_fen))
                        FILTER (WHERE {reduced}), 0)
        FROM ({day_taps_sql(columns)}) t
        WHERE decision = 1
        GROUP BY operator_id, coalesce(rider_category, '')""", *params)

    missing = await conn.fetchval(f"""
        SELECT count(*) FROM ({day_taps_sql("account_token, fare_fen, adjustment_fen, decision")}) t
        WHERE decision = 1 AND (fare_fen > 0 OR adjustment_fen < 0) AND account_token IS NULL""", *params)
    if missing:
        # TODO: accepted fares without an account token cannot be collected; they are counted here only.
        log_event(log, logging.WARNING, "settlement.fares_without_account", day=day.business_day, taps=missing)
