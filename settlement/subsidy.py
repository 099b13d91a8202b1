"""Subsidy claims: free and discounted rides reimbursed to operators from public funds.

A claim covers one calendar month. Per operator and rider category it lists
the rides whose fare the rider category reduced (``category`` in the tap's
discount_kinds). For those it gives the count of free and of discounted rides,
their full-fare value, what riders paid, and the subsidy claimed
(``(full_fare_fen + full_fare_adjustment_fen) - (fare_fen + adjustment_fen)``,
so a county tap-off's adjustments correct its tap-on's maximum fare).
Reductions from transfers and fare caps are the operator's own and are not
claimed.

The figures come from closed business days only, so a ride uploaded late is
claimed in the month of the day that settled it, never twice.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import html
import io
import pathlib

import asyncpg

from settlement.errors import SettlementError
from settlement.isofiles import format_yuan

CSV_HEADER = ["month", "operator_id", "operator_name_zh", "operator_name_en", "rider_category", "free_rides",
              "discounted_rides", "rides", "full_fare_fen", "paid_fen", "subsidy_fen"]


@dataclasses.dataclass(frozen=True)
class ClaimLine:
    operator_id: str
    operator_name_zh: str
    operator_name_en: str
    rider_category: str
    free_rides: int
    discounted_rides: int
    full_fare_fen: int
    subsidy_fen: int

    @property
    def rides(self) -> int:
        return self.free_rides + self.discounted_rides

    @property
    def paid_fen(self) -> int:
        return self.full_fare_fen - self.subsidy_fen


@dataclasses.dataclass
class Claim:
    month: str
    lines: list[ClaimLine]
    closed_days: int
    days_in_month: int

    @property
    def complete(self) -> bool:
        return self.closed_days == self.days_in_month


def parse_month(text: str) -> tuple[dt.date, dt.date]:
    """Return the first day of month ``YYYY-MM`` and the first day of the next month."""
    try:
        first = dt.date.fromisoformat(text + "-01")
    except ValueError:
        raise SettlementError(f"invalid month {text!r}: expected YYYY-MM, for example 2026-11",
                              f"月份 {text!r} 无效：应为 YYYY-MM，例如 2026-11") from None
    following = (first.replace(day=28) + dt.timedelta(days=4)).replace(day=1)
    return first, following


async def build_claim(conn: asyncpg.Connection, month: str) -> Claim:
    first, following = parse_month(month)
    rows = await conn.fetch("""
        SELECT t.operator_id, o.name_zh, o.name_en, t.rider_category,
               sum(t.free_taps)::bigint AS free_rides, sum(t.discounted_taps)::bigint AS discounted_rides,
               sum(t.subsidy_full_fare_fen)::bigint AS full_fare_fen, sum(t.subsidy_fen)::bigint AS subsidy_fen
        FROM settlement_category_totals t JOIN operators o USING (operator_id)
        WHERE t.business_day >= $1 AND t.business_day < $2
        GROUP BY t.operator_id, o.name_zh, o.name_en, t.rider_category
        HAVING sum(t.free_taps) + sum(t.discounted_taps) > 0 OR sum(t.subsidy_fen) <> 0
        ORDER BY t.operator_id, t.rider_category""", first, following)
    closed = await conn.fetchval(
        "SELECT count(*) FROM settlement_days WHERE business_day >= $1 AND business_day < $2", first, following)
    lines = [ClaimLine(r["operator_id"], r["name_zh"], r["name_en"], r["rider_category"], r["free_rides"],
                       r["discounted_rides"], r["full_fare_fen"], r["subsidy_fen"]) for r in rows]
    return Claim(month, lines, closed, (following - first).days)


def claim_csv(claim: Claim) -> str:
    out = io.StringIO()
    table = csv.writer(out, lineterminator="\n")
    table.writerow(CSV_HEADER)
    for line in claim.lines:
        table.writerow([claim.month, line.operator_id, line.operator_name_zh, line.operator_name_en,
                        line.rider_category, line.free_rides, line.discounted_rides, line.rides,
                        line.full_fare_fen, line.paid_fen, line.subsidy_fen])
    return out.getvalue()


_STYLE = """
body { font-family: "Noto Sans CJK SC", "Source Han Sans SC", sans-serif; margin: 2em; color: #111; }
h1 { font-size: 1.4em; margin-bottom: 0.2em; }
h2 { font-size: 1.1em; margin-top: 1.6em; }
table { border-collapse: collapse; width: 100%; margin-top: 0.5em; }
th, td { border: 1px solid #444; padding: 4px 6px; font-size: 0.9em; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
tr.total td { font-weight: bold; }
.warn { color: #a00; font-weight: bold; }
.sign { margin-top: 3em; display: flex; justify-content: space-between; }
@media print { body { margin: 1cm; } h2 { page-break-after: avoid; } table { page-break-inside: auto; } }
"""


def claim_html(claim: Claim) -> str:
    """Return the claim as a self-contained printable HTML page, Chinese with English beside it."""
    esc = html.escape
    parts = ['<!DOCTYPE html>', '<html lang="zh-CN"><head><meta charset="utf-8">',
             f"<title>{esc(claim.month)} 优惠乘车补贴申领表 / Subsidy claim</title>",
             f"<style>{_STYLE}</style></head><body>",
             f"<h1>沂源县公共交通及场馆优惠补贴申领表（{esc(claim.month)}）</h1>",
             f"<p>Subsidy claim for free and discounted rides, Yiyuan County, {esc(claim.month)}</p>",
             f"<p>已日结营业日 / closed business days: {claim.closed_days} / {claim.days_in_month}</p>"]

    if not claim.complete:
        parts.append('<p class="warn">本月尚有营业日未日结，数字不完整 / '
                     "some days of this month are not closed yet; the figures are incomplete</p>")
    header = ("<tr><th>乘客类别<br>Rider category</th><th>免费次数<br>Free rides</th>"
              "<th>优惠次数<br>Discounted rides</th><th>全价金额（元）<br>Full fare (CNY)</th>"
              "<th>乘客实付（元）<br>Paid by riders (CNY)</th><th>申领补贴（元）<br>Subsidy claimed (CNY)</th></tr>")

    by_operator: dict[str, list[ClaimLine]] = {}
    for line in claim.lines:
        by_operator.setdefault(line.operator_id, []).append(line)
    grand = 0
    for operator_id, lines in by_operator.items():
        parts.append(f"<h2>{esc(lines[0].operator_name_zh)} / {esc(lines[0].operator_name_en)} "
                     f"（{esc(operator_id)}）</h2><table>{header}")
        for line in lines:
            parts.append(_row(esc(line.rider_category or "—"), line.free_rides, line.discounted_rides,
                              line.full_fare_fen, line.paid_fen, line.subsidy_fen))
        total = sum(line.subsidy_fen for line in lines)
        grand += total
        parts.append(_row("合计 / Total", sum(l.free_rides for l in lines), sum(l.discounted_rides for l in lines),
                          sum(l.full_fare_fen for l in lines), sum(l.paid_fen for l in lines), total, "total"))
        parts.append("</table>")

    if not by_operator:
        parts.append("<p>本月无优惠乘车 / no free or discounted rides this month</p>")
    parts.append(f"<h2>申领总额 / Total claimed: {format_yuan(grand)} 元 CNY</h2>")
    parts.append('<div class="sign"><span>经办人 / Prepared by：________</span>'
                 "<span>审核人 / Checked by：________</span><span>财政局 / Finance bureau：________</span></div>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _row(label: str, free: int, discounted: int, full: int, paid: int, subsidy: int, css: str = "") -> str:
    cls = f' class="{css}"' if css else ""
    return (f"<tr{cls}><td>{label}</td><td class=\"n\">{free}</td><td class=\"n\">{discounted}</td>"
            f"<td class=\"n\">{format_yuan(full)}</td><td class=\"n\">{format_yuan(paid)}</td>"
            f"<td class=\"n\">{format_yuan(subsidy)}</td></tr>")


def write_claim(claim: Claim, output_dir: pathlib.Path) -> list[pathlib.Path]:
    folder = output_dir / "subsidy"
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"subsidy_{claim.month}.csv", folder / f"subsidy_{claim.month}.html"]
    paths[0].write_text(claim_csv(claim), encoding="utf-8")
    paths[1].write_text(claim_html(claim), encoding="utf-8")
    return paths
