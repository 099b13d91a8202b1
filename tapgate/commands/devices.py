"""``tapgate devices`` and ``tapgate operators``: the registry of validators, gates and their operators.

A new or rotated device secret is printed once, on standard output, and
never logged; store it in the device's configuration at once.
"""

from __future__ import annotations

import argparse
import asyncio
import base64

from gateway import db, devices
from gateway.config import Config
from tapgate import runtime


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    _register_devices(subparsers, common)
    _register_operators(subparsers, common)


def _without_defaults(common: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Copy the common options with no defaults, for parsers nested one level deeper.

    argparse copies a nested parser's defaults over values parsed before it, so
    without this ``tapgate devices --dsn X list`` would lose ``--dsn X``.
    """
    nested = argparse.ArgumentParser(add_help=False)
    group = nested.add_argument_group("common options / 通用选项")
    for action in common._actions:
        group.add_argument(*action.option_strings, dest=action.dest, metavar=action.metavar,
                           choices=action.choices, help=action.help, default=argparse.SUPPRESS)
    return nested


def _register_devices(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    nested = _without_defaults(common)
    parser = subparsers.add_parser(
        "devices", parents=[common],
        help="register validators and gates, disable them, rotate their secrets / 管理验票机与闸机",
        description="Manage the devices allowed to submit taps. A new secret is printed once and never "
                    "logged. / 管理可提交交易的设备。新密钥只显示一次，不写入日志。")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", title="actions / 操作", required=True)

    add = actions.add_parser("add", parents=[nested], help="register a device and print its secret / 登记设备并显示密钥")
    add.add_argument("device_id", help="device id: 1-63 letters, digits, '_', '.', '-' / 设备编号")
    add.add_argument("--operator", required=True, metavar="ID", help="operator id / 运营单位编号")
    add.add_argument("--kind", required=True, choices=devices.DEVICE_KINDS,
                     help="validator (on a bus route) or gate (at a site) / validator 车载验票机，gate 闸机")
    add.add_argument("--route", metavar="ID", help="route id, for a validator / 线路编号（验票机）")
    add.add_argument("--site", metavar="ID", help="site id, for a gate / 场所编号（闸机）")
    add.set_defaults(handler=_run(_add_device))

    listing = actions.add_parser("list", parents=[nested], help="list devices / 列出设备")
    listing.add_argument("--operator", metavar="ID", help="only this operator's devices / 仅列出该运营单位的设备")
    listing.set_defaults(handler=_run(_list_devices))

    for action, status, text in (("disable", "disabled", "stop accepting the device's requests / 停用设备"),
                                 ("enable", "active", "accept the device's requests again / 启用设备")):
        sub = actions.add_parser(action, parents=[nested], help=text)
        sub.add_argument("device_id", help="device id / 设备编号")
        sub.set_defaults(handler=_run(_status_setter(status)))

    rotate = actions.add_parser("rotate-secret", parents=[nested],
                                help="replace the device's secret and print the new one / 更换设备密钥并显示新密钥")
    rotate.add_argument("device_id", help="device id / 设备编号")
    rotate.set_defaults(handler=_run(_rotate))


def _register_operators(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    nested = _without_defaults(common)
    parser = subparsers.add_parser("operators", parents=[common],
                                   help="register and list operators / 管理运营单位")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", title="actions / 操作", required=True)
    add = actions.add_parser("add", parents=[nested], help="register an operator / 登记运营单位")
    add.add_argument("operator_id", help="operator id: 1-63 lower-case letters, digits, '_', '.', '-' / 运营单位编号")
    add.add_argument("--kind", required=True, choices=devices.OPERATOR_KINDS,
                     help="bus, scenic (scenic spot) or venue / bus 公交，scenic 景区，venue 场馆")
    add.add_argument("--name-zh", required=True, metavar="TEXT", help="Chinese name / 中文名称")
    add.add_argument("--name-en", required=True, metavar="TEXT", help="English name / 英文名称")
    add.set_defaults(handler=_run(_add_operator))
    listing = actions.add_parser("list", parents=[nested], help="list operators / 列出运营单位")
    listing.set_defaults(handler=_run(_list_operators))


def _run(action):
    """Wrap an async action(conn, args) into a handler that opens the database for it."""

    def handler(args: argparse.Namespace, config: Config) -> int:
        with runtime.database(config) as dsn:
            return asyncio.run(_with_connection(dsn, config, action, args))

    return handler


async def _with_connection(dsn: str, config: Config, action, args: argparse.Namespace) -> int:
    async with db.connection(dsn, config.database.connect_timeout_s) as conn:
        return await action(conn, args)


def _print_secret(device_id: str, secret: bytes) -> None:
    print(f"设备 / device: {device_id}")
    print(f"密钥 / secret (hex): {secret.hex()}")
    print(f"密钥 / secret (base64): {base64.b64encode(secret).decode('ascii')}")
    print("此密钥只显示这一次，请立即写入设备配置 / this secret is shown only once; store it in the device now")


async def _add_device(conn, args: argparse.Namespace) -> int:
    secret = await devices.add_device(conn, args.device_id, args.operator, args.kind,
                                      route_id=args.route, site_id=args.site)
    _print_secret(args.device_id, secret)
    return 0


async def _list_devices(conn, args: argparse.Namespace) -> int:
    rows = await devices.list_devices(conn, args.operator)
    print(f"{'device_id':<24} {'operator':<16} {'kind':<9} {'route/site':<16} status")
    for row in rows:
        place = row["route_id"] or row["site_id"] or ""
        print(f"{row['device_id']:<24} {row['operator_id']:<16} {row['kind']:<9} {place:<16} {row['status']}")
    print(f"共 {len(rows)} 台设备 / {len(rows)} devices")
    return 0


def _status_setter(status: str):
    async def set_status(conn, args: argparse.Namespace) -> int:
        await devices.set_device_status(conn, args.device_id, status)
        word = "已启用 / enabled" if status == "active" else "已停用 / disabled"
        print(f"{word}: {args.device_id}")
        return 0

    return set_status


async def _rotate(conn, args: argparse.Namespace) -> int:
    secret = await devices.rotate_secret(conn, args.device_id)
    _print_secret(args.device_id, secret)
    return 0


async def _add_operator(conn, args: argparse.Namespace) -> int:
    await devices.add_operator(conn, args.operator_id, args.kind, args.name_zh, args.name_en)
    print(f"已登记运营单位 / operator added: {args.operator_id}")
    return 0


async def _list_operators(conn, args: argparse.Namespace) -> int:
    rows = await devices.list_operators(conn)
    for row in rows:
        print(f"{row['operator_id']:<16} {row['kind']:<7} {row['name_zh']} / {row['name_en']}")
    print(f"共 {len(rows)} 个运营单位 / {len(rows)} operators")
    return 0
