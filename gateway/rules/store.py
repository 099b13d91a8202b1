"""Rule-set versions in PostgreSQL: drafts, publication, audit, rollback, and loading for pricing.

Tables (migration gateway/0010): ``rule_set_versions`` and ``rule_set_audit``.
A draft must be a valid document; publishing it sets its effective time and
makes the row immutable (a trigger enforces it). Rollback publishes a copy of
an earlier published version under a new version number. Every change writes
an audit row with the actor and a field-level diff in the same transaction.

Gateways call :func:`load_books` at start and whenever :func:`rules_marker`
returns a new value; a version published with a future effective time is
loaded at once and takes effect by tap time in ``RuleBooks.for_time``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import time
from typing import Any

import asyncpg
import msgspec

from gateway.errors import GatewayError
from gateway.logs import log_event
from gateway.rules.book import RuleBook
from gateway.rules.books import RuleBooks
from gateway.rules.compile import compile_rule_set
from gateway.rules.diff import diff_documents
from gateway.rules.schema import RuleSetDocument
from gateway.rules.validate import document_from_builtins, document_to_builtins, load_rule_set_document
from gateway.timeutil import from_unix_ms, to_unix_ms

log = logging.getLogger(__name__)

# Publishing with an effective time this far in the past is still "now": clocks of
# the admin's machine and the server differ a little.
PAST_TOLERANCE_MS = 5 * 60_000


class RuleStoreError(GatewayError, ValueError):
    """A rule-set version operation is not allowed (bad state or effective time)."""


class RuleVersionNotFound(GatewayError, LookupError):
    """No rule-set version has the number given."""


class VersionInfo(msgspec.Struct, kw_only=True):
    version: int
    rule_set_id: str
    status: str
    note: str
    based_on: int | None
    created_by: str
    created_at: dt.datetime
    updated_at: dt.datetime
    published_by: str | None
    published_at: dt.datetime | None
    effective_from: dt.datetime | None
    digest: str


class VersionRecord(VersionInfo, kw_only=True):
    document: dict[str, Any]
    source_text: str
    source_format: str


class AuditEntry(msgspec.Struct, kw_only=True):
    audit_id: int
    at: dt.datetime
    actor: str
    action: str
    version: int | None
    detail: dict[str, Any]


_INFO_COLUMNS = """version, rule_set_id, status, note, based_on, created_by, created_at, updated_at,
    published_by, published_at, effective_from, digest"""


def canonical_json(plain: dict[str, Any]) -> bytes:
    return msgspec.json.encode(plain, order="sorted")


def _digest(plain: dict[str, Any]) -> bytes:
    return hashlib.sha256(canonical_json(plain)).digest()


def _info(row: asyncpg.Record) -> VersionInfo:
    values = dict(row)
    values["digest"] = values["digest"].hex()
    return VersionInfo(**values)


def _not_found(version: int) -> RuleVersionNotFound:
    return RuleVersionNotFound(f"rule-set version {version} not found", f"找不到票价规则版本 {version}",
                               "list versions with `tapgate rules list` / 用 `tapgate rules list` 查看版本")


async def _audit(conn: asyncpg.Connection, actor: str, action: str, version: int | None,
                 detail: dict[str, Any]) -> None:
    await conn.execute("INSERT INTO rule_set_audit (actor, action, version, detail) VALUES ($1, $2, $3, $4)",
                       actor, action, version, msgspec.json.encode(detail).decode())


def _changes(old: dict[str, Any] | None, new: dict[str, Any]) -> list[dict[str, Any]]:
    return [msgspec.to_builtins(c) for c in diff_documents(old, new)]


def _parse(text: str, fmt: str) -> tuple[RuleSetDocument, dict[str, Any]]:
    doc = load_rule_set_document(text, fmt)
    return doc, document_to_builtins(doc)


async def _document(conn: asyncpg.Connection, version: int) -> dict[str, Any] | None:
    raw = await conn.fetchval("SELECT document FROM rule_set_versions WHERE version = $1", version)
    return None if raw is None else msgspec.json.decode(raw)


async def create_draft(conn: asyncpg.Connection, text: str, fmt: str, actor: str, *, note: str = "",
                       based_on: int | None = None) -> int:
    """Validate ``text`` and store it as a new draft; return its version number."""
    doc, plain = _parse(text, fmt)
    async with conn.transaction():
        base = await _document(conn, based_on) if based_on is not None else None
        if based_on is not None and base is None:
            raise _not_found(based_on)
        version = await conn.fetchval(
            """INSERT INTO rule_set_versions (rule_set_id, document, source_text, source_format, digest, note,
                                              based_on, created_by)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING version""",
            doc.rule_set.rule_set_id, canonical_json(plain).decode(), text, fmt, _digest(plain), note, based_on,
            actor)
        await _audit(conn, actor, "create_draft", version, {"note": note, "based_on": based_on,
                                                            "changes": _changes(base, plain)})
    return version


async def update_draft(conn: asyncpg.Connection, version: int, text: str, fmt: str, actor: str, *,
                       note: str | None = None) -> list[dict[str, Any]]:
    """Replace a draft's document; return the changes made."""
    doc, plain = _parse(text, fmt)
    async with conn.transaction():
        row = await conn.fetchrow("SELECT status, document FROM rule_set_versions WHERE version = $1 FOR UPDATE",
                                  version)
        if row is None:
            raise _not_found(version)
        _require_draft(version, row["status"])
        changes = _changes(msgspec.json.decode(row["document"]), plain)
        await conn.execute(
            """UPDATE rule_set_versions SET rule_set_id = $2, document = $3, source_text = $4, source_format = $5,
                   digest = $6, note = COALESCE($7, note), updated_at = now() WHERE version = $1""",
            version, doc.rule_set.rule_set_id, canonical_json(plain).decode(), text, fmt, _digest(plain), note)
        await _audit(conn, actor, "update_draft", version, {"changes": changes})
    return changes


async def delete_draft(conn: asyncpg.Connection, version: int, actor: str) -> None:
    async with conn.transaction():
        status = await conn.fetchval("SELECT status FROM rule_set_versions WHERE version = $1 FOR UPDATE", version)
        if status is None:
            raise _not_found(version)
        _require_draft(version, status)
        await conn.execute("DELETE FROM rule_set_versions WHERE version = $1", version)
        await _audit(conn, actor, "delete_draft", version, {})


def _require_draft(version: int, status: str) -> None:
    if status != "draft":
        raise RuleStoreError(
            f"rule-set version {version} is published and cannot be changed",
            f"票价规则版本 {version} 已发布，不可修改",
            "create a new draft based on it / 请以它为基础新建草稿")


def _check_effective(effective_from_ms: int, now_ms: int, allow_past: bool) -> None:
    if not allow_past and effective_from_ms < now_ms - PAST_TOLERANCE_MS:
        when = from_unix_ms(effective_from_ms).isoformat()
        raise RuleStoreError(
            f"effective time {when} is in the past; taps already priced would not match the published rules",
            f"生效时间 {when} 早于当前时间；已计价的交易将与发布的规则不一致",
            "choose a time from now on, or confirm a past time explicitly (--allow-past) "
            "/ 请选择当前或将来的时间，或明确确认过去的时间（--allow-past）")


async def publish(conn: asyncpg.Connection, version: int, effective_from_ms: int, actor: str, *,
                  now_ms: int | None = None, allow_past: bool = False) -> VersionInfo:
    """Publish a draft, effective from ``effective_from_ms``; the row is immutable afterwards."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    _check_effective(effective_from_ms, now_ms, allow_past)
    async with conn.transaction():
        row = await conn.fetchrow("SELECT status, document FROM rule_set_versions WHERE version = $1 FOR UPDATE",
                                  version)
        if row is None:
            raise _not_found(version)
        _require_draft(version, row["status"])
        plain = msgspec.json.decode(row["document"])
        # Compiling proves the stored document still passes every check of this code version.
        compile_rule_set(document_from_builtins(plain), version=version)
        previous = await _current_published_document(conn, effective_from_ms)
        await conn.execute(
            """UPDATE rule_set_versions SET status = 'published', published_by = $2, published_at = now(),
                   effective_from = $3, publish_seq = nextval('rule_set_publish_seq'), updated_at = now()
               WHERE version = $1""",
            version, actor, from_unix_ms(effective_from_ms))
        await _audit(conn, actor, "publish", version, {
            "effective_from": from_unix_ms(effective_from_ms).isoformat(),
            "changes_from_version": previous[0] if previous else None,
            "changes": _changes(previous[1] if previous else None, plain)})
        info = await get_info(conn, version)
    log_event(log, logging.INFO, "rules.published", version=version, effective_from_ms=effective_from_ms,
              actor=actor)
    return info


async def _current_published_document(conn: asyncpg.Connection,
                                      at_ms: int) -> tuple[int, dict[str, Any]] | None:
    row = await conn.fetchrow(
        """SELECT version, document FROM rule_set_versions WHERE status = 'published' AND effective_from <= $1
           ORDER BY effective_from DESC, version DESC LIMIT 1""", from_unix_ms(at_ms))
    return None if row is None else (row["version"], msgspec.json.decode(row["document"]))


async def rollback(conn: asyncpg.Connection, to_version: int, effective_from_ms: int, actor: str, *,
                   note: str = "", now_ms: int | None = None, allow_past: bool = False) -> VersionInfo:
    """Publish a copy of published version ``to_version`` as a new version; return the new version."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    _check_effective(effective_from_ms, now_ms, allow_past)
    async with conn.transaction():
        row = await conn.fetchrow(
            "SELECT status, source_text, source_format FROM rule_set_versions WHERE version = $1", to_version)
        if row is None:
            raise _not_found(to_version)
        if row["status"] != "published":
            raise RuleStoreError(f"rule-set version {to_version} is a draft; only published versions can be "
                                 "restored", f"票价规则版本 {to_version} 是草稿，只能回滚到已发布的版本",
                                 "publish the draft instead / 请直接发布该草稿")
        new_version = await create_draft(conn, row["source_text"], row["source_format"], actor,
                                         note=note or f"rollback to version {to_version}", based_on=to_version)
        await _audit(conn, actor, "rollback", new_version, {"restores": to_version})
        info = await publish(conn, new_version, effective_from_ms, actor, now_ms=now_ms, allow_past=True)
    return info


async def list_versions(conn: asyncpg.Connection, status: str | None = None) -> list[VersionInfo]:
    rows = await conn.fetch(
        f"SELECT {_INFO_COLUMNS} FROM rule_set_versions WHERE $1::text IS NULL OR status = $1 ORDER BY version",
        status)
    return [_info(row) for row in rows]


async def get_info(conn: asyncpg.Connection, version: int) -> VersionInfo:
    row = await conn.fetchrow(f"SELECT {_INFO_COLUMNS} FROM rule_set_versions WHERE version = $1", version)
    if row is None:
        raise _not_found(version)
    return _info(row)


async def get_version(conn: asyncpg.Connection, version: int) -> VersionRecord:
    row = await conn.fetchrow(
        f"SELECT {_INFO_COLUMNS}, document, source_text, source_format FROM rule_set_versions WHERE version = $1",
        version)
    if row is None:
        raise _not_found(version)
    values = dict(row)
    values["digest"] = values["digest"].hex()
    values["document"] = msgspec.json.decode(values["document"])
    return VersionRecord(**values)


async def audit_log(conn: asyncpg.Connection, version: int | None = None, limit: int = 100) -> list[AuditEntry]:
    rows = await conn.fetch(
        """SELECT audit_id, at, actor, action, version, detail FROM rule_set_audit
           WHERE $1::integer IS NULL OR version = $1 ORDER BY audit_id DESC LIMIT $2""", version, limit)
    return [AuditEntry(audit_id=r["audit_id"], at=r["at"], actor=r["actor"], action=r["action"],
                       version=r["version"], detail=msgspec.json.decode(r["detail"])) for r in rows]


async def rules_marker(conn: asyncpg.Connection) -> int:
    """Return a number that grows with every publication (0 before the first)."""
    return await conn.fetchval(
        "SELECT COALESCE(max(publish_seq), 0) FROM rule_set_versions WHERE status = 'published'")


async def rules_changed_since(conn: asyncpg.Connection, marker: int) -> bool:
    return await rules_marker(conn) != marker


# Compiled books by (version, digest, effective time): published rows never
# change, so a reload compiles only versions that are new to this process.
_compiled: dict[tuple[int, bytes, int], RuleBook] = {}


async def load_books(conn: asyncpg.Connection) -> RuleBooks:
    """Load and compile every published version; ``books.marker`` is the marker they match.

    Raises :class:`~gateway.rules.validate.RuleSetError` if a stored version no
    longer passes this code's checks. A running gateway should then keep the
    books it has and log the error, rather than price with a version missing.
    """
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        marker = await rules_marker(conn)
        rows = await conn.fetch(
            """SELECT version, digest, effective_from, document FROM rule_set_versions
               WHERE status = 'published' ORDER BY effective_from, version""")
    books = []
    for row in rows:
        effective_from_ms = to_unix_ms(row["effective_from"])
        key = (row["version"], bytes(row["digest"]), effective_from_ms)
        book = _compiled.get(key)
        if book is None:
            doc = document_from_builtins(msgspec.json.decode(row["document"]))
            book = compile_rule_set(doc, version=row["version"], effective_from_ms=effective_from_ms)
            _compiled[key] = book
        books.append(book)
    return RuleBooks(books, marker=marker)
