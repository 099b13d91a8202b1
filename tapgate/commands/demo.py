"""``tapgate demo``: run a compressed day of Yiyuan traffic end to end (see :mod:`tapgate.demo`)."""

from __future__ import annotations

import argparse
import datetime as dt
import pathlib

from gateway.config import Config


def _at_least(minimum: int):
    """Return an argparse type accepting whole numbers of at least ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected a whole number of at least {minimum}, got {text!r} "
                                             f"/ 应为不小于 {minimum} 的整数，实际为 {text!r}")
        return value

    return parse


def _day(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid day {text!r}: expected YYYY-MM-DD / 日期 {text!r} 无效，应为 YYYY-MM-DD") from None


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    demo = subparsers.add_parser(
        "demo", parents=[common],
        help="run a compressed day of Yiyuan traffic end to end / 端到端运行压缩的沂源一日交通",
        description="Start a fresh PostgreSQL (embedded in OUT/pgdata, or the database tapgate_demo created "
                    "afresh on the --dsn server), provision issuer keys, the illustrative Yiyuan rule set, "
                    "operators, devices and holders, start the gateway workers, send yesterday's traffic "
                    "compressed into about a minute over HTTP, settle the day, verify the journal chain and "
                    "write a report. Exits 1 if an invariant fails. "
                    "/ 启动全新的 PostgreSQL（内嵌于 OUT/pgdata，或在 --dsn 所指服务器上重建 tapgate_demo 数据库），"
                    "生成发卡密钥、沂源示例票价规则、运营单位、设备和持卡人，启动网关进程，通过 HTTP 发送压缩为约一分钟的"
                    "昨日交通，完成日结清算，校验流水哈希链并生成报告。任一不变量不满足时退出码为 1。")
    group = demo.add_argument_group("demo options / 演示选项")
    group.add_argument("--holders", type=_at_least(100), default=3000, metavar="N",
                       help="cardholders to issue credentials for, at least 100 (default 3000) / 持卡人数，至少 100")
    group.add_argument("--taps", type=_at_least(100), default=10000, metavar="N",
                       help="taps in the simulated day, about, at least 100 (default 10000) / 模拟一天的交易笔数（约数），至少 100")
    group.add_argument("--workers", type=_at_least(1), default=2, metavar="N",
                       help="gateway worker processes (default 2) / 网关工作进程数")
    group.add_argument("--seed", type=int, default=1, metavar="N",
                       help="seed of the population and the day's plan; the same seed gives the same day "
                            "(default 1) / 随机种子，相同种子生成相同的一天")
    group.add_argument("--out", type=pathlib.Path, default=pathlib.Path("demo-out"), metavar="DIR",
                       help="output directory, emptied first if an earlier demo made it (default ./demo-out) "
                            "/ 输出目录，默认 ./demo-out")
    group.add_argument("--day", type=_day, metavar="YYYY-MM-DD",
                       help="business day to simulate, an ended day of the last few days (default yesterday, "
                            "local time) / 模拟的营业日，默认昨天")
    group.add_argument("--concurrency", type=_at_least(1), default=48, metavar="N",
                       help="requests in flight at once across all devices (default 48) / 同时进行中的请求数")
    group.add_argument("--no-report", action="store_true",
                       help="skip the HTML report and its charts / 不生成 HTML 报告")
    demo.set_defaults(handler=run)


def run(args: argparse.Namespace, config: Config) -> int:
    from tapgate.demo.run import DemoOptions, run_demo

    options = DemoOptions(holders=args.holders, taps=args.taps, workers=args.workers, seed=args.seed,
                          out=args.out, day=args.day, concurrency=args.concurrency, report=not args.no_report,
                          config_file=args.config)
    return run_demo(options, config)
