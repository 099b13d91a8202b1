"""Canonical encoding of journal rows and batches, for the hash chain.

The same encoding is computed in PostgreSQL when a batch commits
(``tapgate_tap_encoding_v2`` and ``tapgate_journal_commit`` in migration
0026; encoding v1 in 0020) and here, independently, when the chain is
verified. Keep both in step. A change needs a new encoding version, recorded
per batch in ``journal_batches.encoding_version`` and named in the batch
digest's label. docs/journal.md describes the format.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import struct
from typing import Any, Mapping, Sequence

GENESIS_HASH = bytes(32)
# The encoding that new batches use; batches committed before migration 0026 use 1.
ENCODING_VERSION = 2

# Encoding v1: the columns of taps of migration 0001 in table order, with their PostgreSQL type OIDs.
TAP_COLUMN_TYPES_V1 = (
    ("tap_id", 20), ("business_day", 1082), ("batch_id", 20), ("device_id", 25), ("device_tap_id", 20),
    ("tap_time", 1184), ("received_at", 1184), ("offline", 16), ("operator_id", 25), ("route_id", 25),
    ("stop_id", 25), ("site_id", 25), ("tap_kind", 21), ("medium", 21), ("credential_id", 17),
    ("holder_token", 17), ("account_token", 17), ("decision", 21), ("reason", 21), ("rider_category", 25),
    ("product_id", 25), ("fare_fen", 23), ("full_fare_fen", 23), ("discount_kinds", 1009),
    ("rule_set_version", 23), ("request_digest", 17),
)
# Encoding v2 (migration 0026) adds the tap-off adjustments.
TAP_COLUMN_TYPES_V2 = TAP_COLUMN_TYPES_V1 + (("adjustment_fen", 23), ("full_fare_adjustment_fen", 23))
COLUMN_TYPES = {1: TAP_COLUMN_TYPES_V1, 2: TAP_COLUMN_TYPES_V2}
# Columns that a v1 row must hold as 0, because they did not exist when it was hashed.
UNHASHED_IN_V1 = ("adjustment_fen", "full_fare_adjustment_fen")
# Every column that some encoding covers, for reading rows to verify.
TAP_COLUMNS = tuple(name for name, _ in TAP_COLUMN_TYPES_V2)
BATCH_DIGEST_LABELS = {1: b"tapgate.batch.v1", 2: b"tapgate.batch.v2"}
BATCH_DIGEST_LABEL = BATCH_DIGEST_LABELS[ENCODING_VERSION]

_INT8 = struct.Struct(">q")
_INT4 = struct.Struct(">i")
_INT2 = struct.Struct(">h")
_TEXT_OID = 25
# PostgreSQL's epoch for dates and timestamps in its binary format.
_PG_EPOCH = dt.datetime(2000, 1, 1, tzinfo=dt.timezone.utc)
_PG_EPOCH_DAY = dt.date(2000, 1, 1)
_MICROSECOND = dt.timedelta(microseconds=1)


def field(value: bytes | None) -> bytes:
    """Encode one field of the batch header: 0x00 for NULL, else 0x01, a 4-byte big-endian length and the bytes."""
    if value is None:
        return b"\x00"
    return b"\x01" + _INT4.pack(len(value)) + value


def timestamp_bytes(moment: dt.datetime) -> bytes:
    """Return PostgreSQL's timestamptz_send(): microseconds since 2000-01-01 UTC, 8 bytes big-endian."""
    return _INT8.pack((moment - _PG_EPOCH) // _MICROSECOND)


def _array_shape(values: Sequence[Any]) -> tuple[list[int], list[Any]]:
    # Dimensions and flattened elements of a (possibly nested) list, as asyncpg returns arrays.
    dims: list[int] = []
    level: Any = values
    while isinstance(level, (list, tuple)):
        dims.append(len(level))
        if not level:
            break
        level = level[0]
    flat: list[Any] = []

    def walk(items: Any, depth: int) -> None:
        for item in items:
            if depth + 1 < len(dims):
                walk(item, depth + 1)
            else:
                flat.append(item)

    walk(values, 0)
    return ([] if dims == [0] else dims), flat


def text_array_bytes(values: Sequence[Any]) -> bytes:
    """Return PostgreSQL's array_send() of a text[] value whose lower bounds are 1."""
    dims, flat = _array_shape(values)
    parts = [_INT4.pack(len(dims)), _INT4.pack(1 if any(v is None for v in flat) else 0), _INT4.pack(_TEXT_OID)]
    for size in dims:
        parts.append(_INT4.pack(size) + _INT4.pack(1))
    for value in flat:
        if value is None:
            parts.append(_INT4.pack(-1))
        else:
            data = value.encode("utf-8")
            parts.append(_INT4.pack(len(data)) + data)
    return b"".join(parts)


def _send(oid: int, value: Any) -> bytes:
    # The binary send format of one value of the given type.
    if oid == 20:
        return _INT8.pack(value)
    if oid == 23:
        return _INT4.pack(value)
    if oid == 21:
        return _INT2.pack(value)
    if oid == 25:
        return value.encode("utf-8")
    if oid == 17:
        return bytes(value)
    if oid == 1184:
        return timestamp_bytes(value)
    if oid == 1082:
        return _INT4.pack((value - _PG_EPOCH_DAY).days)
    if oid == 16:
        return b"\x01" if value else b"\x00"
    if oid == 1009:
        return text_array_bytes(value)
    raise AssertionError(f"type {oid} has no encoding")  # pragma: no cover - COLUMN_TYPES uses only the above


def _column_types(version: int) -> tuple[tuple[str, int], ...]:
    try:
        return COLUMN_TYPES[version]
    except KeyError:
        raise ValueError(f"row encoding version {version} is unknown: expected one of {sorted(COLUMN_TYPES)}") from None


def encode_row(row: Mapping[str, Any], version: int = ENCODING_VERSION) -> bytes:
    """Return the canonical encoding ``version`` of one taps row (a mapping of column name to value).

    It is PostgreSQL's record_send() of the row's columns: the column count,
    then per column its type OID, its length (-1 for NULL) and its value in
    binary send format, all integers big-endian. Version 1 covers the 26
    columns of migration 0001, version 2 adds the two adjustments.
    """
    column_types = _column_types(version)
    parts = [_INT4.pack(len(column_types))]
    for name, oid in column_types:
        value = row[name]
        if value is None:
            parts.append(_INT4.pack(oid) + _INT4.pack(-1))
        else:
            data = _send(oid, value)
            parts.append(_INT4.pack(oid) + _INT4.pack(len(data)) + data)
    return b"".join(parts)


def row_hash(row: Mapping[str, Any], version: int = ENCODING_VERSION) -> bytes:
    return hashlib.sha256(encode_row(row, version)).digest()


def batch_digest(batch_id: int, committed_at: dt.datetime, worker: str,
                 pairs: Sequence[tuple[int, bytes]], version: int = ENCODING_VERSION) -> bytes:
    """Return the digest of a batch: a header, then each (tap_id, row hash) in tap_id order.

    The header starts with the label of the batch's row encoding
    (``tapgate.batch.v1`` or ``tapgate.batch.v2``).
    """
    _column_types(version)
    hasher = hashlib.sha256()
    hasher.update(BATCH_DIGEST_LABELS[version])
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
