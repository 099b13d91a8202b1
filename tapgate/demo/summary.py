"""The figures of a demo day, gathered once for the printed summary, summary.json and the HTML report."""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import unicodedata
from typing import Any

from gateway.reasons import Reason
from settlement.isofiles import format_yuan
from tapgate.demo import plan as p
from tapgate.demo.checks import Check
from tapgate.demo.dayend import DayEnd
from tapgate.demo.drive import DriveResult
from tapgate.demo.services import GatewayMetrics
from tapgate.demo.world import World

# Display names of the demo's rider categories and of the rule set's categories.
CATEGORY_NAMES = {
    "adult": ("成人", "adult"), "elderly-60-64": ("老年人 60–64 岁", "elderly 60–64"),
    "elderly-65+": ("老年人 65 岁及以上", "elderly 65+"), "disabled": ("残疾人", "disabled"),
    "priority": ("优抚对象", "priority group"), "student": ("学生", "student"), "child": ("儿童", "child"),
    "senior-60": ("老年人 60–64 岁", "senior 60–64"), "senior-65": ("老年人 65 岁及以上", "senior 65+"),
    "senior-65-visit": ("老年人 65 岁及以上（景区）", "senior 65+ (scenic)"),
}


def percentile(values: list[float], fraction: float) -> float:
    """Return the ``fraction`` quantile of ``values`` (nearest rank), 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, int(round(fraction * len(ordered) + 0.5)) - 1))
    return ordered[rank]


def _columns(text: str) -> int:
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def pad(text: str, width: int) -> str:
    """Pad ``text`` on the right to ``width`` terminal columns, counting a Chinese character as two."""
    return text + " " * max(0, width - _columns(text))


def rpad(text: str, width: int) -> str:
    """Pad ``text`` on the left to ``width`` terminal columns, counting a Chinese character as two."""
    return " " * max(0, width - _columns(text)) + text


def category_name(category: str | None) -> str:
    zh, en = CATEGORY_NAMES.get(category or "", (category or "-", category or "-"))
    return f"{zh} / {en}"


@dataclasses.dataclass
class Summary:
    day: dt.date
    seed: int
    holders: int
    holders_by_category: dict[str, int]
    devices: int
    workers: int
    taps: int
    requests: int
    retries: int
    offline_taps: int
    offline_batches: int
    duration_s: float
    taps_per_s: float
    latency_p50_ms: float
    latency_p99_ms: float
    latency_max_ms: float
    # (decision, reason code, reason name) -> taps; HTTP refusals have decision "http_<status>".
    decisions: list[tuple[str, int, str, int]]
    taps_by_kind: dict[str, int]
    # Planned taps by tap kind: board (flat fare), on and off (county lines), entry (sites).
    taps_by_tap_kind: dict[str, int]
    taps_by_hour: dict[str, list[int]]
    revenue: list[dict[str, Any]]
    subsidies: list[dict[str, Any]]
    settlement: dict[str, Any]
    bank_files: list[str]
    claim_files: list[str]
    chain: dict[str, int | bool]
    checks: list[Check]
    # From the gateway's /metrics: server-side latency bucket bounds and the credential cache.
    server_p50_ms: float | None = None
    server_p99_ms: float | None = None
    cache_hit_rate: float | None = None
    # Accepted taps reduced by each kind of discount (category, transfer, cap), from the journal.
    discounts: dict[str, int] = dataclasses.field(default_factory=dict)
    total_s: float = 0.0

    @property
    def ok(self) -> bool:
        return all(check.ok for check in self.checks)


def _decisions(drive: DriveResult) -> list[tuple[str, int, str, int]]:
    counts: collections.Counter[tuple[str, int, str]] = collections.Counter()
    for result in drive.results:
        if result.http_status == 200 and result.decision is not None:
            counts[(result.decision, int(result.reason or 0), result.reason_name or "")] += 1
        else:
            counts[(f"http_{result.http_status}", -1, result.error or "")] += 1
    return [(decision, reason, name, count)
            for (decision, reason, name), count in sorted(counts.items(), key=lambda item: (-item[1], item[0]))]


def build_summary(world: World, plan: p.DayPlan, drive: DriveResult, day_end: DayEnd, checks: list[Check], *,
                  seed: int, workers: int, metrics: GatewayMetrics | None = None,
                  discounts: dict[str, int] | None = None) -> Summary:
    single = [r.latency_s * 1000 for r in drive.results if r.http_status == 200 and not r.tap.offline]
    hours: dict[str, list[int]] = {sector: [0] * 24 for sector in ("urban", "county", "scenic", "venue")}
    for tap in plan.taps:
        hour = dt.datetime.fromtimestamp(tap.tap_time_ms / 1000, tz=dt.timezone(dt.timedelta(hours=8))).hour
        hours[tap.sector][hour] += 1
    # Operator fares are net of county tap-off adjustments (settlement's fare_fen + adjustment_fen).
    names = {op.operator_id: (op.name_zh, op.name_en) for op in world.model.operators}
    revenue = [{"operator_id": line.operator_id, "name_zh": names.get(line.operator_id, ("", ""))[0],
                "name_en": names.get(line.operator_id, ("", ""))[1], "taps": line.taps, "fare_fen": line.fare_fen,
                "subsidy_fen": line.subsidy_fen, "fee_fen": line.fee_fen, "credit_fen": line.credit_fen}
               for line in day_end.operators]
    by_category: dict[str, dict[str, int]] = {}
    for line in day_end.claim.lines:
        entry = by_category.setdefault(line.rider_category, {"rides": 0, "free_rides": 0, "discounted_rides": 0,
                                                             "full_fare_fen": 0, "subsidy_fen": 0})
        entry["rides"] += line.rides
        entry["free_rides"] += line.free_rides
        entry["discounted_rides"] += line.discounted_rides
        entry["full_fare_fen"] += line.full_fare_fen
        entry["subsidy_fen"] += line.subsidy_fen
    subsidies = [{"rider_category": name, **values}
                 for name, values in sorted(by_category.items(), key=lambda item: -item[1]["subsidy_fen"])]
    result = day_end.settlement
    totals = day_end.totals
    return Summary(
        day=plan.day, seed=seed, holders=len(world.holders),
        holders_by_category=dict(collections.Counter(h.category for h in world.holders)),
        devices=len(world.devices), workers=workers, taps=len(drive.results), requests=drive.requests,
        retries=drive.retries, offline_taps=sum(1 for t in plan.taps if t.offline),
        offline_batches=sum(1 for d in plan.dispatches if d.offline), duration_s=drive.duration_s,
        taps_per_s=len(drive.results) / drive.duration_s if drive.duration_s else 0.0,
        latency_p50_ms=percentile(single, 0.50), latency_p99_ms=percentile(single, 0.99),
        latency_max_ms=max(single, default=0.0),
        decisions=_decisions(drive), taps_by_kind=dict(collections.Counter(t.kind for t in plan.taps)),
        taps_by_tap_kind=dict(collections.Counter(t.tap_kind for t in plan.taps)),
        taps_by_hour=hours, revenue=revenue, subsidies=subsidies,
        settlement={"debits": result.debits, "debit_fen": result.debit_fen, "held_debits": result.held_debits,
                    "credits": result.credits, "credit_fen": result.credit_fen, "fee_fen": result.fee_fen,
                    "carried_fen": totals.carried_fen},
        bank_files=list(result.files), claim_files=[str(path) for path in day_end.claim_files],
        chain={"ok": day_end.chain.ok, "batches": day_end.chain.batches_checked,
               "rows": day_end.chain.rows_checked, "problems": len(day_end.chain.problems)},
        checks=checks,
        server_p50_ms=metrics.server_p50_ms if metrics else None,
        server_p99_ms=metrics.server_p99_ms if metrics else None,
        cache_hit_rate=metrics.cache_hit_rate if metrics else None, discounts=dict(discounts or {}))


# Requests refused before any journaling, by HTTP status (0: no response at all).
HTTP_REFUSALS = {
    "401": ("设备认证失败", "device not authenticated"),
    "0": ("无应答", "no response"),
}


def reason_label(decision: str, reason: int, name: str) -> str:
    if decision.startswith("http_"):
        status = decision[5:]
        zh, en = HTTP_REFUSALS.get(status, ("请求被拒绝", name or "request refused"))
        return f"HTTP {status} {zh} / {en}"
    if decision == "accepted":
        return "接受 / accepted"
    zh = ""
    try:
        from gateway.reasons import DISPLAY

        zh = DISPLAY[Reason(reason)][0]
    except (ValueError, KeyError):
        pass
    return f"拒绝 / rejected {reason} {name} {zh}".rstrip()


def server_line(summary: Summary) -> str:
    """Return the line with the gateway's own view: server-side latency and credential cache hits."""
    parts = []
    if summary.server_p50_ms is not None and summary.server_p99_ms is not None:
        parts.append(f"网关内处理 server-side p50 ≤ {summary.server_p50_ms:g} ms，p99 ≤ {summary.server_p99_ms:g} ms"
                     "（直方图桶上界 histogram bucket bounds）")
    if summary.cache_hit_rate is not None:
        parts.append(f"凭证缓存命中率 credential cache hit rate {summary.cache_hit_rate:.0%}")
    return "，".join(parts) if parts else "网关指标不可用 / gateway metrics unavailable"


DISCOUNT_NAMES = {"category": "乘客类别 category", "transfer": "换乘 transfer", "cap": "封顶 cap"}
TAP_KIND_NAMES = {"board": "上车 board", "on": "上车刷卡 tap-on", "off": "下车刷卡 tap-off", "entry": "入场 entry"}


def discount_line(summary: Summary) -> str:
    """Return the lines with taps by kind and the accepted taps each kind of discount reduced."""
    kinds = "，".join(f"{TAP_KIND_NAMES.get(k, k)} {n}" for k, n in sorted(summary.taps_by_tap_kind.items()))
    discounts = "，".join(f"{DISCOUNT_NAMES.get(k, k)} {n}" for k, n in sorted(summary.discounts.items()))
    return (f"交易类型 / tap kinds: {kinds}\n"
            f"享受优惠的已接受交易 / accepted taps with a discount: {discounts or '-'}")


def format_summary(summary: Summary) -> str:
    """Return the printed summary, Chinese with English beside it."""
    lines = [
        "",
        f"=== 沂源一日演示 / Yiyuan demo day {summary.day} (seed {summary.seed}) ===",
        f"持卡人 holders {summary.holders}，设备 devices {summary.devices}，网关进程 gateway workers {summary.workers}",
        f"交易 taps {summary.taps}（离线补传 offline {summary.offline_taps}，{summary.offline_batches} 批 batches），"
        f"请求 requests {summary.requests}，重试 retries {summary.retries}",
        f"用时 drive time {summary.duration_s:.1f} s，吞吐 {summary.taps_per_s:.0f} 笔/秒 taps/s，"
        f"延迟 latency p50 {summary.latency_p50_ms:.1f} ms，p99 {summary.latency_p99_ms:.1f} ms（演示进程测得的往返 "
        f"round trip seen by the devices）",
        server_line(summary),
        "",
        "交易结果 / decisions by reason:",
    ]
    for decision, reason, name, count in summary.decisions:
        lines.append(f"  {count:>7}  {reason_label(decision, reason, name)}")
    lines += ["", discount_line(summary), "", "运营单位收入 / revenue per operator (元 yuan):",
              f"  {pad('运营单位 operator', 22)}{rpad('笔数 taps', 9)}  {rpad('票款 fares', 11)}  "
              f"{rpad('补贴 subsidy', 12)}  {rpad('手续费 fees', 11)}  {rpad('付款 credit', 11)}"]
    for row in summary.revenue:
        lines.append(f"  {row['operator_id']:<22}{row['taps']:>9}  {format_yuan(row['fare_fen']):>11}  "
                     f"{format_yuan(row['subsidy_fen']):>12}  {format_yuan(row['fee_fen']):>11}  "
                     f"{format_yuan(row['credit_fen']):>11}  {row['name_zh']}")
    lines += ["", "按乘客类别的补贴 / subsidies per rider category (元 yuan):"]
    for row in summary.subsidies:
        lines.append(f"  {pad(category_name(row['rider_category']), 48)} 次数 rides {row['rides']:>6}  "
                     f"全价 full fare {format_yuan(row['full_fare_fen']):>10}  补贴 subsidy "
                     f"{format_yuan(row['subsidy_fen']):>10}")
    settlement = summary.settlement
    lines += ["",
              f"清算 settlement: 扣款 debits {settlement['debits']} 笔 {format_yuan(settlement['debit_fen'])} 元"
              f"（暂缓 held {settlement['held_debits']}），付款 credits {settlement['credits']} 笔 "
              f"{format_yuan(settlement['credit_fen'])} 元，银行文件 bank files {len(summary.bank_files)}",
              f"流水哈希链 journal chain: {'通过 verified' if summary.chain['ok'] else '损坏 BROKEN'}"
              f"（{summary.chain['batches']} 批 batches，{summary.chain['rows']} 行 rows）",
              "", "检查 / checks:"]
    for check in summary.checks:
        mark = "通过 ok  " if check.ok else "失败 FAIL"
        lines.append(f"  [{mark}] {check.name_zh} / {check.name_en}" + (f" — {check.detail}" if check.detail else ""))
    return "\n".join(lines)


def summary_json(summary: Summary) -> dict[str, Any]:
    data = dataclasses.asdict(summary)
    data["day"] = summary.day.isoformat()
    data["ok"] = summary.ok
    data["decisions"] = [{"decision": d, "reason": r, "reason_name": n, "taps": c} for d, r, n, c in summary.decisions]
    return data


__all__ = ["Summary", "build_summary", "format_summary", "percentile", "summary_json"]
