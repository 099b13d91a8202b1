"""``tapgate migrate`` and ``tapgate db``: schema migrations and the embedded PostgreSQL."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import threading

from gateway import db
from gateway.config import Config
from tapgate import runtime


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    migrate = subparsers.add_parser(
        "migrate", parents=[common],
        help="apply schema migrations / 执行数据库结构迁移",
        description="Apply every missing schema migration; applying them twice changes nothing. "
                    "/ 执行所有尚未执行的数据库结构迁移，重复执行不会改变任何内容。")
    migrate.add_argument("--check", action="store_true",
                         help="only report whether the schema is current; exit 1 if not / 仅检查结构是否为最新")
    migrate.set_defaults(handler=run_migrate)

    database = subparsers.add_parser(
        "db", parents=[common],
        help="run the embedded PostgreSQL in the foreground / 在前台运行内嵌 PostgreSQL",
        description="Start the embedded PostgreSQL, apply migrations, print its DSN and keep it running "
                    "until Ctrl-C or SIGTERM. / 启动内嵌 PostgreSQL 并执行迁移，打印连接串，直到 Ctrl-C 或 SIGTERM。")
    database.set_defaults(handler=run_db)


def run_migrate(args: argparse.Namespace, config: Config) -> int:
    with runtime.database(config, migrate=False) as dsn:
        if args.check:
            return asyncio.run(_check(dsn))
        applied = asyncio.run(runtime.migrate_all(dsn))
    if applied:
        for migration in applied:
            print(f"已执行 / applied: {migration.label}")
    else:
        print("数据库结构已是最新 / schema is current, nothing to apply")
    return 0


async def _check(dsn: str) -> int:
    async with db.connection(dsn) as conn:
        for sequence in runtime.all_migrations():
            await db.check_current(conn, sequence)
    print("数据库结构已是最新 / schema is current")
    return 0


def run_db(args: argparse.Namespace, config: Config) -> int:
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    with runtime.database(config) as dsn:
        print(dsn, flush=True)
        print("PostgreSQL 运行中，按 Ctrl-C 停止 / PostgreSQL running, Ctrl-C stops it", file=sys.stderr, flush=True)
        stop.wait()
    return 0
