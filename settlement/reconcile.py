"""Reconciliation of one settled day per operator: taps, amounts, returned, outstanding.

The rider side is attributed to operators through the day's fares per
account and operator. When a debit is settled, rejected or still pending,
the part of it that is this day's fares at an operator counts as collected,
returned or pending for that operator. Amounts a debit carried from earlier
days are reported in the day totals, not per operator.

Fares are net of county tap-off adjustments (``fare_fen + adjustment_fen``).
NOTE: an account whose net at an operator is negative for the day (a
tap-off settled after its tap-on's day) has no row in
settlement_account_fares, so its credit shows in the operator's fare_fen
but not in the rider-side columns.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import io

import asyncpg

CSV_HEADER = ["business_day", "operator_id", "taps", "free_rides", "discounted_rides", "fare_fen", "subsidy_fen",
              "fee_fen", "credit_fen", "credit_status", "collected_fen", "returned_fen", "pending_fen", "held_fen",
              "outstanding_fen"]


@dataclasses.dataclass(frozen=True)
class OperatorLine:
    business_day: dt.date
    operator_id: str
    taps: int
    free_rides: int
    discounted_rides: int
    fare_fen: int
    subsidy_fen: int
    fee_fen: int
    credit_fen: int
    credit_status: str
    collected_fen: int
    returned_fen: int
    pending_fen: int
    held_fen: int

    @property
    def outstanding_fen(self) -> int:
        return self.returned_fen + self.pending_fen + self.held_fen

    def as_row(self) -> list:
        return [self.business_day.isoformat(), self.operator_id, self.taps, self.free_rides, self.discounted_rides,
                self.fare_fen, self.subsidy_fen, self.fee_fen, self.credit_fen, self.credit_status,
                self.collected_fen, self.returned_fen, self.pending_fen, self.held_fen, self.outstanding_fen]


@dataclasses.dataclass
class DayTotals:
    debits: int = 0
    debit_fen: int = 0
    carried_fen: int = 0
    settled_fen: int = 0
    rejected_fen: int = 0
    pending_fen: int = 0
    held_fen: int = 0
    credits: int = 0
    credit_fen: int = 0


async def reconcile_day(conn: asyncpg.Connection, day: dt.date) -> tuple[list[OperatorLine], DayTotals]:
    rows = await conn.fetch("""
        WITH taps AS (
            SELECT operator_id, sum(taps)::bigint AS taps, sum(free_taps)::bigint AS free_rides,
                   sum(discounted_taps)::bigint AS discounted_rides, sum(fare_fen)::bigint AS fare_fen,
                   sum(subsidy_fen)::bigint AS subsidy_fen
            FROM settlement_category_totals WHERE business_day = $1 GROUP BY operator_id),
        riders AS (
            SELECT f.operator_id,
                   coalesce(sum(f.fare_fen) FILTER (WHERE d.status = 'settled'), 0)::bigint AS collected_fen,
                   coalesce(sum(f.fare_fen) FILTER (WHERE d.status = 'rejected'), 0)::bigint AS returned_fen,
                   coalesce(sum(f.fare_fen) FILTER (WHERE d.status = 'instructed'), 0)::bigint AS pending_fen,
                   coalesce(sum(f.fare_fen) FILTER (WHERE d.status = 'held' OR d.status IS NULL), 0)::bigint AS held_fen
            FROM settlement_account_fares f
            LEFT JOIN settlement_debits d ON d.business_day = f.business_day AND d.account_token = f.account_token
            WHERE f.business_day = $1 GROUP BY f.operator_id)
        SELECT t.operator_id, t.taps, t.free_rides, t.discounted_rides, t.fare_fen, t.subsidy_fen,
               coalesce(c.fee_fen, 0) AS fee_fen, coalesce(c.amount_fen, 0) AS credit_fen,
               coalesce(c.status, 'none') AS credit_status, coalesce(r.collected_fen, 0) AS collected_fen,
               coalesce(r.returned_fen, 0) AS returned_fen, coalesce(r.pending_fen, 0) AS pending_fen,
               coalesce(r.held_fen, 0) AS held_fen
        FROM taps t LEFT JOIN riders r USING (operator_id)
        LEFT JOIN settlement_credits c ON c.business_day = $1 AND c.operator_id = t.operator_id
        ORDER BY t.operator_id""", day)
    lines = [OperatorLine(day, r["operator_id"], r["taps"], r["free_rides"], r["discounted_rides"], r["fare_fen"],
                          r["subsidy_fen"], r["fee_fen"], r["credit_fen"], r["credit_status"], r["collected_fen"],
                          r["returned_fen"], r["pending_fen"], r["held_fen"]) for r in rows]
    totals_row = await conn.fetchrow("""
        SELECT count(*) FILTER (WHERE status <> 'held') AS debits,
               coalesce(sum(amount_fen) FILTER (WHERE status <> 'held'), 0)::bigint AS debit_fen,
               coalesce(sum(carried_fen), 0)::bigint AS carried_fen,
               coalesce(sum(amount_fen) FILTER (WHERE status = 'settled'), 0)::bigint AS settled_fen,
               coalesce(sum(amount_fen) FILTER (WHERE status = 'rejected'), 0)::bigint AS rejected_fen,
               coalesce(sum(amount_fen) FILTER (WHERE status = 'instructed'), 0)::bigint AS pending_fen,
               coalesce(sum(amount_fen) FILTER (WHERE status = 'held'), 0)::bigint AS held_fen
        FROM settlement_debits WHERE business_day = $1""", day)
    credits_row = await conn.fetchrow("""
        SELECT count(*) FILTER (WHERE status <> 'held') AS credits,
               coalesce(sum(amount_fen) FILTER (WHERE status <> 'held'), 0)::bigint AS credit_fen
        FROM settlement_credits WHERE business_day = $1""", day)
    totals = DayTotals(**dict(totals_row), **dict(credits_row))
    return lines, totals


def reconciliation_csv(lines: list[OperatorLine]) -> str:
    out = io.StringIO()
    table = csv.writer(out, lineterminator="\n")
    table.writerow(CSV_HEADER)
    for line in lines:
        table.writerow(line.as_row())
    return out.getvalue()
