"""Inputs and outputs of pricing: the request, the price and the rider's state.

``RiderState`` is everything pricing needs to remember about one holder
between taps: the last leg (for transfers), an open tap-on trip (for the
tap-off), spending towards caps in the current periods, and today's site
entries (one entry per day). It is small, immutable and encoded with msgspec
MessagePack as arrays, so the gateway can store it per holder in PostgreSQL.
"""

from __future__ import annotations

from typing import Any

import msgspec

TAP_KINDS = ("board", "on", "off", "entry")
# The journal stores tap kinds and media as small integers.
TAP_KIND_CODES = {"board": 0, "on": 1, "off": 2, "entry": 3}
MEDIUM_CARD = 1
MEDIUM_QR = 2
MEDIUM_CODES = {"card": MEDIUM_CARD, "qr": MEDIUM_QR}


class PricingRequest(msgspec.Struct, kw_only=True, gc=False):
    """One tap to price. ``entitlements`` is any object with the attributes
    ``birth_date``, ``disability_until``, ``priority_until``, ``student_until``
    (``datetime.date`` or None) and ``priority_group`` (int), or None."""

    tap_time_ms: int
    tap_kind: str = "board"
    medium: int = MEDIUM_CARD
    operator_id: str | None = None
    route_id: str | None = None
    stop_id: str | None = None
    site_id: str | None = None
    holder_token: bytes = b""
    entitlements: Any = None


class Price(msgspec.Struct, kw_only=True, gc=False):
    """The price of one tap.

    ``fare_fen`` is charged for this tap and ``full_fare_fen`` is what an
    adult without discounts would pay; settlement claims the difference as a
    subsidy by ``rider_category``. A tap-off that closes a trip charges
    nothing new: ``adjustment_fen`` (zero or negative) corrects the maximum
    fare charged at the tap-on to the fare of the trip, and
    ``full_fare_adjustment_fen`` does the same for the full fare.
    """

    reason: int
    fare_fen: int = 0
    full_fare_fen: int = 0
    rider_category: str | None = None
    product_id: str | None = None
    discount_kinds: tuple[str, ...] = ()
    display_zh: str = ""
    display_en: str = ""
    rule_set_version: int | None = None
    # The journal stores both in taps (gateway migration 0026), and settlement
    # charges fare_fen + adjustment_fen.
    adjustment_fen: int = 0
    full_fare_adjustment_fen: int = 0
    # The rider's previous tap-on had no tap-off, so its maximum fare remains charged.
    unmatched_trip_closed: bool = False

    @property
    def accepted(self) -> bool:
        return self.reason == 0


class LegRecord(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """The rider's last boarding: what a transfer is measured from."""

    tap_time_ms: int
    network_id: str
    category_id: str
    medium: int
    journey_start_ms: int
    transfers: int


class OpenTrip(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """A tap-on on an area network still waiting for its tap-off."""

    on_time_ms: int
    network_id: str
    area_id: str
    charged_fen: int
    full_fare_fen: int
    category_id: str
    product_id: str
    # Transfer rule applied at the tap-on, or "" when the leg was not a transfer.
    transfer_id: str


class CapSpend(msgspec.Struct, array_like=True, frozen=True, gc=False):
    cap_id: str
    # Local epoch day (day caps), epoch day of the Monday (week caps) or year * 12 + month - 1.
    period_key: int
    spent_fen: int


class SiteEntry(msgspec.Struct, array_like=True, frozen=True, gc=False):
    site_id: str
    epoch_day: int


class RiderState(msgspec.Struct, array_like=True, frozen=True, gc=False):
    last_leg: LegRecord | None = None
    open_trip: OpenTrip | None = None
    caps: tuple[CapSpend, ...] = ()
    entries: tuple[SiteEntry, ...] = ()

    def encode(self) -> bytes:
        return _encoder.encode(self)

    @classmethod
    def decode(cls, data: bytes) -> "RiderState":
        return _decoder.decode(data)


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(RiderState)
EMPTY_STATE = RiderState()
