"""``tapgate journal``: verify the journal's hash chain and keep its day partitions ahead."""

from __future__ import annotations

import argparse
import asyncio
import json

from gateway import db
from gateway.config import Config
from gateway.journal import partitions
from gateway.journal.verify import ChainReport, verify_chain
from gateway.timeutil import parse_cutoff
from tapgate import runtime

# Chinese names of the kinds of break, for the report.
KIND_ZH = {
    "row_altered": "流水被修改",
    "row_removed": "流水被删除",
    "row_inserted": "流水被插入",
    "batch_altered": "批次被修改",
    "batch_removed": "批次被删除",
    "batch_inserted": "批次被插入",
    "head_mismatch": "链头不符",
}


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    parser = subparsers.add_parser(
        "journal", parents=[common],
        help="verify the tap journal's hash chain, manage its partitions / 校验交易流水哈希链、管理分区",
        description="Check the tap journal for tampering, and create its daily partitions ahead of time. "
                    "/ 检查交易流水是否被篡改，并预先创建按营业日划分的分区。")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", title="actions / 操作", required=True)

    verify = actions.add_parser(
        "verify", parents=[common],
        help="recompute every row hash and batch link; exit 1 on any break / 校验哈希链，发现问题时退出码为 1",
        description="Re-encode every journal row, recompute every batch digest and chain link, and report every "
                    "row or batch altered, removed or inserted. Exit status 0: intact; 1: broken. "
                    "/ 重新计算每条流水与每个批次的哈希并核对链接，报告被修改、删除或插入的流水与批次。"
                    "退出码 0 表示完好，1 表示有问题。")
    verify.add_argument("--json", action="store_true", help="print the report as JSON / 以 JSON 输出报告")
    verify.add_argument("--max-problems", type=int, default=100, metavar="N",
                        help="problems printed at most (all are counted; default 100) / 最多列出的问题数")
    verify.set_defaults(handler=run_verify)

    parts = actions.add_parser(
        "partitions", parents=[common],
        help="create missing day partitions and list them / 创建缺失的营业日分区并列出",
        description="Create the daily partitions of the taps table from DAYS_BEFORE days before today's business "
                    "day to DAYS_AFTER days after it, move any rows of those days out of the default partition, "
                    "and list every partition. Running gateways do this at start and hourly. "
                    "/ 创建从今日营业日前 N 天到后 M 天的分区，将默认分区中这些日期的流水移入，并列出所有分区。"
                    "网关启动时及每小时自动执行。")
    parts.add_argument("--days-before", type=int, default=partitions.DAYS_BEFORE, metavar="N",
                       help=f"days before today (default {partitions.DAYS_BEFORE}) / 今日之前的天数")
    parts.add_argument("--days-after", type=int, default=partitions.DAYS_AFTER, metavar="N",
                       help=f"days after today (default {partitions.DAYS_AFTER}) / 今日之后的天数")
    parts.add_argument("--list-only", action="store_true", help="create nothing, only list / 只列出，不创建")
    parts.set_defaults(handler=run_partitions)


def run_verify(args: argparse.Namespace, config: Config) -> int:
    with runtime.database(config) as dsn:
        report = asyncio.run(_verify(dsn))
    if args.json:
        print(json.dumps(_report_json(report), ensure_ascii=False, indent=2))
    else:
        _print_report(report, args.max_problems)
    return 0 if report.ok else 1


async def _verify(dsn: str) -> ChainReport:
    async with db.connection(dsn) as conn:
        return await verify_chain(conn)


def _report_json(report: ChainReport) -> dict[str, object]:
    return {
        "ok": report.ok,
        "batches_checked": report.batches_checked,
        "rows_checked": report.rows_checked,
        "head_batch_id": report.head_batch_id,
        "problems": [{"kind": p.kind, "batch_id": p.batch_id, "tap_id": p.tap_id, "message_en": p.message_en,
                      "message_zh": p.message_zh} for p in report.problems],
    }


def _print_report(report: ChainReport, max_problems: int) -> None:
    print(f"已检查 {report.batches_checked} 个批次、{report.rows_checked} 条流水，链头批次 {report.head_batch_id}"
          f" / checked {report.batches_checked} batches and {report.rows_checked} rows, "
          f"head batch {report.head_batch_id}")
    if report.ok:
        print("哈希链完好 / hash chain intact")
        return
    counts: dict[str, int] = {}
    for problem in report.problems:
        counts[problem.kind] = counts.get(problem.kind, 0) + 1
    for problem in report.problems[:max_problems]:
        where = f"batch {problem.batch_id}" + (f" tap {problem.tap_id}" if problem.tap_id is not None else "")
        print(f"  [{problem.kind}] {where}: {problem.message_zh} / {problem.message_en}")
    if len(report.problems) > max_problems:
        print(f"  ……另有 {len(report.problems) - max_problems} 个问题未列出 "
              f"/ ... {len(report.problems) - max_problems} more not shown")
    summary_zh = "，".join(f"{KIND_ZH.get(kind, kind)} {n}" for kind, n in sorted(counts.items()))
    summary_en = ", ".join(f"{kind} {n}" for kind, n in sorted(counts.items()))
    print(f"哈希链已损坏：{summary_zh} / hash chain BROKEN: {summary_en}")


def run_partitions(args: argparse.Namespace, config: Config) -> int:
    for name, value in (("--days-before", args.days_before), ("--days-after", args.days_after)):
        if not 0 <= value <= 366:
            print(f"错误 / error: {name} {value}: expected 0 to 366 days / 应为 0 到 366 天")
            return 2
    cutoff = parse_cutoff(config.journal.day_cutoff)
    with runtime.database(config) as dsn:
        created, listed, stray = asyncio.run(_partitions(dsn, cutoff, args))
    if not args.list_only:
        print(f"已创建 {created} 个分区 / created {created} partitions")
    for name, bounds, rows in listed:
        print(f"  {name:<16} {bounds}  ~{rows} rows")
    for day, count in stray:
        print(f"注意：默认分区中有 {day} 的 {count} 条流水，请扩大日期范围后重新运行 "
              f"/ note: the default partition holds {count} rows of {day}; run again with a wider range")
    return 0


async def _partitions(dsn: str, cutoff, args: argparse.Namespace):
    async with db.connection(dsn) as conn:
        created = 0
        if not args.list_only:
            created = await partitions.ensure_partitions(conn, cutoff, before=args.days_before,
                                                         after=args.days_after)
        return created, await partitions.list_partitions(conn), await partitions.default_partition_days(conn)
