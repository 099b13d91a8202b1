"""What-if simulation: price journaled taps again under a draft rule set.

The taps of a period are read from the journal (table ``taps``) in holder and
time order, so each holder's transfers, caps and tap-off corrections replay as
they would have. The report compares, per operator and rider category, the
revenue (fares charged) and the subsidy (full fare minus fare) journaled with
what the draft would have produced.

The journal keeps the rider category a tap was priced with, not the
credential's entitlements. The simulation therefore rebuilds entitlements
from that category as the version in force defined it: an elderly category
with ``min_age`` 60 becomes a rider exactly 60 years old on the tap's date, a
disabled category a valid disability entitlement, and so on.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import sys
from typing import Any, Iterable

import asyncpg
import msgspec
from tqdm import tqdm

from gateway.rules.book import RuleBook
from gateway.rules.books import RuleBooks
from gateway.rules.compiled import (KIND_CHILD, KIND_DISABLED, KIND_ELDERLY, KIND_PRIORITY, KIND_STUDENT,
                                    CCategory)
from gateway.rules.localtime import epoch_day_to_date, local_day_and_minute
from gateway.rules.state import PricingRequest, RiderState
from gateway.timeutil import to_unix_ms

TAP_KIND_NAMES = ("board", "on", "off", "entry")
_FAR_FUTURE = dt.date(9999, 12, 31)


@dataclasses.dataclass(frozen=True)
class SimulatedEntitlements:
    birth_date: dt.date | None = None
    disability_until: dt.date | None = None
    priority_until: dt.date | None = None
    student_until: dt.date | None = None
    priority_group: int = 0


class SimulationRow(msgspec.Struct, kw_only=True):
    operator_id: str
    rider_category: str
    baseline_taps: int = 0
    draft_taps: int = 0
    baseline_revenue_fen: int = 0
    draft_revenue_fen: int = 0
    baseline_subsidy_fen: int = 0
    draft_subsidy_fen: int = 0

    @property
    def revenue_delta_fen(self) -> int:
        return self.draft_revenue_fen - self.baseline_revenue_fen

    @property
    def subsidy_delta_fen(self) -> int:
        return self.draft_subsidy_fen - self.baseline_subsidy_fen


class SimulationReport(msgspec.Struct, kw_only=True):
    first_day: dt.date
    last_day: dt.date
    draft_version: int
    taps_read: int
    # Taps the draft rejects that the journal accepted, and the other way round.
    newly_rejected: int
    newly_accepted: int
    rows: list[SimulationRow]

    def totals(self) -> SimulationRow:
        total = SimulationRow(operator_id="*", rider_category="*")
        for row in self.rows:
            total.baseline_taps += row.baseline_taps
            total.draft_taps += row.draft_taps
            total.baseline_revenue_fen += row.baseline_revenue_fen
            total.draft_revenue_fen += row.draft_revenue_fen
            total.baseline_subsidy_fen += row.baseline_subsidy_fen
            total.draft_subsidy_fen += row.draft_subsidy_fen
        return total

    def to_builtins(self) -> dict[str, Any]:
        plain = msgspec.to_builtins(self)
        for row, source in zip(plain["rows"], self.rows):
            row["revenue_delta_fen"] = source.revenue_delta_fen
            row["subsidy_delta_fen"] = source.subsidy_delta_fen
        totals = self.totals()
        plain["totals"] = msgspec.to_builtins(totals) | {"revenue_delta_fen": totals.revenue_delta_fen,
                                                         "subsidy_delta_fen": totals.subsidy_delta_fen}
        return plain


def _years_before(day: dt.date, years: int) -> dt.date:
    try:
        return day.replace(year=day.year - years)
    except ValueError:  # 29 February in a common year
        return day.replace(year=day.year - years, day=28)


def entitlements_for(category: CCategory | None, day: dt.date) -> SimulatedEntitlements | None:
    """Return entitlements that qualify for ``category`` on ``day`` (None for adults and unknowns)."""
    if category is None:
        return None
    kind = category.kind
    if kind == KIND_ELDERLY:
        return SimulatedEntitlements(birth_date=_years_before(day, category.min_age or 60))
    if kind == KIND_CHILD:
        return SimulatedEntitlements(birth_date=_years_before(day, category.max_age or 0))
    if kind == KIND_DISABLED:
        return SimulatedEntitlements(disability_until=_FAR_FUTURE)
    if kind == KIND_PRIORITY:
        group = min(category.groups) if category.groups else 1
        return SimulatedEntitlements(priority_until=_FAR_FUTURE, priority_group=group)
    if kind == KIND_STUDENT:
        return SimulatedEntitlements(student_until=_FAR_FUTURE)
    return None


_QUERY = """
SELECT holder_token, tap_time, operator_id, route_id, stop_id, site_id, tap_kind, medium, decision, reason,
       rider_category, fare_fen, full_fare_fen, adjustment_fen, full_fare_adjustment_fen, rule_set_version
FROM taps
WHERE business_day BETWEEN $1 AND $2 AND holder_token IS NOT NULL
  AND (decision = 1 OR reason BETWEEN 60 AND 79)
ORDER BY holder_token, tap_time, tap_id
"""


def _category_of(books: RuleBooks, version: int | None, category_id: str | None) -> CCategory | None:
    book = books.by_version(version) if version is not None else None
    if book is None or category_id is None:
        return None
    return next((c for c in book.categories if c.category_id == category_id), None)


async def simulate(conn: asyncpg.Connection, draft: RuleBook, first_day: dt.date, last_day: dt.date, *,
                   published: RuleBooks | None = None, progress: bool = True,
                   progress_file: Any = None) -> SimulationReport:
    """Price the journaled taps of business days ``first_day``..``last_day`` under ``draft``."""
    if published is None:
        from gateway.rules.store import load_books

        published = await load_books(conn)
    total = await conn.fetchval(
        "SELECT count(*) FROM taps WHERE business_day BETWEEN $1 AND $2 AND holder_token IS NOT NULL "
        "AND (decision = 1 OR reason BETWEEN 60 AND 79)", first_day, last_day)
    rows: dict[tuple[str, str], SimulationRow] = {}
    newly_rejected = newly_accepted = read = 0
    holder: bytes | None = None
    state: RiderState | None = None
    bar = tqdm(total=total, unit="tap", disable=not progress, file=progress_file or sys.stderr,
               desc="simulating / 模拟中")
    try:
        async with conn.transaction(readonly=True):
            async for tap in conn.cursor(_QUERY, first_day, last_day, prefetch=5000):
                read += 1
                bar.update(1)
                if tap["holder_token"] != holder:
                    holder, state = tap["holder_token"], None
                time_ms = to_unix_ms(tap["tap_time"])
                epoch_day, _ = local_day_and_minute(time_ms)
                category = _category_of(published, tap["rule_set_version"], tap["rider_category"])
                request = PricingRequest(
                    tap_time_ms=time_ms, tap_kind=TAP_KIND_NAMES[tap["tap_kind"]], medium=tap["medium"],
                    operator_id=tap["operator_id"], route_id=tap["route_id"], stop_id=tap["stop_id"],
                    site_id=tap["site_id"], holder_token=bytes(tap["holder_token"]),
                    entitlements=entitlements_for(category, epoch_day_to_date(epoch_day)))
                price, new_state = draft.price(request, state)
                baseline_accepted = tap["decision"] == 1
                if baseline_accepted:
                    # A tap-off's adjustments correct its tap-on's maximum fare, as in the draft below.
                    row = _row(rows, tap["operator_id"], tap["rider_category"] or "")
                    row.baseline_taps += 1
                    baseline_fare = tap["fare_fen"] + tap["adjustment_fen"]
                    baseline_full = tap["full_fare_fen"] + tap["full_fare_adjustment_fen"]
                    row.baseline_revenue_fen += baseline_fare
                    row.baseline_subsidy_fen += baseline_full - baseline_fare
                if price.reason == 0:
                    state = new_state
                    row = _row(rows, tap["operator_id"], price.rider_category or "")
                    row.draft_taps += 1
                    fare = price.fare_fen + price.adjustment_fen
                    full = price.full_fare_fen + price.full_fare_adjustment_fen
                    row.draft_revenue_fen += fare
                    row.draft_subsidy_fen += full - fare
                    newly_accepted += not baseline_accepted
                else:
                    newly_rejected += baseline_accepted
    finally:
        bar.close()
    ordered = [rows[key] for key in sorted(rows)]
    return SimulationReport(first_day=first_day, last_day=last_day, draft_version=draft.version, taps_read=read,
                            newly_rejected=newly_rejected, newly_accepted=newly_accepted, rows=ordered)


def _row(rows: dict[tuple[str, str], SimulationRow], operator_id: str, category: str) -> SimulationRow:
    key = (operator_id, category)
    row = rows.get(key)
    if row is None:
        row = rows[key] = SimulationRow(operator_id=operator_id, rider_category=category)
    return row


def format_report(report: SimulationReport) -> Iterable[str]:
    """Yield the report as a bilingual text table, amounts in yuan."""
    from gateway.rules.book import yuan

    def money(fen: int) -> str:
        sign = "-" if fen < 0 else ""
        return sign + yuan(abs(fen))

    yield (f"模拟期间 / period: {report.first_day} .. {report.last_day}   草稿版本 / draft version: "
           f"{report.draft_version}   交易 / taps read: {report.taps_read}")
    yield (f"新增拒绝 / newly rejected: {report.newly_rejected}   新增通过 / newly accepted: "
           f"{report.newly_accepted}")
    header = ("运营单位/operator", "类别/category", "笔数(原/新)/taps", "收入(原)/revenue", "收入(新)",
              "收入差/Δrevenue", "补贴(原)/subsidy", "补贴(新)", "补贴差/Δsubsidy")
    yield " | ".join(header)
    for row in [*report.rows, report.totals()]:
        yield " | ".join([
            row.operator_id, row.rider_category or "-", f"{row.baseline_taps}/{row.draft_taps}",
            money(row.baseline_revenue_fen), money(row.draft_revenue_fen), money(row.revenue_delta_fen),
            money(row.baseline_subsidy_fen), money(row.draft_subsidy_fen), money(row.subsidy_delta_fen)])
