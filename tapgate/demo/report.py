"""The HTML report of a demo day: the summary's tables and charts drawn with matplotlib, in one file.

Charts are PNG files in ``<out>/charts/`` and are also embedded in
``report.html`` as data URIs, so the report can be mailed as one file.
Chart labels are English because matplotlib's bundled fonts have no Chinese
glyphs; the page around them is Chinese with English beside it.
"""

from __future__ import annotations

import base64
import html
import pathlib
import time

from fastpath.issuer import Phone, make_qr
from settlement.isofiles import format_yuan
from tapgate.demo.drive import DriveResult
from tapgate.demo.summary import (DISCOUNT_NAMES, TAP_KIND_NAMES, Summary, category_name, percentile,
                                  reason_label)

SECTOR_COLOURS = {"urban": "#3b75af", "county": "#519e3e", "scenic": "#ef8636", "venue": "#8d69b8"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def chart_taps_by_hour(summary: Summary, path: pathlib.Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 3.6))
    bottom = [0] * 24
    for sector, counts in summary.taps_by_hour.items():
        ax.bar(range(24), counts, bottom=bottom, color=SECTOR_COLOURS[sector], label=sector)
        bottom = [b + c for b, c in zip(bottom, counts)]
    ax.set_xlabel("local hour of the simulated day (Asia/Shanghai)")
    ax.set_ylabel("taps")
    ax.set_xticks(range(0, 24, 2))
    ax.set_title("Taps per hour: morning and evening peaks, scenic-spot surge")
    ax.legend(ncols=4, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def chart_latency(drive: DriveResult, summary: Summary, path: pathlib.Path) -> None:
    plt = _pyplot()
    online = [r for r in drive.results if r.http_status == 200 and not r.tap.offline]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    latencies = [r.latency_s * 1000 for r in online]
    left.hist(latencies, bins=60, color="#3b75af")
    for value, label in ((summary.latency_p50_ms, "p50"), (summary.latency_p99_ms, "p99")):
        left.axvline(value, color="#c0392b", linestyle="--")
        left.text(value, left.get_ylim()[1] * 0.9, f" {label} {value:.1f} ms", color="#c0392b", fontsize=8)
    left.set_xlabel("latency per tap request (ms)")
    left.set_ylabel("requests")
    left.set_title("Latency of online taps")

    # Responses per second of wall-clock time, with the p99 latency of each second.
    seconds = int(drive.duration_s) + 1
    per_second = [0] * seconds
    by_second: list[list[float]] = [[] for _ in range(seconds)]
    for result in drive.results:
        index = min(seconds - 1, int(result.answered_at_s))
        per_second[index] += 1
        if result.http_status == 200 and not result.tap.offline:
            by_second[index].append(result.latency_s * 1000)
    right.plot(range(seconds), per_second, color="#3b75af", label="taps answered per s")
    right.set_xlabel("seconds since the first tap")
    right.set_ylabel("taps per second")
    twin = right.twinx()
    twin.plot(range(seconds), [percentile(v, 0.99) for v in by_second], color="#c0392b", label="p99 ms")
    twin.set_ylabel("p99 latency (ms)")
    right.set_title("Throughput and p99 over the run")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def chart_decisions(summary: Summary, path: pathlib.Path) -> None:
    plt = _pyplot()
    rows = [(f"{name or decision}" if decision != "accepted" else "accepted", count, decision)
            for decision, _reason, name, count in summary.decisions]
    fig, ax = plt.subplots(figsize=(9, 0.4 * len(rows) + 1.2))
    colours = ["#519e3e" if d == "accepted" else "#c0392b" for _, _, d in rows]
    ax.barh([label for label, _, _ in rows], [count for _, count, _ in rows], color=colours)
    ax.set_xscale("log")
    # A bar of one tap has zero length on a log axis unless the axis starts below 1.
    ax.set_xlim(left=0.5)
    ax.invert_yaxis()
    ax.set_xlabel("taps (log scale)")
    ax.set_title("Decisions by reason")
    for index, (_, count, _) in enumerate(rows):
        ax.text(count, index, f" {count}", va="center", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def chart_money(summary: Summary, path: pathlib.Path) -> None:
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    operators = [row["operator_id"] for row in summary.revenue]
    fares = [row["fare_fen"] / 100 for row in summary.revenue]
    subsidies = [row["subsidy_fen"] / 100 for row in summary.revenue]
    left.bar(operators, fares, color="#3b75af", label="fares paid by riders")
    left.bar(operators, subsidies, bottom=fares, color="#ef8636", label="subsidy claimed")
    left.set_ylabel("yuan")
    left.set_title("Revenue per operator")
    left.tick_params(axis="x", labelrotation=20, labelsize=8)
    left.legend(fontsize=8)

    categories = [row["rider_category"] for row in summary.subsidies]
    right.bar(categories, [row["subsidy_fen"] / 100 for row in summary.subsidies], color="#8d69b8")
    right.set_ylabel("yuan")
    right.set_title("Subsidy per rider category")
    right.tick_params(axis="x", labelrotation=30, labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def sample_qr(phone: Phone, path: pathlib.Path) -> tuple[int, int]:
    """Draw a fresh service code of ``phone`` as a phone screen shows it; return (characters, QR version)."""
    text = phone.qr_text(time.time_ns() // 1_000_000)
    code = make_qr(text, path, scale=3)
    return len(text), code.version


def _img(path: pathlib.Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'


_STYLE = """
body { font-family: "Noto Sans CJK SC", "Source Han Sans SC", "PingFang SC", sans-serif; margin: 2em auto;
       max-width: 1100px; color: #111; }
h1 { font-size: 1.5em; } h2 { font-size: 1.15em; margin-top: 1.8em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 0.6em 0; } th, td { border: 1px solid #bbb; padding: 3px 8px; }
td.n { text-align: right; font-variant-numeric: tabular-nums; } img { max-width: 100%; }
.ok { color: #1e7d32; font-weight: bold; } .fail { color: #b71c1c; font-weight: bold; }
.note { color: #555; font-size: 0.9em; }
"""


def _optional(value: float | None, form: str) -> str:
    return "-" if value is None else form.format(value)


def _table(headers: list[str], rows: list[list[object]], numeric_from: int = 1) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = "".join(f'<td class="n">{html.escape(str(v))}</td>' if i >= numeric_from
                        else f"<td>{html.escape(str(v))}</td>" for i, v in enumerate(row))
        body.append(f"<tr>{cells}</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def render_html(summary: Summary, charts: dict[str, pathlib.Path], qr: tuple[int, int]) -> str:
    esc = html.escape
    verdict = ('<span class="ok">全部通过 / all invariants held</span>' if summary.ok
               else '<span class="fail">有检查失败 / an invariant FAILED</span>')
    figures = [
        ["交易 taps", summary.taps], ["离线补传 offline taps", summary.offline_taps],
        ["请求 requests", summary.requests], ["重试 retries", summary.retries],
        ["用时 drive time (s)", f"{summary.duration_s:.1f}"], ["吞吐 taps per second", f"{summary.taps_per_s:.0f}"],
        ["延迟 p50 latency (ms)", f"{summary.latency_p50_ms:.1f}"],
        ["延迟 p99 latency (ms)", f"{summary.latency_p99_ms:.1f}"],
        ["网关内 p50 server-side (ms, ≤)", _optional(summary.server_p50_ms, "{:g}")],
        ["网关内 p99 server-side (ms, ≤)", _optional(summary.server_p99_ms, "{:g}")],
        ["凭证缓存命中率 credential cache hit rate", _optional(summary.cache_hit_rate, "{:.0%}")],
        *[[f"交易类型 tap kind: {TAP_KIND_NAMES.get(kind, kind)}", count]
          for kind, count in sorted(summary.taps_by_tap_kind.items())],
        *[[f"优惠 discount: {DISCOUNT_NAMES.get(kind, kind)}", count] for kind, count in sorted(summary.discounts.items())],
        ["持卡人 holders", summary.holders], ["设备 devices", summary.devices],
        ["网关进程 gateway workers", summary.workers], ["总用时 total time (s)", f"{summary.total_s:.1f}"],
    ]
    decisions = [[reason_label(d, r, n), c] for d, r, n, c in summary.decisions]
    revenue = [[f"{row['name_zh']} / {row['name_en']}", row["taps"], format_yuan(row["fare_fen"]),
                format_yuan(row["subsidy_fen"]), format_yuan(row["fee_fen"]), format_yuan(row["credit_fen"])]
               for row in summary.revenue]
    subsidies = [[category_name(row["rider_category"]), row["free_rides"], row["discounted_rides"],
                  format_yuan(row["full_fare_fen"]), format_yuan(row["subsidy_fen"])] for row in summary.subsidies]
    population = [[category_name(name), count] for name, count in sorted(summary.holders_by_category.items(),
                                                                          key=lambda item: -item[1])]
    checks = "".join(
        f'<li><span class="{"ok" if c.ok else "fail"}">{"通过 ok" if c.ok else "失败 FAIL"}</span> '
        f"{esc(c.name_zh)} / {esc(c.name_en)} <span class=\"note\">{esc(c.detail)}</span></li>"
        for c in summary.checks)
    files = "".join(f"<li><code>{esc(pathlib.Path(f).name)}</code></li>"
                    for f in summary.bank_files + summary.claim_files)
    settlement = summary.settlement
    return f"""<!DOCTYPE html>
<html lang="zh-CN"><head><meta charset="utf-8">
<title>沂源一日演示 / Yiyuan demo day {summary.day}</title><style>{_STYLE}</style></head><body>
<h1>沂源一日演示 / Yiyuan demo day {summary.day}</h1>
<p>{verdict}。种子 seed {summary.seed}。票价为示例规则，非实际价格 / fares are from the illustrative rule set,
not actual prices. 演示把昨天压缩为约一分钟：交易时间为模拟的当日时刻，签名与设备认证使用真实时钟 /
the demo compresses yesterday into about a minute: tap times are the simulated time of day, while signatures
and device authentication use the real clock.</p>
<h2>概况 / Overview</h2>{_table(["项目 / figure", "值 / value"], figures)}
<h2>交易分布 / Traffic</h2>{_img(charts["hours"], "taps per hour")}
<p>示例乘车码 / a sample service code: {qr[0]} 个字符 characters, QR 版本 version {qr[1]}，
由持卡人手机离线生成并签名，约一分钟内有效 / made and signed offline by the holder's phone, valid for about a
minute.</p>{_img(charts["qr"], "sample service code")}
<h2>性能 / Latency and throughput</h2>{_img(charts["latency"], "latency")}
<p class="note">延迟为演示进程测得的往返时间，包括签名之后的 HTTP 往返、网关校验、计费与持久化写入；
演示进程、网关与 PostgreSQL 共用同一台机器 / latency is the round trip measured by the demo process
(HTTP, verification, pricing and the durable journal commit); the demo, the gateway and PostgreSQL share
one machine.</p>
<h2>交易结果 / Decisions by reason</h2>{_img(charts["decisions"], "decisions")}
{_table(["结果 / decision", "笔数 / taps"], decisions)}
<h2>收入与补贴 / Revenue and subsidies</h2>{_img(charts["money"], "revenue and subsidies")}
{_table(["运营单位 / operator", "笔数 taps", "票款 fares", "补贴 subsidy", "手续费 fees", "付款 credit"], revenue)}
{_table(["乘客类别 / rider category", "免费 free", "优惠 discounted", "全价 full fare", "补贴 subsidy"], subsidies)}
<h2>持卡人构成 / Holders by category</h2>{_table(["类别 / category", "人数 / holders"], population)}
<h2>清算 / Settlement</h2>
<p>扣款 debits {settlement['debits']} 笔 {format_yuan(settlement['debit_fen'])} 元（暂缓 held
{settlement['held_debits']}）；付款 credits {settlement['credits']} 笔 {format_yuan(settlement['credit_fen'])} 元；
手续费 fees {format_yuan(settlement['fee_fen'])} 元。文件 / files:</p><ul>{files}</ul>
<h2>检查 / Checks</h2><ul>{checks}</ul>
<p class="note">流水哈希链 journal chain: {summary.chain['batches']} 批 batches, {summary.chain['rows']} 行 rows,
{summary.chain['problems']} 处问题 problems.</p>
</body></html>
"""


def write_report(summary: Summary, drive: DriveResult, phone: Phone, out: pathlib.Path) -> pathlib.Path:
    """Draw the charts and a sample QR code of ``phone`` into ``out/charts``, write ``out/report.html``."""
    folder = out / "charts"
    folder.mkdir(exist_ok=True)
    charts = {"hours": folder / "taps_by_hour.png", "latency": folder / "latency.png",
              "decisions": folder / "decisions.png", "money": folder / "revenue_subsidy.png",
              "qr": folder / "sample_qr.png"}
    chart_taps_by_hour(summary, charts["hours"])
    chart_latency(drive, summary, charts["latency"])
    chart_decisions(summary, charts["decisions"])
    chart_money(summary, charts["money"])
    qr = sample_qr(phone, charts["qr"])
    path = out / "report.html"
    path.write_text(render_html(summary, charts, qr), encoding="utf-8")
    return path
