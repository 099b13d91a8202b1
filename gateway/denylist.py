"""Deny lists: lost cards, revoked credentials and accounts in arrears.

The table ``deny_list`` (migration 0001) holds one row per (kind, subject);
an entry is removed by deactivating it, never by deleting it. Every change
takes a new version, numbered in commit order (migration 0021), so a reader
that has applied every change up to version N can request ``version > N``
and miss nothing. Workers keep the active entries in memory
(:class:`DenyList`) and refresh them by such deltas. Validators with an
offline mode fetch the same deltas over HTTP (:func:`delta`).

Subjects are 16 bytes: the credential id for ``card_lost`` and
``credential_revoked``, the account token for ``arrears``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt

import asyncpg

from gateway import metrics
from gateway.errors import GatewayError
from gateway.reasons import Reason

CARD_LOST = "card_lost"
CREDENTIAL_REVOKED = "credential_revoked"
ARREARS = "arrears"
KINDS = (CARD_LOST, CREDENTIAL_REVOKED, ARREARS)
SUBJECT_BYTES = 16

# Entries returned by one delta at most; the caller asks again from the returned version.
DELTA_LIMIT = 10_000


class DenyListError(GatewayError, ValueError):
    """A deny-list kind, subject or source is invalid."""


@dataclasses.dataclass(frozen=True, slots=True)
class DenyEntry:
    kind: str
    subject: bytes
    active: bool
    version: int
    changed_at: dt.datetime | None = None
    source: str = ""


@dataclasses.dataclass(frozen=True, slots=True)
class DenyDelta:
    """Changes with a version above ``since``, oldest first.

    ``version`` is the highest version included (``since`` if there is none);
    pass it as the next ``since``. ``more`` is true if the limit cut the list short.
    """

    since: int
    version: int
    entries: list[DenyEntry]
    more: bool


def check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise DenyListError(f"unknown deny-list kind {kind!r}: expected one of {', '.join(KINDS)}",
                            f"未知的黑名单类型 {kind!r}，应为 {', '.join(KINDS)} 之一")
    return kind


def check_subject(kind: str, subject: bytes) -> bytes:
    if len(subject) != SUBJECT_BYTES:
        expected = "account token" if kind == ARREARS else "credential id"
        expected_zh = "账户标识" if kind == ARREARS else "凭证编号"
        raise DenyListError(
            f"a {kind} subject is a {SUBJECT_BYTES}-byte {expected}, got {len(subject)} bytes ({subject.hex()})",
            f"{kind} 的对象应为 {SUBJECT_BYTES} 字节的{expected_zh}，实际 {len(subject)} 字节（{subject.hex()}）")
    return bytes(subject)


async def delta(conn: asyncpg.Connection, since: int, limit: int = DELTA_LIMIT) -> DenyDelta:
    """Return the entries changed after version ``since``, at most ``limit`` of them.

    With ``since == 0`` (a new reader) only active entries are returned: a
    reader that never held an entry does not need its removal.
    """
    if since < 0:
        raise DenyListError(f"since={since}: expected a deny-list version of 0 or more",
                            f"since={since}：版本号应不小于 0")
    rows = await conn.fetch(
        "SELECT kind, subject, active, version, changed_at, source FROM deny_list "
        "WHERE version > $1 AND (active OR $1 > 0) ORDER BY version LIMIT $2", since, limit + 1)
    more = len(rows) > limit
    entries = [DenyEntry(row["kind"], bytes(row["subject"]), row["active"], row["version"], row["changed_at"],
                         row["source"]) for row in rows[:limit]]
    return DenyDelta(since, entries[-1].version if entries else since, entries, more)


async def add_entry(conn: asyncpg.Connection, kind: str, subject: bytes, source: str) -> int:
    """Add (or reactivate) an entry and return its new version.

    ``source`` names who reported it, for example the card issuer's report
    number. It is stored and shown by ``tapgate deny list``.
    """
    check_kind(kind)
    check_subject(kind, subject)
    if not source.strip():
        raise DenyListError("a deny-list entry needs a source (who reported it)", "黑名单记录须注明来源（报告方）")
    return await conn.fetchval(
        """INSERT INTO deny_list (kind, subject, active, source) VALUES ($1, $2, true, $3)
           ON CONFLICT (kind, subject) DO UPDATE SET active = true, source = EXCLUDED.source
           RETURNING version""", kind, subject, source)


async def remove_entry(conn: asyncpg.Connection, kind: str, subject: bytes, source: str) -> int | None:
    """Deactivate an active entry and return its new version, or None if no active entry matched."""
    check_kind(kind)
    check_subject(kind, subject)
    return await conn.fetchval(
        "UPDATE deny_list SET active = false, source = $3 WHERE kind = $1 AND subject = $2 AND active "
        "RETURNING version", kind, subject, source)


async def list_entries(conn: asyncpg.Connection, kind: str | None = None, *,
                       include_inactive: bool = False) -> list[DenyEntry]:
    """Return the entries (active only, unless asked), newest change first."""
    if kind is not None:
        check_kind(kind)
    rows = await conn.fetch(
        "SELECT kind, subject, active, version, changed_at, source FROM deny_list "
        "WHERE ($1::text IS NULL OR kind = $1) AND (active OR $2) ORDER BY version DESC", kind, include_inactive)
    return [DenyEntry(row["kind"], bytes(row["subject"]), row["active"], row["version"], row["changed_at"],
                      row["source"]) for row in rows]


class DenyList:
    """The active deny-list entries of one worker, in memory.

    :meth:`check` runs on every tap and never touches PostgreSQL;
    :meth:`refresh` applies the changes since the last refresh.
    """

    def __init__(self) -> None:
        self.version = 0
        self._lost: set[bytes] = set()
        self._revoked: set[bytes] = set()
        self._arrears: set[bytes] = set()
        self._sets = {CARD_LOST: self._lost, CREDENTIAL_REVOKED: self._revoked, ARREARS: self._arrears}

    def check(self, credential_id: bytes | None, account_token: bytes | None) -> int:
        """Return the reason code that rejects this credential or account, or 0."""
        if credential_id is not None:
            if credential_id in self._lost:
                return Reason.CARD_REPORTED_LOST
            if credential_id in self._revoked:
                return Reason.CREDENTIAL_REVOKED
        if account_token is not None and account_token in self._arrears:
            return Reason.ACCOUNT_IN_ARREARS
        return 0

    def apply(self, entries: list[DenyEntry]) -> None:
        """Apply changes in version order; older versions than the one held are ignored."""
        for entry in entries:
            if entry.version <= self.version:
                continue
            members = self._sets.get(entry.kind)
            if members is not None:
                if entry.active:
                    members.add(entry.subject)
                else:
                    members.discard(entry.subject)
            self.version = entry.version

    async def refresh(self, conn: asyncpg.Connection) -> int:
        """Fetch and apply every change since the last refresh; return how many were applied."""
        applied = 0
        while True:
            changes = await delta(conn, self.version)
            self.apply(changes.entries)
            applied += len(changes.entries)
            if not changes.more:
                break
        if applied:
            metrics.DENY_LIST_VERSION.set(self.version)
            for kind, members in self._sets.items():
                metrics.DENY_LIST_ENTRIES.labels(kind).set(len(members))
        return applied

    def counts(self) -> dict[str, int]:
        return {kind: len(members) for kind, members in self._sets.items()}
