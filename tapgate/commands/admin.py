"""``tapgate admin``: admin API users and tokens, and running the admin API.

A new token is printed once, on standard output, and never logged or stored
in clear; give it to its user at once.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import getpass
import importlib
import importlib.util
from typing import Any, Awaitable, Callable

from gateway import db
from gateway.admin import Extension, run_admin
from gateway.admin import auth
from gateway.config import Config
from tapgate import runtime

# Modules that may add routes to the admin API: each, if installed, has ``register(app)``.
EXTENSION_MODULES = ("settlement.admin_routes",)


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    parser = subparsers.add_parser(
        "admin", parents=[common], help="admin API: users, tokens, server / 管理接口：用户、令牌与服务",
        description="Manage the users and bearer tokens of the admin HTTP API, and run it. "
                    "/ 管理后台 HTTP 接口的用户与访问令牌，并运行该接口。")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", title="actions / 操作", required=True)

    serve = actions.add_parser("serve", parents=[common],
                               help="run the admin API on [admin] host and port / 在 [admin] 配置的地址运行管理接口")
    serve.set_defaults(handler=run_serve)

    add = actions.add_parser("add-user", parents=[common], help="create a user / 创建用户")
    add.add_argument("user_name", help="user name: 1-63 letters, digits, '_', '.', '@', '-' / 用户名")
    add.add_argument("--role", required=True, choices=auth.ROLES,
                     help="editor: drafts and publishes rules; auditor: reads everything; operator: reads its own "
                          "operator's rules; finance: reads settlement / editor 编辑，auditor 审计，operator 运营单位，"
                          "finance 财务")
    add.add_argument("--operator", metavar="ID", help="operator id, for role operator / 运营单位编号（operator 角色）")
    _actor_option(add)
    add.set_defaults(handler=_run(_add_user))

    users = actions.add_parser("users", parents=[common], help="list users / 列出用户")
    users.set_defaults(handler=_run(_list_users))

    disable = actions.add_parser("disable-user", parents=[common],
                                 help="disable a user and all their tokens / 停用用户及其全部令牌")
    disable.add_argument("user_name", help="user name / 用户名")
    _actor_option(disable)
    disable.set_defaults(handler=_run(_disable_user))

    token = actions.add_parser("create-token", parents=[common], help="create a token and print it once / 创建令牌")
    token.add_argument("user_name", help="user name / 用户名")
    token.add_argument("--expires-days", type=int, metavar="DAYS",
                       help="days until the token expires (default: never) / 有效天数（默认不过期）")
    _actor_option(token)
    token.set_defaults(handler=_run(_create_token))

    tokens = actions.add_parser("tokens", parents=[common], help="list tokens (never their value) / 列出令牌")
    tokens.set_defaults(handler=_run(_list_tokens))

    revoke = actions.add_parser("revoke-token", parents=[common], help="revoke a token / 吊销令牌")
    revoke.add_argument("token_id", type=int, help="token id from `tapgate admin tokens` / 令牌编号")
    _actor_option(revoke)
    revoke.set_defaults(handler=_run(_revoke_token))


def _actor_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--actor", default=None, help="name recorded in the audit trail (default cli:<login name>) "
                                                      "/ 审计记录中的操作人")


def _actor(args: argparse.Namespace) -> str:
    return args.actor or f"cli:{getpass.getuser()}"


def _run(action: Callable[[Any, argparse.Namespace], Awaitable[int]]):
    def handler(args: argparse.Namespace, config: Config) -> int:
        async def with_connection(dsn: str) -> int:
            async with db.connection(dsn) as conn:
                return await action(conn, args)

        with runtime.database(config) as dsn:
            return asyncio.run(with_connection(dsn))

    return handler


async def _add_user(conn, args: argparse.Namespace) -> int:
    user = await auth.create_user(conn, args.user_name, args.role, _actor(args), operator_id=args.operator)
    print(f"已创建用户 / user created: {user.user_name} ({user.role}"
          f"{', ' + user.operator_id if user.operator_id else ''})")
    return 0


async def _list_users(conn, args: argparse.Namespace) -> int:
    print("用户/user | 角色/role | 运营单位/operator | 状态/status")
    for user in await auth.list_users(conn):
        status = "停用 / disabled" if user.disabled_at else "有效 / active"
        print(f"{user.user_name} | {user.role} | {user.operator_id or '-'} | {status}")
    return 0


async def _disable_user(conn, args: argparse.Namespace) -> int:
    await auth.disable_user(conn, args.user_name, _actor(args))
    print(f"已停用 / disabled: {args.user_name}")
    return 0


async def _create_token(conn, args: argparse.Namespace) -> int:
    expires = dt.timedelta(days=args.expires_days) if args.expires_days else None
    token_id, token = await auth.create_token(conn, args.user_name, _actor(args), expires)
    print(token)
    print(f"令牌编号 / token id {token_id}：此令牌只显示这一次 / shown only this once", flush=True)
    return 0


async def _list_tokens(conn, args: argparse.Namespace) -> int:
    print("编号/id | 用户/user | 创建/created | 过期/expires | 吊销/revoked | 最近使用/last used")
    for token in await auth.list_tokens(conn):
        cells = [token.created_at, token.expires_at, token.revoked_at, token.last_used_at]
        text = [c.strftime("%Y-%m-%d %H:%M") if c else "-" for c in cells]
        print(f"{token.token_id} | {token.user_name} | " + " | ".join(text))
    return 0


async def _revoke_token(conn, args: argparse.Namespace) -> int:
    await auth.revoke_token(conn, args.token_id, _actor(args))
    print(f"已吊销 / revoked: token {args.token_id}")
    return 0


def extensions() -> list[Extension]:
    """Return ``register`` of every installed module in :data:`EXTENSION_MODULES`."""
    found: list[Extension] = []
    for name in EXTENSION_MODULES:
        try:
            spec = importlib.util.find_spec(name)
        except ModuleNotFoundError:
            spec = None
        if spec is not None:
            found.append(importlib.import_module(name).register)
    return found


def run_serve(args: argparse.Namespace, config: Config) -> int:
    with runtime.database(config) as dsn:
        print(f"管理接口 / admin API: http://{config.admin.host}:{config.admin.port}/admin/v1/", flush=True)
        run_admin(config, dsn, extensions())
    return 0
