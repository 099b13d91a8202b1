"""``tapgate deny``: the card issuer's lost-card reports and credential revocations.

Settlement maintains the ``arrears`` entries itself; this command can list
them and, for corrections, add or remove them too. Running gateways pick up
a change within their refresh interval (one second by default).
"""

from __future__ import annotations

import argparse
import asyncio

from gateway import db, denylist
from gateway.config import Config
from gateway.timeutil import to_local
from tapgate import runtime

KIND_HELP = ("card_lost (subject: credential id), credential_revoked (subject: credential id), "
             "arrears (subject: account token) / 挂失、凭证注销、欠费")


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    parser = subparsers.add_parser(
        "deny", parents=[common],
        help="add, remove and list deny-list entries / 管理黑名单（挂失、注销、欠费）",
        description="Manage the deny list that validators and gates check on every tap. Subjects are 16 bytes "
                    "given as 32 hex digits. / 管理每笔交易都要核对的黑名单。对象为 16 字节，以 32 位十六进制表示。")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", title="actions / 操作", required=True)

    for action, help_text, handler in (
            ("add", "add or reactivate an entry / 添加或重新启用一条记录", _add),
            ("remove", "deactivate an entry / 解除一条记录", _remove)):
        sub = actions.add_parser(action, parents=[common], help=help_text)
        sub.add_argument("--kind", required=True, choices=denylist.KINDS, help=KIND_HELP)
        sub.add_argument("subject", metavar="SUBJECT_HEX", help="credential id or account token, 32 hex digits "
                                                                 "/ 凭证编号或账户标识，32 位十六进制")
        sub.add_argument("--source", required=True, metavar="TEXT",
                         help="who reported it, e.g. the issuer's report number / 来源，例如发卡机构的挂失单号")
        sub.set_defaults(handler=handler)

    listing = actions.add_parser("list", parents=[common], help="list entries, newest first / 列出记录")
    listing.add_argument("--kind", choices=denylist.KINDS, help="only this kind / 只列出该类型")
    listing.add_argument("--all", action="store_true", help="include removed entries / 包括已解除的记录")
    listing.set_defaults(handler=_list)


def _subject(text: str) -> bytes:
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise denylist.DenyListError(
            f"subject {text!r} is not hexadecimal: give the 16-byte id as 32 hex digits",
            f"对象 {text!r} 不是十六进制：请以 32 位十六进制给出 16 字节的编号") from None


def _add(args: argparse.Namespace, config: Config) -> int:
    subject = denylist.check_subject(args.kind, _subject(args.subject))
    with runtime.database(config) as dsn:
        version = asyncio.run(_in_db(dsn, denylist.add_entry, args.kind, subject, args.source))
    print(f"已添加 {args.kind} {subject.hex()}，版本 {version} / added {args.kind} {subject.hex()}, version {version}")
    return 0


def _remove(args: argparse.Namespace, config: Config) -> int:
    subject = denylist.check_subject(args.kind, _subject(args.subject))
    with runtime.database(config) as dsn:
        version = asyncio.run(_in_db(dsn, denylist.remove_entry, args.kind, subject, args.source))
    if version is None:
        print(f"没有有效的 {args.kind} 记录 {subject.hex()} / no active {args.kind} entry {subject.hex()}")
        return 1
    print(f"已解除 {args.kind} {subject.hex()}，版本 {version} / removed {args.kind} {subject.hex()}, "
          f"version {version}")
    return 0


def _list(args: argparse.Namespace, config: Config) -> int:
    with runtime.database(config) as dsn:
        entries = asyncio.run(_in_db(dsn, denylist.list_entries, args.kind, include_inactive=args.all))
    if not entries:
        print("没有记录 / no entries")
        return 0
    print(f"{'version':>8}  {'kind':<18} {'subject':<32}  {'state':<13} {'changed (Asia/Shanghai)':<19}  source")
    for entry in entries:
        state = "有效 active" if entry.active else "已解除 removed"
        changed = to_local(entry.changed_at).strftime("%Y-%m-%d %H:%M:%S") if entry.changed_at else "-"
        print(f"{entry.version:>8}  {entry.kind:<18} {entry.subject.hex():<32}  {state:<13} {changed:<19}  "
              f"{entry.source}")
    return 0


async def _in_db(dsn: str, operation, *args, **kwargs):
    async with db.connection(dsn) as conn:
        return await operation(conn, *args, **kwargs)
