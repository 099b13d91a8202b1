"""Admin users, bearer tokens and roles.

A token is ``tgadm_`` followed by 43 URL-safe base64 characters (256 random
bits). It is shown once when created; the database stores only its SHA-256,
which is enough for a secret of that strength (no slow password hash is
needed, because the token cannot be guessed from a dictionary).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import secrets
from typing import Any

import asyncpg
import msgspec

from gateway.errors import GatewayError

ROLES = ("editor", "auditor", "operator", "finance")
TOKEN_PREFIX = "tgadm_"
_USER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,62}$")


class AdminAuthError(GatewayError, ValueError):
    """A user or token operation is invalid (unknown user, bad role, ...)."""


class Principal(msgspec.Struct, frozen=True, kw_only=True):
    """The authenticated caller of an admin request."""

    user_name: str
    role: str
    # Set for role "operator" only: the operator whose data the caller may read.
    operator_id: str | None = None
    token_id: int | None = None


class UserInfo(msgspec.Struct, kw_only=True):
    user_name: str
    role: str
    operator_id: str | None
    created_at: dt.datetime
    disabled_at: dt.datetime | None


class TokenInfo(msgspec.Struct, kw_only=True):
    token_id: int
    user_name: str
    created_at: dt.datetime
    expires_at: dt.datetime | None
    revoked_at: dt.datetime | None
    last_used_at: dt.datetime | None


def hash_token(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


async def _audit(conn: asyncpg.Connection, actor: str, action: str, target: str,
                 detail: dict[str, Any] | None = None) -> None:
    await conn.execute("INSERT INTO admin_audit (actor, action, target, detail) VALUES ($1, $2, $3, $4)",
                       actor, action, target, msgspec.json.encode(detail or {}).decode())


async def create_user(conn: asyncpg.Connection, user_name: str, role: str, actor: str,
                      operator_id: str | None = None) -> UserInfo:
    if not _USER_NAME.match(user_name):
        raise AdminAuthError(f"invalid user name {user_name!r}: use 1-63 letters, digits, '_', '.', '@', '-'",
                             f"用户名 {user_name!r} 无效：请使用 1-63 个字母、数字或 '_'、'.'、'@'、'-'")
    if role not in ROLES:
        raise AdminAuthError(f"invalid role {role!r}: use one of {', '.join(ROLES)}",
                             f"角色 {role!r} 无效：应为 {'、'.join(ROLES)} 之一")
    if (role == "operator") != (operator_id is not None):
        raise AdminAuthError("an operator id is required for role operator, and only for it",
                             "operator 角色必须指定运营单位编号，其他角色不得指定",
                             "pass --operator ID with --role operator / 请同时使用 --role operator 与 --operator")
    async with conn.transaction():
        try:
            row = await conn.fetchrow(
                """INSERT INTO admin_users (user_name, role, operator_id) VALUES ($1, $2, $3)
                   RETURNING user_name, role, operator_id, created_at, disabled_at""", user_name, role, operator_id)
        except asyncpg.UniqueViolationError:
            raise AdminAuthError(f"user {user_name!r} already exists", f"用户 {user_name!r} 已存在") from None
        await _audit(conn, actor, "create_user", user_name, {"role": role, "operator_id": operator_id})
    return UserInfo(**dict(row))


async def disable_user(conn: asyncpg.Connection, user_name: str, actor: str) -> None:
    async with conn.transaction():
        done = await conn.fetchval(
            "UPDATE admin_users SET disabled_at = now() WHERE user_name = $1 AND disabled_at IS NULL "
            "RETURNING user_name", user_name)
        if done is None:
            raise AdminAuthError(f"no active user {user_name!r}", f"没有名为 {user_name!r} 的有效用户")
        await _audit(conn, actor, "disable_user", user_name)


async def list_users(conn: asyncpg.Connection) -> list[UserInfo]:
    rows = await conn.fetch(
        "SELECT user_name, role, operator_id, created_at, disabled_at FROM admin_users ORDER BY user_name")
    return [UserInfo(**dict(r)) for r in rows]


async def create_token(conn: asyncpg.Connection, user_name: str, actor: str,
                       expires_in: dt.timedelta | None = None) -> tuple[int, str]:
    """Create a token for ``user_name``; return (token id, token). The token is not stored."""
    token = new_token()
    async with conn.transaction():
        active = await conn.fetchval("SELECT disabled_at IS NULL FROM admin_users WHERE user_name = $1", user_name)
        if not active:
            raise AdminAuthError(f"no active user {user_name!r}", f"没有名为 {user_name!r} 的有效用户",
                                 "create the user first / 请先创建用户")
        expires_at = dt.datetime.now(dt.timezone.utc) + expires_in if expires_in else None
        token_id = await conn.fetchval(
            "INSERT INTO admin_tokens (user_name, token_hash, expires_at) VALUES ($1, $2, $3) RETURNING token_id",
            user_name, hash_token(token), expires_at)
        await _audit(conn, actor, "create_token", user_name, {"token_id": token_id})
    return token_id, token


async def revoke_token(conn: asyncpg.Connection, token_id: int, actor: str) -> None:
    async with conn.transaction():
        user = await conn.fetchval(
            "UPDATE admin_tokens SET revoked_at = now() WHERE token_id = $1 AND revoked_at IS NULL "
            "RETURNING user_name", token_id)
        if user is None:
            raise AdminAuthError(f"no active token {token_id}", f"没有编号为 {token_id} 的有效令牌")
        await _audit(conn, actor, "revoke_token", user, {"token_id": token_id})


async def list_tokens(conn: asyncpg.Connection) -> list[TokenInfo]:
    rows = await conn.fetch(
        """SELECT token_id, user_name, created_at, expires_at, revoked_at, last_used_at FROM admin_tokens
           ORDER BY token_id""")
    return [TokenInfo(**dict(r)) for r in rows]


async def authenticate(conn: asyncpg.Connection, token: str) -> Principal | None:
    """Return the principal of a valid token, or None (unknown, revoked, expired, or user disabled)."""
    if not token.startswith(TOKEN_PREFIX):
        return None
    row = await conn.fetchrow(
        """SELECT t.token_id, u.user_name, u.role, u.operator_id FROM admin_tokens t JOIN admin_users u USING (user_name)
           WHERE t.token_hash = $1 AND t.revoked_at IS NULL AND (t.expires_at IS NULL OR t.expires_at > now())
             AND u.disabled_at IS NULL""", hash_token(token))
    if row is None:
        return None
    # Record use at most once a minute, so reads stay cheap.
    await conn.execute(
        """UPDATE admin_tokens SET last_used_at = now() WHERE token_id = $1
           AND (last_used_at IS NULL OR last_used_at < now() - interval '1 minute')""", row["token_id"])
    return Principal(user_name=row["user_name"], role=row["role"], operator_id=row["operator_id"],
                     token_id=row["token_id"])
