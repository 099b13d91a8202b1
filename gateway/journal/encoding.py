"""Canonical encoding of journal rows and batches, for the hash chain.

The same encoding is computed in PostgreSQL when a batch commits
(``tapgate_tap_encoding`` and ``tapgate_journal_commit`` in migration 0020)
and here, independently, when the chain is verified. Keep both in step; a
change needs a new version byte. docs/journal.md gives the format.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import struct
from typing import Any, Mapping, Sequence

ROW_ENCODING_VERSION = b"\x01"
BATCH_DIGEST_LABEL = b"tapgate.batch.v1"
GENESIS_HASH = bytes(32)

# Columns of taps in table order (migration 0001), with how each is encoded.
TAP_COLUMNS = (
    "tap_id", "business_day", "batch_id", "device_id", "device_tap_id", "tap_time", "received_at", "offline",
    "operator_id", "route_id", "stop_id", "site_id", "tap_kind", "medium", "credential_id", "holder_token",
    "account_token", "decision", "reason", "rider_category", "product_id", "fare_fen", "full_fare_fen",
    "discount_kinds", "rule_set_version", "request_digest",
)
_INT8 = struct.Struct(">q")
_INT4 = struct.Struct(">i")
_INT2 = struct.Struct(">h")
_BIGINTS = {"tap_id", "batch_id", "device_tap_id"}
_INTEGERS = {"fare_fen", "full_fare_fen", "rule_set_version"}
_SMALLINTS = {"tap_kind", "medium", "decision", "reason"}
_TEXTS = {"device_id", "operator_id", "route_id", "stop_id", "site_id", "rider_category", "product_id"}
_BYTES = {"credential_id", "holder_token", "account_token", "request_digest"}
_TIMES = {"tap_time", "received_at"}

# PostgreSQL's epoch for dates and timestamps in its binary format.
_PG_EPOCH = dt.datetime(2000, 1, 1, tzinfo=dt.timezone.utc)
_PG_EPOCH_DAY = dt.date(2000, 1, 1)
_MICROSECOND = dt.timedelta(microseconds=1)


def field(value: bytes | None) -> bytes:
    """Encode one field: 0x00 for NULL, else 0x01, a 4-byte big-endian length and the bytes."""
    if value is None:
        return b"\x00"
    return b"\x01" + _INT4.pack(len(value)) + value


def timestamp_bytes(moment: dt.datetime) -> bytes:
    """Return PostgreSQL's timestamptz_send(): microseconds since 2000-01-01 UTC, 8 bytes big-endian."""
    return _INT8.pack((moment - _PG_EPOCH) // _MICROSECOND)


def _array_element(value: str | None) -> str:
    # PostgreSQL's array_out() quoting of one text element.
    if value is None:
        return "NULL"
    if value == "" or value.upper() == "NULL" or any(ch in '{},"\\ \t\n\r\v\f' for ch in value):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return value


def array_text(values: Sequence[Any]) -> str:
    """Return the text form of a text[] value as PostgreSQL prints it (lower bounds of 1)."""
    parts = [array_text(v) if isinstance(v, (list, tuple)) else _array_element(v) for v in values]
    return "{" + ",".join(parts) + "}"


def _encode_column(name: str, value: Any) -> bytes | None:
    if value is None:
        return None
    if name in _BIGINTS:
        return _INT8.pack(value)
    if name in _INTEGERS:
        return _INT4.pack(value)
    if name in _SMALLINTS:
        return _INT2.pack(value)
    if name in _TEXTS:
        return value.encode("utf-8")
    if name in _BYTES:
        return bytes(value)
    if name in _TIMES:
        return timestamp_bytes(value)
    if name == "business_day":
        return _INT4.pack((value - _PG_EPOCH_DAY).days)
    if name == "offline":
        return b"\x01" if value else b"\x00"
    if name == "discount_kinds":
        return array_text(value).encode("utf-8")
    raise AssertionError(f"column {name} has no encoding")  # pragma: no cover - the sets above cover TAP_COLUMNS


def encode_row(row: Mapping[str, Any]) -> bytes:
    """Return the canonical encoding v1 of one taps row (a mapping of column name to value)."""
    return ROW_ENCODING_VERSION + b"".join(field(_encode_column(name, row[name])) for name in TAP_COLUMNS)


def row_hash(row: Mapping[str, Any]) -> bytes:
    return hashlib.sha256(encode_row(row)).digest()


def batch_digest(batch_id: int, committed_at: dt.datetime, worker: str,
                 pairs: Sequence[tuple[int, bytes]]) -> bytes:
    """Return the digest of a batch: a header, then each (tap_id, row hash) in tap_id order."""
    hasher = hashlib.sha256()
    hasher.update(BATCH_DIGEST_LABEL)
    hasher.update(_INT8.pack(batch_id))
    hasher.update(timestamp_bytes(committed_at))
    hasher.update(field(worker.encode("utf-8")))
    hasher.update(_INT8.pack(len(pairs)))
    for tap_id, hashed in pairs:
        hasher.update(_INT8.pack(tap_id))
        hasher.update(hashed)
    return hasher.digest()


def chain_hash(prev_hash: bytes, digest: bytes) -> bytes:
    return hashlib.sha256(prev_hash + digest).digest()
