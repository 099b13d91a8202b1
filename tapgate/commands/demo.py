"""``tapgate demo``: the end-to-end run a new user starts with.

TODO: at this stage it starts the database and applies migrations only; the
day of signed taps through the gateway and settlement is still to be built.
"""

from __future__ import annotations

import argparse
import asyncio

from gateway import db
from gateway.config import Config
from tapgate import runtime


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    demo = subparsers.add_parser(
        "demo", parents=[common],
        help="run a day of Yiyuan traffic end to end / 端到端运行沂源一天的交通数据",
        description="Start PostgreSQL (embedded unless --dsn is given), migrate, and run the demo day. "
                    "/ 启动 PostgreSQL（未指定 --dsn 时使用内嵌服务器），执行迁移并运行演示。")
    demo.set_defaults(handler=run_demo)


def run_demo(args: argparse.Namespace, config: Config) -> int:
    with runtime.database(config) as dsn:
        version = asyncio.run(_server_version(dsn))
        print(f"数据库已就绪 / database ready: {db.redact_dsn(dsn)} ({version})")
    return 0


async def _server_version(dsn: str) -> str:
    async with db.connection(dsn) as conn:
        return await conn.fetchval("SHOW server_version")
