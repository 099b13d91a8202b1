"""``tapgate settle``: close business days, settle them, and import and report around it."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import pathlib
import sys

from tqdm import tqdm

from gateway import db, timeutil
from gateway.config import Config
from settlement import accounts, arrears, days, reconcile, returns, run, subsidy
from settlement.crypto import AccountCipher
from settlement.errors import InputFileError, SettlementError
from settlement.isofiles import format_yuan
from tapgate import runtime


def _day(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid day {text!r}: expected YYYY-MM-DD / 日期 {text!r} 无效，应为 YYYY-MM-DD")


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    settle = subparsers.add_parser(
        "settle", parents=[common],
        help="daily settlement: close days, bank files, returns, subsidy claims / 日结与清算：关账、银行文件、回盘、补贴申领",
        description="Settle the journal's fares to bank accounts. / 将交易流水中的票款清算到银行账户。")
    commands = settle.add_subparsers(dest="settle_command", metavar="SUBCOMMAND", title="subcommands / 子命令")

    close = commands.add_parser(
        "close-day", parents=[common],
        help="close a business day and fix its taps / 日结：关闭营业日并固定其交易",
        description="Close a business day (and any earlier unclosed ones). Taps uploaded after this go to the "
                    "next day closed. / 关闭营业日（及其前尚未关闭的营业日）；此后上传的交易计入下一个日结日。")
    close.add_argument("day", nargs="?", type=_day,
                       help="business day YYYY-MM-DD; default the last day that has ended / 营业日，默认最近一个已结束的营业日")
    close.add_argument("--force", action="store_true",
                       help="close a day that has not ended yet (tests, drills) / 强制关闭尚未结束的营业日")
    close.set_defaults(handler=_handler(_close_day))

    run_parser = commands.add_parser(
        "run", parents=[common], help="settle a closed day and write the bank files / 结算已日结的营业日并生成银行文件",
        description="Post the day's fares, build one debit per rider account and one credit per operator, and write "
                    "pain.008 / pain.001 files with CSV twins per bank. Safe to repeat; a killed run resumes. "
                    "/ 记账，生成每个乘客账户一笔扣款、每个运营单位一笔付款，并按银行写出 pain.008 / pain.001 及 CSV 文件；"
                    "可重复执行，中断后可续跑。")
    run_parser.add_argument("day", type=_day, help="closed business day YYYY-MM-DD / 已日结的营业日")
    run_parser.add_argument("--output-dir", metavar="DIR",
                            help="where bank files go (default settlement.output_dir) / 银行文件输出目录")
    run_parser.set_defaults(handler=_handler(_run))

    imp = commands.add_parser(
        "import-accounts", parents=[common], help="import bank accounts from CSV / 从 CSV 导入银行账户",
        description="Import cooperating banks, rider accounts (the card issuer's export) or operator accounts. "
                    "Account numbers are encrypted with settlement.account_key_file. "
                    "/ 导入合作银行、乘客账户（发卡机构导出文件）或运营单位账户；账号以 settlement.account_key_file 加密存储。")
    imp.add_argument("file", type=pathlib.Path, help="UTF-8 CSV file / UTF-8 编码的 CSV 文件")
    imp.add_argument("--kind", choices=accounts.KINDS, default="riders",
                     help="banks: bank_code,name_zh,name_en,agency_account; riders: account_token,bank_code,"
                          "account_number; operators: operator_id,bank_code,account_number,fee_bp (default riders) "
                          "/ 文件类型，默认 riders")
    imp.set_defaults(handler=_handler(_import_accounts))

    ret = commands.add_parser(
        "import-returns", parents=[common], help="import bank returns (camt.054 or CSV) / 导入银行回盘（camt.054 或 CSV）",
        description="Record each item as settled or rejected; rejected debits put the account in arrears. Importing "
                    "a file twice changes nothing. / 逐笔记录成功或失败；扣款失败的账户进入欠费名单；重复导入不产生变化。")
    ret.add_argument("files", nargs="+", type=pathlib.Path, help="camt.054 XML or CSV files / 回盘文件")
    ret.set_defaults(handler=_handler(_import_returns))

    sub = commands.add_parser(
        "subsidy", parents=[common], help="monthly subsidy claim as CSV and printable HTML / 月度补贴申领表（CSV 与可打印 HTML）",
        description="Count and value free and discounted rides per operator and rider category for a month. "
                    "/ 按运营单位和乘客类别统计当月免费与优惠乘车的次数和金额。")
    sub.add_argument("month", help="month YYYY-MM / 月份")
    sub.add_argument("--output-dir", metavar="DIR", help="default settlement.output_dir / 输出目录")
    sub.set_defaults(handler=_handler(_subsidy))

    rec = commands.add_parser(
        "reconcile", parents=[common], help="reconciliation of a settled day per operator / 按运营单位对账",
        description="Per operator: taps, fares, fees, credit, and the riders' side collected, returned, outstanding. "
                    "/ 按运营单位列出：交易笔数、票款、手续费、付款，以及乘客扣款的成功、退回与未结金额。")
    rec.add_argument("day", type=_day, help="business day YYYY-MM-DD / 营业日")
    rec.add_argument("--csv", type=pathlib.Path, metavar="FILE", help="also write the report as CSV / 同时写出 CSV")
    rec.set_defaults(handler=_handler(_reconcile))

    status = commands.add_parser(
        "status", parents=[common], help="closed days, runs and arrears / 日结、结算与欠费状态",
        description="List the latest closed days with their run state, and the accounts in arrears. "
                    "/ 列出最近的日结日及其结算状态，以及欠费账户数。")
    status.add_argument("--days", type=int, default=10, help="how many recent days to list (default 10) / 列出最近几天")
    status.add_argument("--refresh-arrears", action="store_true",
                        help="re-count rides of accounts in arrears and update the deny list / 重新统计欠费账户乘车次数并更新黑名单")
    status.set_defaults(handler=_handler(_status))

    def show_help(args: argparse.Namespace, config: Config) -> int:
        settle.print_help()
        return 2

    settle.set_defaults(handler=show_help)


def _handler(coroutine_fn):
    def handle(args: argparse.Namespace, config: Config) -> int:
        with runtime.database(config) as dsn:
            return asyncio.run(_with_connection(coroutine_fn, args, config, dsn))
    return handle


async def _with_connection(coroutine_fn, args, config, dsn) -> int:
    async with db.connection(dsn, config.database.connect_timeout_s) as conn:
        return await coroutine_fn(conn, args, config)


def _cutoff(config: Config) -> dt.time:
    return timeutil.parse_cutoff(config.journal.day_cutoff)


async def _close_day(conn, args, config: Config) -> int:
    cutoff = _cutoff(config)
    now = dt.datetime.now(timeutil.UTC)
    day = args.day or timeutil.business_day(now, cutoff) - dt.timedelta(days=1)
    closed = await days.close_day(conn, day, cutoff, now=now, force=args.force)
    if not closed:
        print(f"营业日 {day} 已日结，未做任何改变 / business day {day} was already closed; nothing changed")
    for item in closed:
        print(f"已日结 / closed: {item.business_day}（流水批次高水位 / journal high-water batch {item.high_water_batch}）")
    async with conn.transaction():
        await arrears.refresh(conn, grace_rides=config.settlement.arrears_grace_rides,
                              grace_fen=config.settlement.arrears_grace_fen)
    return 0


async def _run(conn, args, config: Config) -> int:
    cipher = AccountCipher.from_config(config)
    output = args.output_dir or config.settlement.output_dir
    bar = tqdm(total=len(run.STEPS), desc=f"结算 settle {args.day}", unit="step", file=sys.stderr)

    def progress(label: str) -> None:
        bar.set_postfix_str(label)
        if label in run.STEPS:
            bar.update(1)

    try:
        result = await run.run_day(conn, args.day, cipher, output, progress=progress,
                                   grace_rides=config.settlement.arrears_grace_rides,
                                   grace_fen=config.settlement.arrears_grace_fen)
        bar.update(bar.total - bar.n)
    finally:
        bar.close()
    if result.resumed_from not in ("started", "complete"):
        print(f"从步骤 {result.resumed_from} 之后续跑 / resumed after step {result.resumed_from}")
    print(f"扣款 / debits: {result.debits} 笔，{format_yuan(result.debit_fen)} 元"
          f"（暂缓 / held without bank account: {result.held_debits}）")
    print(f"付款 / credits: {result.credits} 笔，{format_yuan(result.credit_fen)} 元；"
          f"手续费 / fees: {format_yuan(result.fee_fen)} 元")
    for path in result.files:
        print(f"已写出 / written: {path}")
    return 0


async def _import_accounts(conn, args, config: Config) -> int:
    cipher = AccountCipher.from_config(config)
    try:
        text = args.file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputFileError(f"cannot read {args.file}: {exc}", f"无法读取 {args.file}：{exc}") from exc
    with tqdm(desc=f"导入 import {args.kind}", unit="row", file=sys.stderr) as bar:
        report = await accounts.import_accounts(conn, text, args.kind, cipher, source_name=args.file.name,
                                                progress=bar.update)
    print(f"已导入 / imported: {report.imported} / {report.rows} 行 rows")
    for line, message in report.problems:
        print(f"第 {line} 行 / line {line}: {message}", file=sys.stderr)
    if report.problems:
        bad_rows = len({line for line, _message in report.problems})
        print(f"{bad_rows} 行有错误，已跳过 / {bad_rows} bad rows skipped", file=sys.stderr)
        return 1
    return 0


async def _import_returns(conn, args, config: Config) -> int:
    status = 0
    for path in tqdm(args.files, desc="导入回盘 import returns", unit="file", file=sys.stderr):
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise InputFileError(f"cannot read {path}: {exc}", f"无法读取 {path}：{exc}") from exc
        try:
            report = await returns.import_returns(conn, data, path.name,
                                                  grace_rides=config.settlement.arrears_grace_rides,
                                                  grace_fen=config.settlement.arrears_grace_fen)
        except InputFileError as exc:
            print(f"错误 / error: {path}: {exc}", file=sys.stderr)
            status = 1
            continue
        if report.already_imported:
            print(f"{path.name}: 已导入过，未做任何改变 / already imported; nothing changed")
            continue
        print(f"{path.name}: {report.items} 笔 items, 新 new {report.new_items}: 成功 settled {report.settled}, "
              f"退回 rejected {report.rejected}; 欠费名单 deny list +{report.deny_added} -{report.deny_removed}")
    return status


async def _subsidy(conn, args, config: Config) -> int:
    claim = await subsidy.build_claim(conn, args.month)
    paths = subsidy.write_claim(claim, pathlib.Path(args.output_dir or config.settlement.output_dir))
    if not claim.complete:
        print(f"注意：{claim.month} 仅 {claim.closed_days}/{claim.days_in_month} 天已日结 / note: only "
              f"{claim.closed_days} of {claim.days_in_month} days are closed", file=sys.stderr)
    total = sum(line.subsidy_fen for line in claim.lines)
    print(f"补贴合计 / subsidy total: {format_yuan(total)} 元")
    for path in paths:
        print(f"已写出 / written: {path}")
    return 0


async def _reconcile(conn, args, config: Config) -> int:
    await days.require_closed_day(conn, args.day)
    lines, totals = await reconcile.reconcile_day(conn, args.day)
    print(f"{'运营单位 operator':<20}{'笔数 taps':>10}{'票款 fares':>14}{'手续费 fees':>12}{'付款 credit':>14}"
          f"{'已收 collected':>16}{'退回 returned':>15}{'未结 outstanding':>18}")
    for line in lines:
        print(f"{line.operator_id:<20}{line.taps:>10}{format_yuan(line.fare_fen):>14}{format_yuan(line.fee_fen):>12}"
              f"{format_yuan(line.credit_fen):>14}{format_yuan(line.collected_fen):>16}"
              f"{format_yuan(line.returned_fen):>15}{format_yuan(line.outstanding_fen):>18}")
    print(f"扣款 debits {totals.debits} 笔 {format_yuan(totals.debit_fen)} 元（含往日 carried "
          f"{format_yuan(totals.carried_fen)}）：成功 settled {format_yuan(totals.settled_fen)}，退回 rejected "
          f"{format_yuan(totals.rejected_fen)}，待回盘 pending {format_yuan(totals.pending_fen)}，暂缓 held "
          f"{format_yuan(totals.held_fen)}")
    if args.csv:
        args.csv.write_text(reconcile.reconciliation_csv(lines), encoding="utf-8")
        print(f"已写出 / written: {args.csv}")
    return 0


async def _status(conn, args, config: Config) -> int:
    if args.refresh_arrears:
        async with conn.transaction():
            added, removed = await arrears.refresh(conn, grace_rides=config.settlement.arrears_grace_rides,
                                                   grace_fen=config.settlement.arrears_grace_fen)
        print(f"欠费名单 deny list: +{added} -{removed}")
    rows = await conn.fetch("""
        SELECT d.business_day, d.high_water_batch, r.step, r.completed_at,
               (SELECT count(*) FROM settlement_debits x WHERE x.business_day = d.business_day) AS debits
        FROM settlement_days d LEFT JOIN settlement_runs r USING (business_day)
        ORDER BY d.business_day DESC LIMIT $1""", args.days)
    if not rows:
        print("尚无已日结的营业日 / no business day closed yet")
    for row in rows:
        state = "已完成 complete" if row["completed_at"] else (f"进行中 in progress ({row['step']})" if row["step"]
                                                               else "未结算 not run")
        print(f"{row['business_day']}  高水位 high-water {row['high_water_batch']:>10}  {state}  "
              f"扣款 debits {row['debits']}")
    in_arrears = await conn.fetchrow(
        "SELECT count(*) AS accounts, count(*) FILTER (WHERE denied) AS denied, "
        "coalesce(sum(outstanding_fen), 0)::bigint AS fen FROM settlement_arrears")
    print(f"欠费账户 accounts in arrears: {in_arrears['accounts']}（已拒绝乘车 denied {in_arrears['denied']}），"
          f"合计 {format_yuan(in_arrears['fen'])} 元")
    return 0


__all__ = ["register", "SettlementError"]
