"""Bodies of the device API as msgspec structs: what a validator sends and what it gets back.

Unknown fields are rejected, so a misspelt field name is reported instead of
silently ignored. The same structs decode JSON and MessagePack.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

# Device tap ids are signed 64-bit in the journal.
_Int64 = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
# Journal times are PostgreSQL timestamps: Unix milliseconds up to the end of year 9999.
_TimeMs = Annotated[int, msgspec.Meta(ge=0, le=253_402_300_799_999)]
# PostgreSQL text cannot hold NUL, so an id with one is refused here rather than failing the journal write.
_Id = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern="^[^\\x00]+$")]

TAP_KINDS = {"board": 0, "on": 1, "off": 2, "entry": 3}
MEDIA = {"card": 1, "qr": 2}


class TapRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    # The device's own id for the tap, unique per device; a retry reuses it.
    tap_id: _Int64
    # When the tap happened, Unix milliseconds (the device's clock).
    tap_time_ms: _TimeMs
    medium: Literal["card", "qr"]
    # QR: the scanned text. Card: the card's raw response, standard base64.
    presented: Annotated[str, msgspec.Meta(min_length=1, max_length=8192)]
    tap_kind: Literal["board", "on", "off", "entry"]
    route_id: _Id | None = None
    stop_id: _Id | None = None
    site_id: _Id | None = None
    # True for a tap recorded while the device had no connection.
    offline: bool = False


class TapBatchRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    taps: list[TapRequest]


class TapResponse(msgspec.Struct, kw_only=True):
    tap_id: int
    # The gateway's id of the journal row; null when nothing was journaled (conflict).
    journal_id: int | None
    decision: Literal["accepted", "rejected"]
    reason: int
    reason_name: str
    fare_fen: int
    full_fare_fen: int
    rider_category: str | None
    display_zh: str
    display_en: str
    server_time_ms: int
    # "new", "retry" (the stored response to an earlier upload of this tap) or "conflict" (batch responses).
    status: str = "new"
    # A county-line tap-off's correction (zero or negative) of the maximum fare charged at its tap-on.
    adjustment_fen: int = 0


class TapBatchResponse(msgspec.Struct, kw_only=True):
    results: list[TapResponse]
    server_time_ms: int


class DenyEntry(msgspec.Struct, kw_only=True):
    kind: str
    # Hex of the credential id (card_lost, credential_revoked) or the account token (arrears).
    subject: str
    active: bool
    version: int


class DenyListResponse(msgspec.Struct, kw_only=True):
    since: int
    # Highest version included; pass it as ``since`` next time.
    version: int
    entries: list[DenyEntry]
    # True when more entries changed than one response contains; request again with ``since=version``.
    more: bool = False


class ErrorDetail(msgspec.Struct, kw_only=True, omit_defaults=True):
    code: str
    message_zh: str
    message_en: str
    field: str | None = None


class ErrorBody(msgspec.Struct, kw_only=True):
    error: ErrorDetail
