"""Encryption at rest and masking of bank account numbers.

Account numbers are sealed with PyNaCl's SecretBox (XSalsa20-Poly1305) under
a 32-byte key kept in a file outside the database
(``settlement.account_key_file``). Everything outside the settlement tables
and the bank files sees only the mask, for example ``6222 **** **** 1234``.
"""

from __future__ import annotations

import logging
import os
import pathlib
import re
import sys

import nacl.exceptions
import nacl.secret
import nacl.utils

from gateway.logs import log_event
from settlement.errors import SettlementError

log = logging.getLogger(__name__)

KEY_SIZE = nacl.secret.SecretBox.KEY_SIZE
_ACCOUNT = re.compile(r"^[0-9]{8,32}$")


def valid_account_number(number: str) -> bool:
    """Return whether ``number`` looks like a domestic account number: 8 to 32 digits."""
    return bool(_ACCOUNT.match(number))


def mask_account(number: str) -> str:
    """Return the first and last four digits with the middle replaced by ``**** ****``."""
    if len(number) <= 8:
        return "*" * (len(number) - 4) + number[-4:]
    return f"{number[:4]} **** **** {number[-4:]}"


def default_key_path() -> pathlib.Path:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return pathlib.Path(base) / "tapgate" / "account.key"


def load_or_create_key(path: str | os.PathLike[str] | None) -> bytes:
    """Read the account key from ``path``; create it with mode 0600 if the file is missing.

    An empty ``path`` means :func:`default_key_path`. A new key is announced on
    stderr and in the log, because losing it makes every stored account
    number unreadable.
    """
    file = pathlib.Path(path) if path else default_key_path()
    if not file.exists():
        file.parent.mkdir(parents=True, exist_ok=True)
        key = nacl.utils.random(KEY_SIZE)
        fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(key)
        print(f"已创建银行账号加密密钥 {file}（权限 0600），请备份并妥善保管 / "
              f"created the bank account key {file} (mode 0600); back it up and keep it secret",
              file=sys.stderr)
        log_event(log, logging.WARNING, "settlement.account_key_created", path=file)
        return key

    mode = file.stat().st_mode & 0o777
    if mode & 0o077:
        raise SettlementError(
            f"bank account key file {file} has mode {mode:o}; it must not be readable by group or others",
            f"银行账号密钥文件 {file} 的权限为 {mode:o}，不得允许组或其他用户读取",
            f"run `chmod 600 {file}` / 请运行 `chmod 600 {file}`")
    key = file.read_bytes()
    if len(key) != KEY_SIZE:
        raise SettlementError(
            f"bank account key file {file} holds {len(key)} bytes, expected {KEY_SIZE}",
            f"银行账号密钥文件 {file} 长度为 {len(key)} 字节，应为 {KEY_SIZE} 字节",
            "restore the key from its backup / 请从备份恢复密钥")
    return key


class AccountCipher:
    """Seal and open account numbers with one SecretBox key."""

    def __init__(self, key: bytes) -> None:
        self._box = nacl.secret.SecretBox(key)

    def seal(self, number: str) -> bytes:
        return bytes(self._box.encrypt(number.encode("ascii")))

    def open(self, sealed: bytes) -> str:
        try:
            return self._box.decrypt(sealed).decode("ascii")
        except nacl.exceptions.CryptoError as exc:
            raise SettlementError(
                "a stored bank account number cannot be decrypted with the configured key",
                "无法用当前配置的密钥解密已存储的银行账号",
                "check settlement.account_key_file points to the key used at import "
                "/ 请确认 settlement.account_key_file 指向导入时使用的密钥") from exc

    @classmethod
    def from_config(cls, config) -> "AccountCipher":
        return cls(load_or_create_key(config.settlement.account_key_file))
