"""The rule-set document: msgspec structs for what the transport bureau writes.

Terms follow GTFS Fares v2 where they fit (rider categories, fare media, fare
products, leg rules, transfer rules, timeframes, areas, networks) and extend it
where county practice needs more: operators and sites, a holiday calendar with
adjusted working days, seasons for scenic-spot prices, fare caps, one entry per
holder per day. Money is integer fen. Times of day are local (Asia/Shanghai).

Every field that is not required has a default, so a missing optional field
never fails anything. :mod:`gateway.rules.validate` checks a document field by
field and reports every problem, not only the first.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

# Identifiers appear in journal rows and on URLs, so they stay plain ASCII.
Id = Annotated[str, Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")]
Text = Annotated[str, Meta(min_length=1, max_length=200)]
Fen = Annotated[int, Meta(ge=0, le=10_000_000)]
Percent = Annotated[int, Meta(ge=0, le=100)]
Age = Annotated[int, Meta(ge=0, le=150)]
Minutes = Annotated[int, Meta(ge=1, le=1440)]
# "07:00-09:00"; "22:00-06:00" wraps past midnight; "24:00" may end an interval.
# Each local day is matched against its own day type, so the 00:00-06:00 part
# of a wrapping interval counts on days of the listed types, not on the day after them.
Interval = Annotated[str, Meta(pattern=r"^\d{2}:\d{2}-\d{2}:\d{2}$")]
# "04-01/10-31": a yearly range of month-days, inclusive; "11-01/03-31" wraps past new year.
MonthDayRange = Annotated[str, Meta(pattern=r"^\d{2}-\d{2}/\d{2}-\d{2}$")]
Medium = Literal["card", "qr"]
DayType = Literal["workday", "weekend", "holiday"]


class _Item(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class RuleSetInfo(_Item, kw_only=True):
    rule_set_id: Id
    name_zh: Text
    name_en: Text
    # True for example data that must not be mistaken for the bureau's real fares.
    illustrative: bool = False
    notes_zh: str = ""
    notes_en: str = ""
    # Only local time of Yiyuan is supported; the field documents it.
    timezone: Literal["Asia/Shanghai"] = "Asia/Shanghai"
    currency: Literal["CNY"] = "CNY"


class Operator(_Item, kw_only=True):
    operator_id: Id
    kind: Literal["bus", "scenic", "venue"]
    name_zh: Text
    name_en: Text


class Network(_Item, kw_only=True):
    network_id: Id
    operator_id: Id
    name_zh: Text
    name_en: Text
    # Route ids as the validators report them; a route belongs to one network.
    routes: list[Id] = []
    # "flat": one fare per boarding (tap kind "board"); "area": tap-on and
    # tap-off, priced by area_fares between the boarding and alighting areas.
    fare_structure: Literal["flat", "area"] = "flat"


class Area(_Item, kw_only=True):
    area_id: Id
    name_zh: Text
    name_en: Text
    # Stop ids as the validators report them; a stop belongs to one area.
    stops: list[Id] = []


class Site(_Item, kw_only=True):
    site_id: Id
    operator_id: Id
    kind: Literal["scenic", "venue"]
    name_zh: Text
    name_en: Text


class Calendar(_Item, kw_only=True):
    # Public holidays (法定节假日): day type "holiday".
    holidays: list[dt.date] = []
    # Adjusted working days (调休上班) that fall on a weekend: day type "workday".
    workdays: list[dt.date] = []


class Timeframe(_Item, kw_only=True):
    timeframe_id: Id
    # Empty: every day type.
    day_types: list[DayType] = []
    intervals: Annotated[list[Interval], Meta(min_length=1)]


class Season(_Item, kw_only=True):
    season_id: Id
    name_zh: Text
    name_en: Text
    periods: Annotated[list[MonthDayRange], Meta(min_length=1)]


class RiderCategory(_Item, kw_only=True):
    category_id: Id
    name_zh: Text
    name_en: Text
    # adult: everyone (exactly one such category, the fallback). elderly and
    # child: by age on the local date of the tap. disabled, priority, student:
    # by the credential's entitlement being valid on that date.
    kind: Literal["adult", "elderly", "child", "disabled", "priority", "student"]
    min_age: Age | None = None
    # Inclusive: max_age = 5 covers riders who have not reached their 6th birthday.
    max_age: Age | None = None
    # priority: the credential's priority_group must be one of these; empty: any group but 0.
    priority_groups: list[Annotated[int, Meta(ge=1, le=255)]] = []
    # Share of the full fare this category pays: 0 free, 50 half, 100 full.
    fare_percent: Percent = 100
    # Limits; each empty list means no limit.
    timeframes: list[Id] = []
    networks: list[Id] = []
    sites: list[Id] = []
    media: list[Medium] = []
    # The validator asks staff to check the rider's identity document.
    identity_check: bool = False


class Product(_Item, kw_only=True):
    product_id: Id
    name_zh: Text
    name_en: Text
    kind: Literal["single_ride", "scenic_ticket", "venue_entry"]
    # Full (adult) fare. Area fares carry their own price and may omit it.
    price_fen: Fen | None = None
    # Scenic tickets: full fare by season id; price_fen applies outside every season.
    season_prices: dict[Id, Fen] = {}
    # Media accepted; empty: all.
    media: list[Medium] = []
    # Per-category override of the category's fare_percent for this product.
    category_percent: dict[Id, Percent] = {}
    # Only these categories may use the product; empty: all.
    eligible_categories: list[Id] = []
    # Default: true for scenic tickets, false otherwise.
    one_entry_per_day: bool | None = None
    identity_check: bool = False


class LegRule(_Item, kw_only=True):
    network_id: Id
    product_id: Id
    # Empty: every route of the network.
    routes: list[Id] = []
    # Empty: at any time. The first matching leg rule in document order wins.
    timeframes: list[Id] = []


class AreaFare(_Item, kw_only=True):
    network_id: Id
    from_area: Id
    to_area: Id
    price_fen: Fen
    product_id: Id
    # Also price the trip from to_area to from_area.
    symmetric: bool = True


class SiteRule(_Item, kw_only=True):
    site_id: Id
    product_id: Id


class TransferRule(_Item, kw_only=True):
    transfer_id: Id
    from_networks: Annotated[list[Id], Meta(min_length=1)]
    to_networks: Annotated[list[Id], Meta(min_length=1)]
    duration_limit_min: Minutes
    # previous_tap: the limit runs from the previous leg's boarding tap;
    # journey_start: from the first leg of the journey.
    measured_from: Literal["previous_tap", "journey_start"] = "previous_tap"
    # Transfers allowed in one journey.
    transfers_max: Annotated[int, Meta(ge=1, le=20)] = 1
    # free: the leg costs 0; fixed: it costs amount_fen; discount: amount_fen off.
    mode: Literal["free", "fixed", "discount"] = "free"
    amount_fen: Fen = 0
    same_category_required: bool = True
    same_medium_required: bool = False


class Cap(_Item, kw_only=True):
    cap_id: Id
    name_zh: Text
    name_en: Text
    networks: Annotated[list[Id], Meta(min_length=1)]
    # day: resets at local midnight; week: Monday 00:00 local; month: the 1st 00:00 local.
    period: Literal["day", "week", "month"]
    amount_fen: Fen
    # Empty: every category.
    categories: list[Id] = []


class TripPolicy(_Item, kw_only=True):
    # A tap-off later than this after its tap-on is not matched to it; the
    # trip keeps the maximum fare charged at the tap-on.
    tap_off_within_min: Minutes = 240


class RuleSetDocument(_Item, kw_only=True):
    rule_set: RuleSetInfo
    operators: Annotated[list[Operator], Meta(min_length=1)]
    rider_categories: Annotated[list[RiderCategory], Meta(min_length=1)]
    products: Annotated[list[Product], Meta(min_length=1)]
    networks: list[Network] = []
    areas: list[Area] = []
    sites: list[Site] = []
    calendar: Calendar = msgspec.field(default_factory=Calendar)
    timeframes: list[Timeframe] = []
    seasons: list[Season] = []
    leg_rules: list[LegRule] = []
    area_fares: list[AreaFare] = []
    site_rules: list[SiteRule] = []
    transfer_rules: list[TransferRule] = []
    caps: list[Cap] = []
    trips: TripPolicy = msgspec.field(default_factory=TripPolicy)
