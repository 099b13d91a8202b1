"""``tapgate keys`` and ``tapgate credential``: issuer keys, credentials, QR codes and card responses.

Issuer private keys live in files readable by their owner only (mode 0600)
and never enter the database. The table ``issuer_keys`` holds the public
keys with their status, and the gateway builds its key ring from it. A
change bumps the row's ``version`` so that workers notice it.

``tapgate credential`` acts as the card platform and as a rider's device,
for the demo, tests and vendors' integration work. It issues a credential
into a holder file (the credential plus the holder's private seed, mode
0600) and makes QR codes (text, PNG, SVG) or card answers from that file.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime as dt
import json
import os
import pathlib
import stat
import time

from gateway import db
from gateway.config import Config
from gateway.errors import GatewayError
from gateway.timeutil import LOCAL_TZ, from_unix_ms
from tapgate import runtime

HOLDER_FILE_FORMAT = "tapgate-holder"


class KeyCommandError(GatewayError, ValueError):
    """An issuer key or holder file operation failed: invalid input, a missing key or a conflicting row."""


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    _register_keys(subparsers, common)
    _register_credential(subparsers, common)


def _register_keys(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    parser = subparsers.add_parser(
        "keys", parents=[common],
        help="generate, register, rotate, retire and revoke issuer keys / 管理发卡密钥",
        description="Manage the issuer keys that sign credentials. Private keys are written to files of mode "
                    "0600 and never stored in the database; issuer_keys holds the public keys. "
                    "/ 管理签发凭证的发卡密钥。私钥只写入权限为 0600 的文件，不进入数据库；issuer_keys 表只存公钥。")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", title="actions / 操作", required=True)

    generate = actions.add_parser(
        "generate", parents=[common],
        help="write a new private key file; --register also adds its public key / 生成新私钥文件")
    generate.add_argument("--key-id", type=int, required=True, metavar="N", help="key id, 0-65535 / 密钥编号")
    generate.add_argument("--out", required=True, metavar="FILE",
                          help="private key file to create (mode 0600, never overwritten) / 要创建的私钥文件")
    generate.add_argument("--register", action="store_true",
                          help="also add the public key to issuer_keys as active / 同时登记公钥为启用状态")
    generate.set_defaults(handler=_generate)

    add = actions.add_parser("register", parents=[common],
                             help="add a key file's public key to issuer_keys as active / 登记公钥")
    add.add_argument("--key-file", required=True, metavar="FILE", help="private key file / 私钥文件")
    add.set_defaults(handler=_db_handler(_register_key))

    listing = actions.add_parser("list", parents=[common], help="list issuer keys / 列出发卡密钥")
    listing.set_defaults(handler=_db_handler(_list_keys))

    retire = actions.add_parser(
        "retire", parents=[common],
        help="stop accepting credentials issued from now on (or --at) / 停用密钥：此后签发的凭证不再有效")
    retire.add_argument("--key-id", type=int, required=True, metavar="N", help="key id / 密钥编号")
    retire.add_argument("--at", metavar="TIME",
                        help="retirement time, ISO 8601 (local time Asia/Shanghai if no offset); default now "
                             "/ 停用时间，ISO 8601 格式，默认为当前时间")
    retire.set_defaults(handler=_db_handler(_retire_key))

    revoke = actions.add_parser(
        "revoke", parents=[common],
        help="reject every credential the key signed (compromised key) / 吊销密钥：其签发的所有凭证立即失效")
    revoke.add_argument("--key-id", type=int, required=True, metavar="N", help="key id / 密钥编号")
    revoke.set_defaults(handler=_db_handler(_revoke_key))

    rotate = actions.add_parser(
        "rotate", parents=[common],
        help="generate and register a new key, then retire the old one / 轮换密钥：生成并登记新密钥，停用旧密钥")
    rotate.add_argument("--old-key-id", type=int, required=True, metavar="N", help="key to retire / 要停用的密钥编号")
    rotate.add_argument("--key-id", type=int, required=True, metavar="N", help="new key id / 新密钥编号")
    rotate.add_argument("--out", required=True, metavar="FILE", help="new private key file / 新私钥文件")
    rotate.set_defaults(handler=_rotate)


def _register_credential(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    parser = subparsers.add_parser(
        "credential", parents=[common],
        help="issue a credential, make QR codes and card responses / 签发凭证，生成乘车码和卡片应答",
        description="Act as the card platform (issue) and as a rider's phone or card (qr, answer). The holder "
                    "file holds the credential and the holder's private seed (mode 0600). "
                    "/ 模拟发卡平台与乘客的手机或卡片。持卡人文件包含凭证和持卡人私钥（权限 0600）。")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", title="actions / 操作", required=True)

    issue = actions.add_parser("issue", parents=[common], help="issue a credential into a holder file / 签发凭证")
    issue.add_argument("--key-file", required=True, metavar="FILE", help="issuer private key file / 发卡私钥文件")
    issue.add_argument("--out", required=True, metavar="FILE", help="holder file to create / 要创建的持卡人文件")
    issue.add_argument("--birth-date", required=True, type=_date, metavar="YYYY-MM-DD", help="出生日期 / birth date")
    issue.add_argument("--disability-until", type=_date, metavar="YYYY-MM-DD",
                       help="last day of the disability entitlement / 残疾优待截止日期")
    issue.add_argument("--priority-group", type=int, default=0, metavar="CODE",
                       help="priority group code 0-255 (docs/credential-format.md) / 优抚对象类别代码")
    issue.add_argument("--priority-until", type=_date, metavar="YYYY-MM-DD",
                       help="last day of the priority entitlement / 优抚优待截止日期")
    issue.add_argument("--student-until", type=_date, metavar="YYYY-MM-DD",
                       help="last day of the student entitlement / 学生优惠截止日期")
    issue.add_argument("--valid-days", type=int, default=365, metavar="DAYS",
                       help="validity from now, in days (default 365) / 有效天数")
    issue.add_argument("--holder-token", metavar="HEX", help="16-byte holder token in hex; default random / 持卡人标识")
    issue.add_argument("--account-token", metavar="HEX", help="16-byte account token in hex; default random / 账户标识")
    issue.set_defaults(handler=_issue)

    show = actions.add_parser("show", parents=[common], help="print a holder file's credential fields / 显示凭证内容")
    show.add_argument("holder_file", metavar="FILE", help="holder file / 持卡人文件")
    show.set_defaults(handler=_show)

    qr = actions.add_parser("qr", parents=[common],
                            help="make the next QR code as the phone would / 像手机一样生成下一个乘车码")
    qr.add_argument("holder_file", metavar="FILE", help="holder file; its counter is advanced / 持卡人文件")
    qr.add_argument("--png", metavar="FILE", help="also write the code as PNG / 同时输出 PNG 图片")
    qr.add_argument("--svg", metavar="FILE", help="also write the code as SVG / 同时输出 SVG 图片")
    qr.add_argument("--time-ms", type=int, metavar="MS", help="presentation time, Unix ms; default now / 出示时间")
    qr.set_defaults(handler=_qr)

    answer = actions.add_parser("answer", parents=[common],
                                help="sign a reader's challenge as the card would and print the response in base64 / 像卡片一样应答读卡器挑战")
    answer.add_argument("holder_file", metavar="FILE", help="holder file / 持卡人文件")
    answer.add_argument("--device-id", required=True, metavar="ID", help="reader's device id / 读卡设备编号")
    answer.add_argument("--nonce", metavar="HEX", help="reader nonce, 16 bytes in hex; default random / 读卡器随机数")
    answer.add_argument("--time-ms", type=int, metavar="MS", help="challenge time, Unix ms; default now / 挑战时间")
    answer.set_defaults(handler=_answer)


def _date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid date {text!r}: expected YYYY-MM-DD / 日期 {text!r} 无效，应为 YYYY-MM-DD")


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _parse_time(text: str | None) -> dt.datetime:
    if text is None:
        return dt.datetime.now(dt.timezone.utc)
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError as exc:
        raise KeyCommandError(f"invalid time {text!r}: expected ISO 8601 such as 2026-06-01T00:00+08:00",
                              f"时间 {text!r} 无效，应为 ISO 8601 格式，例如 2026-06-01T00:00+08:00") from exc
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=LOCAL_TZ)


def _load_issuer_key(path: str):
    from fastpath.errors import KeyFileError
    from fastpath.issuer import IssuerKey

    try:
        return IssuerKey.load(path)
    except KeyFileError as exc:
        raise KeyCommandError(exc.message_en, exc.message_zh) from exc


def _new_key_file(key_id: int, path: str):
    from fastpath.errors import KeyFileError
    from fastpath.issuer import IssuerKey

    if not 0 <= key_id <= 0xFFFF:
        raise KeyCommandError(f"--key-id {key_id} is outside 0 to 65535", f"--key-id {key_id} 超出 0 到 65535 的范围")
    key = IssuerKey.generate(key_id)
    try:
        key.save(path)
    except KeyFileError as exc:
        raise KeyCommandError(exc.message_en, exc.message_zh) from exc
    return key


def _db_handler(action):
    """Wrap ``action(conn, args)`` into a handler that opens the command's database."""

    def handler(args: argparse.Namespace, config: Config) -> int:
        with runtime.database(config) as dsn:
            return asyncio.run(_with_connection(dsn, action, args))

    return handler


async def _with_connection(dsn: str, action, args: argparse.Namespace) -> int:
    async with db.connection(dsn) as conn:
        return await action(conn, args)


async def _insert_key(conn, key_id: int, public_key: bytes) -> None:
    import asyncpg

    try:
        await conn.execute(
            "INSERT INTO issuer_keys (key_id, public_key, status, version) VALUES ($1, $2, 'active', 1)",
            key_id, public_key)
    except asyncpg.UniqueViolationError as exc:
        raise KeyCommandError(
            f"issuer_keys already has key id {key_id} or this public key; choose another --key-id",
            f"issuer_keys 中已有密钥编号 {key_id} 或相同公钥，请换一个 --key-id") from exc


async def _register_key(conn, args: argparse.Namespace) -> int:
    key = _load_issuer_key(args.key_file)
    await _insert_key(conn, key.key_id, key.public_key)
    print(f"已登记 / registered: key {key.key_id} active, public key {key.public_key.hex()}")
    return 0


def _generate(args: argparse.Namespace, config: Config) -> int:
    if args.register:
        # Check the database first, so a failed registration leaves no orphaned key file.
        with runtime.database(config) as dsn:
            return asyncio.run(_with_connection(dsn, _generate_and_register, args))
    key = _new_key_file(args.key_id, args.out)
    print(f"已生成 / generated: key {key.key_id} in {args.out} (mode 0600), public key {key.public_key.hex()}")
    return 0


async def _generate_and_register(conn, args: argparse.Namespace) -> int:
    if await conn.fetchval("SELECT 1 FROM issuer_keys WHERE key_id = $1", args.key_id):
        raise KeyCommandError(f"issuer_keys already has key id {args.key_id}; choose another --key-id",
                              f"issuer_keys 中已有密钥编号 {args.key_id}，请换一个 --key-id")
    key = _new_key_file(args.key_id, args.out)
    await _insert_key(conn, key.key_id, key.public_key)
    print(f"已生成并登记 / generated and registered: key {key.key_id} in {args.out} (mode 0600), "
          f"public key {key.public_key.hex()}")
    return 0


async def _list_keys(conn, args: argparse.Namespace) -> int:
    rows = await conn.fetch("SELECT key_id, public_key, status, activated_at, retired_at, revoked_at "
                            "FROM issuer_keys ORDER BY key_id")
    if not rows:
        print("没有发卡密钥 / no issuer keys")
        return 0
    print("key_id  status   public_key                                                        activated_at / "
          "retired_at / revoked_at")
    for row in rows:
        times = " / ".join(row[name].astimezone(LOCAL_TZ).isoformat(timespec="seconds") if row[name] else "-"
                           for name in ("activated_at", "retired_at", "revoked_at"))
        print(f"{row['key_id']:<7} {row['status']:<8} {bytes(row['public_key']).hex()}  {times}")
    return 0


async def _set_retired(conn, key_id: int, at: dt.datetime) -> None:
    status = await conn.fetchval("SELECT status FROM issuer_keys WHERE key_id = $1 FOR UPDATE", key_id)
    if status is None:
        raise KeyCommandError(f"issuer key {key_id} not found; see `tapgate keys list`",
                              f"找不到发卡密钥 {key_id}，请用 `tapgate keys list` 查看")
    if status == "revoked":
        raise KeyCommandError(f"issuer key {key_id} is revoked; a revoked key cannot be retired",
                              f"发卡密钥 {key_id} 已吊销，不能再停用")
    await conn.execute("UPDATE issuer_keys SET status = 'retired', retired_at = $2, version = version + 1 "
                       "WHERE key_id = $1", key_id, at)


async def _retire_key(conn, args: argparse.Namespace) -> int:
    at = _parse_time(args.at)
    async with conn.transaction():
        await _set_retired(conn, args.key_id, at)
    print(f"已停用 / retired: key {args.key_id} at {at.astimezone(LOCAL_TZ).isoformat(timespec='seconds')}; "
          "credentials issued before then stay valid / 此前签发的凭证继续有效")
    return 0


async def _revoke_key(conn, args: argparse.Namespace) -> int:
    result = await conn.execute("UPDATE issuer_keys SET status = 'revoked', revoked_at = now(), "
                                "version = version + 1 WHERE key_id = $1", args.key_id)
    if result == "UPDATE 0":
        raise KeyCommandError(f"issuer key {args.key_id} not found; see `tapgate keys list`",
                              f"找不到发卡密钥 {args.key_id}，请用 `tapgate keys list` 查看")
    print(f"已吊销 / revoked: key {args.key_id}; every credential it signed is now rejected "
          "/ 其签发的所有凭证均已失效")
    return 0


def _rotate(args: argparse.Namespace, config: Config) -> int:
    with runtime.database(config) as dsn:
        return asyncio.run(_with_connection(dsn, _rotate_keys, args))


async def _rotate_keys(conn, args: argparse.Namespace) -> int:
    old = await conn.fetchval("SELECT status FROM issuer_keys WHERE key_id = $1", args.old_key_id)
    if old != "active":
        raise KeyCommandError(
            f"issuer key {args.old_key_id} is {old or 'not registered'}; rotate only an active key",
            f"发卡密钥 {args.old_key_id} 的状态为 {old or '未登记'}，只能轮换启用中的密钥")
    if await conn.fetchval("SELECT 1 FROM issuer_keys WHERE key_id = $1", args.key_id):
        raise KeyCommandError(f"issuer_keys already has key id {args.key_id}; choose another --key-id",
                              f"issuer_keys 中已有密钥编号 {args.key_id}，请换一个 --key-id")
    key = _new_key_file(args.key_id, args.out)
    now = dt.datetime.now(dt.timezone.utc)
    async with conn.transaction():
        await _insert_key(conn, key.key_id, key.public_key)
        await _set_retired(conn, args.old_key_id, now)
    print(f"已轮换 / rotated: new key {key.key_id} in {args.out} (mode 0600) is active; key {args.old_key_id} "
          "retired now. Issue new credentials with the new key. / 请用新密钥签发新凭证。")
    return 0


# -- holder files -------------------------------------------------------------


def _write_holder(path: pathlib.Path, credential: bytes, holder_seed: bytes, counter: int, *, create: bool) -> None:
    document = {"format": HOLDER_FILE_FORMAT, "version": 1, "credential": credential.hex(),
                "holder_seed": holder_seed.hex(), "counter": counter}
    flags = os.O_WRONLY | os.O_CREAT | (os.O_EXCL if create else os.O_TRUNC)
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError as exc:
        raise KeyCommandError(f"holder file {path} already exists; choose another --out",
                              f"持卡人文件 {path} 已存在，请换一个 --out") from exc
    with os.fdopen(fd, "w", encoding="ascii") as file:
        os.fchmod(file.fileno(), 0o600)
        json.dump(document, file, indent=2)
        file.write("\n")


def _read_holder(path: str) -> tuple[bytes, bytes, int]:
    source = pathlib.Path(path)
    try:
        mode = stat.S_IMODE(source.stat().st_mode)
        if mode & 0o077:
            raise KeyCommandError(
                f"holder file {source} has mode {mode:04o}; it contains a private key, so run chmod 600 {source}",
                f"持卡人文件 {source} 的权限为 {mode:04o}，其中含有私钥，请执行 chmod 600 {source}")
        document = json.loads(source.read_text(encoding="ascii"))
        if document.get("format") != HOLDER_FILE_FORMAT:
            raise ValueError(f"format is {document.get('format')!r}")
        return bytes.fromhex(document["credential"]), bytes.fromhex(document["holder_seed"]), int(document["counter"])
    except FileNotFoundError as exc:
        raise KeyCommandError(f"holder file {source} not found", f"找不到持卡人文件 {source}") from exc
    except KeyCommandError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise KeyCommandError(f"{source} is not a valid tapgate holder file: {exc}",
                              f"{source} 不是有效的 tapgate 持卡人文件：{exc}") from exc


def _token(text: str | None, name: str) -> bytes:
    from fastpath.issuer import new_token

    if text is None:
        return new_token()
    try:
        value = bytes.fromhex(text)
    except ValueError:
        value = b""
    if len(value) != 16:
        raise KeyCommandError(f"{name} {text!r} must be 32 hex digits (16 bytes)",
                              f"{name} {text!r} 应为 32 位十六进制数字（16 字节）")
    return value


def _issue(args: argparse.Namespace, config: Config) -> int:
    import nacl.signing

    from fastpath.entitlements import Entitlements
    from fastpath.issuer import issue_credential

    key = _load_issuer_key(args.key_file)
    if args.valid_days < 1:
        raise KeyCommandError(f"--valid-days {args.valid_days} must be at least 1", f"--valid-days {args.valid_days} 至少为 1")
    holder_key = nacl.signing.SigningKey.generate()
    start = _now_ms()
    try:
        entitlements = Entitlements(birth_date=args.birth_date, disability_until=args.disability_until,
                                    priority_until=args.priority_until, student_until=args.student_until,
                                    priority_group=args.priority_group)
        credential = issue_credential(
            key, holder_token=_token(args.holder_token, "--holder-token"),
            account_token=_token(args.account_token, "--account-token"), entitlements=entitlements,
            valid_from_ms=start, valid_until_ms=start + args.valid_days * 86_400_000,
            holder_public_key=bytes(holder_key.verify_key), issued_at_ms=start)
    except (ValueError, TypeError) as exc:
        raise KeyCommandError(f"cannot issue the credential: {exc}", f"无法签发凭证：{exc}") from exc
    _write_holder(pathlib.Path(args.out), credential, bytes(holder_key), 0, create=True)
    print(f"已签发 / issued: credential {credential[3:19].hex()} by key {key.key_id} into {args.out} (mode 0600)")
    return 0


def _show(args: argparse.Namespace, config: Config) -> int:
    from fastpath.issuer import parse_credential

    credential, _seed, counter = _read_holder(args.holder_file)
    fields = parse_credential(credential)
    ent = fields.entitlements

    def when(ms: int) -> str:
        return from_unix_ms(ms).astimezone(LOCAL_TZ).isoformat(timespec="seconds")

    print(f"key_id            {fields.key_id}")
    print(f"credential_id     {fields.credential_id.hex()}")
    print(f"holder_token      {fields.holder_token.hex()}")
    print(f"account_token     {fields.account_token.hex()}")
    print(f"issued_at         {when(fields.issued_at_ms)}")
    print(f"valid             {when(fields.valid_from_ms)} .. {when(fields.valid_until_ms)}")
    print(f"birth_date        {ent.birth_date}")
    print(f"disability_until  {ent.disability_until or '-'}")
    print(f"priority          group {ent.priority_group} until {ent.priority_until or '-'}")
    print(f"student_until     {ent.student_until or '-'}")
    print(f"qr_counter        {counter}")
    return 0


def _qr(args: argparse.Namespace, config: Config) -> int:
    from fastpath.issuer import Phone, make_qr

    credential, seed, counter = _read_holder(args.holder_file)
    phone = Phone(credential, seed, counter=counter)
    text = phone.qr_text(args.time_ms if args.time_ms is not None else _now_ms())
    # Save the counter before printing, so two codes from one file never share a counter.
    path = pathlib.Path(args.holder_file)
    _write_holder(path, credential, seed, phone.counter, create=False)
    try:
        for image in (args.png, args.svg):
            if image:
                make_qr(text, image)
    except ValueError as exc:
        raise KeyCommandError(str(exc), f"无法生成二维码图片：{exc}") from exc
    print(text)
    return 0


def _answer(args: argparse.Namespace, config: Config) -> int:
    from fastpath.issuer import Card, new_reader_nonce

    credential, seed, _counter = _read_holder(args.holder_file)
    nonce = _nonce(args.nonce) if args.nonce else new_reader_nonce()
    try:
        response = Card(credential, seed).answer(args.device_id.encode("utf-8"), nonce,
                                                 args.time_ms if args.time_ms is not None else _now_ms())
    except ValueError as exc:
        raise KeyCommandError(f"cannot sign the challenge: {exc}", f"无法应答挑战：{exc}") from exc
    print(base64.b64encode(response).decode("ascii"))
    return 0


def _nonce(text: str) -> bytes:
    try:
        value = bytes.fromhex(text)
    except ValueError:
        value = b""
    if len(value) != 16:
        raise KeyCommandError(f"--nonce {text!r} must be 32 hex digits (16 bytes)",
                              f"--nonce {text!r} 应为 32 位十六进制数字（16 字节）")
    return value
