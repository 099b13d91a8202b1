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

# Columns of taps in table order, as encoded (migration 0001).
TAP_COLUMNS = (
    "tap_id", "business_day", "batch_id", "device_id", "device_tap_id", "tap_time", "received_at", "offline",
    "operator_id", "route_id", "stop_id", "site_id", "tap_kind", "medium", "credential_id", "holder_token",
    "account_token", "decision", "reason", "rider_category", "product_id", "fare_fen", "full_fare_fen",
    "discount_kinds", "rule_set_version", "request_digest",
)
_INTEGERS = {"tap_id", "batch_id", "device_tap_id", "tap_kind", "medium", "decision", "reason", "fare_fen",
             "full_fare_fen", "rule_set_version"}
_TEXTS = {"device_id", "operator_id", "route_id", "stop_id", "site_id", "rider_category", "product_id"}
_BYTES = {"credential_id", "holder_token", "account_token", "request_digest"}
_TIMES = {"tap_time", "received_at"}

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
_EPOCH_DAY = dt.date(1970, 1, 1)
_MICROSECOND = dt.timedelta(microseconds=1)
_INT8 = struct.Struct(">q")
_LENGTH = struct.Struct(">i")


def field(value: bytes | None) -> bytes:
    """Encode one field: 0x00 for NULL, else 0x01, a 4-byte big-endian length and the bytes."""
    if value is None:
        return b"\x00"
    return b"\x01" + _LENGTH.pack(len(value)) + value


def epoch_us(moment: dt.datetime) -> int:
    return (moment - _EPOCH) // _MICROSECOND


def _int8(value: int | None) -> bytes | None:
    return None if value is None else _INT8.pack(value)


def _text(value: str | None) -> bytes | None:
    return None if value is None else value.encode("utf-8")


def _array_dims(values: Sequence[str]) -> str:
    # PostgreSQL's array_dims() of a one-dimensional array; NULL (encoded as "") when empty.
    return f"[1:{len(values)}]" if values else ""


def encode_row(row: Mapping[str, Any]) -> bytes:
    """Return the canonical encoding v1 of one taps row (a mapping of column name to value)."""
    parts = [ROW_ENCODING_VERSION]
    for name in TAP_COLUMNS:
        value = row[name]
        if name in _INTEGERS:
            parts.append(field(_int8(value)))
        elif name in _TEXTS:
            parts.append(field(_text(value)))
        elif name in _BYTES:
            parts.append(field(None if value is None else bytes(value)))
        elif name in _TIMES:
            parts.append(field(None if value is None else _int8(epoch_us(value))))
        elif name == "business_day":
            parts.append(field(None if value is None else _int8((value - _EPOCH_DAY).days)))
        elif name == "offline":
            parts.append(field(None if value is None else (b"\x01" if value else b"\x00")))
        elif name == "discount_kinds":
            kinds = list(value or ())
            parts.append(field(_array_dims(kinds).encode("utf-8")))
            parts.extend(field(_text(kind)) for kind in kinds)
        else:  # pragma: no cover - TAP_COLUMNS and the sets above are kept together
            raise AssertionError(f"column {name} has no encoding")
    return b"".join(parts)


def row_hash(row: Mapping[str, Any]) -> bytes:
    return hashlib.sha256(encode_row(row)).digest()


def batch_digest(batch_id: int, committed_at: dt.datetime, worker: str,
                 pairs: Sequence[tuple[int, bytes]]) -> bytes:
    """Return the digest of a batch: a header, then each (tap_id, row hash) in tap_id order."""
    hasher = hashlib.sha256()
    hasher.update(BATCH_DIGEST_LABEL)
    hasher.update(_INT8.pack(batch_id))
    hasher.update(_INT8.pack(epoch_us(committed_at)))
    hasher.update(field(worker.encode("utf-8")))
    hasher.update(_INT8.pack(len(pairs)))
    for tap_id, hashed in pairs:
        hasher.update(_INT8.pack(tap_id))
        hasher.update(hashed)
    return hasher.digest()


def chain_hash(prev_hash: bytes, digest: bytes) -> bytes:
    return hashlib.sha256(prev_hash + digest).digest()
