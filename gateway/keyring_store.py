"""Issuer public keys from PostgreSQL, with a marker that changes whenever any key row changes.

Workers poll :func:`load_issuer_keys_if_changed` every refresh interval
(``server.refresh_interval_s``, 1 s by default), so a key added, retired or
revoked reaches every worker within two seconds without a restart. The table
contains a handful of rows, so each poll reads them all. The marker is a
SHA-256 over every row, which catches any change whether or not the writer
bumped the ``version`` column.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import struct

import asyncpg

from gateway.timeutil import to_unix_ms


@dataclasses.dataclass(frozen=True, slots=True)
class IssuerKeyRow:
    key_id: int
    public_key: bytes
    # "active", "retired" (verifies credentials issued before retired_at) or "revoked"
    status: str
    retired_at: dt.datetime | None
    revoked_at: dt.datetime | None
    version: int

    @property
    def retired_at_ms(self) -> int | None:
        return None if self.retired_at is None else to_unix_ms(self.retired_at)


@dataclasses.dataclass(frozen=True, slots=True)
class IssuerKeySet:
    marker: bytes
    keys: tuple[IssuerKeyRow, ...]


def _marker(keys: tuple[IssuerKeyRow, ...]) -> bytes:
    hasher = hashlib.sha256(b"tapgate.issuer_keys.v1")
    for key in keys:
        retired = -1 if key.retired_at is None else to_unix_ms(key.retired_at)
        revoked = -1 if key.revoked_at is None else to_unix_ms(key.revoked_at)
        status = key.status.encode()
        hasher.update(struct.pack(">iqqqB", key.key_id, retired, revoked, key.version, len(status)))
        hasher.update(status)
        hasher.update(key.public_key)
    return hasher.digest()


async def load_issuer_keys(conn: asyncpg.Connection) -> IssuerKeySet:
    """Return every issuer key, ordered by key id, with the set's marker."""
    rows = await conn.fetch(
        "SELECT key_id, public_key, status, retired_at, revoked_at, version FROM issuer_keys ORDER BY key_id")
    keys = tuple(IssuerKeyRow(row["key_id"], bytes(row["public_key"]), row["status"], row["retired_at"],
                              row["revoked_at"], row["version"]) for row in rows)
    return IssuerKeySet(_marker(keys), keys)


async def load_issuer_keys_if_changed(conn: asyncpg.Connection, marker: bytes | None) -> IssuerKeySet | None:
    """Return the keys if their marker differs from ``marker``, else None."""
    keyset = await load_issuer_keys(conn)
    return None if keyset.marker == marker else keyset


def build_key_ring(keyset: IssuerKeySet):  # -> fastpath.KeyRing
    """Return a ``fastpath.KeyRing`` holding every key of ``keyset``.

    A retired key without a retirement time is added as retired at the
    moment of loading, so it verifies no credential issued afterwards.
    """
    import fastpath

    ring = fastpath.KeyRing()
    now_ms = to_unix_ms(dt.datetime.now(dt.timezone.utc))
    for key in keyset.keys:
        retired_at_ms = None
        if key.status == "retired":
            retired_at_ms = key.retired_at_ms if key.retired_at_ms is not None else now_ms
        ring.add(key.key_id, key.public_key, key.status, retired_at_ms)
    return ring
