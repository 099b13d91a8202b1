"""Lookup structures that a rule set compiles into (see :mod:`gateway.rules.compile`).

Plain classes with ``__slots__``: pricing reads their attributes and dicts and
never walks the document.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

# Day types index the per-day-type minute maps of a timeframe.
WORKDAY, WEEKEND, HOLIDAY = 0, 1, 2
DAY_TYPES = {"workday": WORKDAY, "weekend": WEEKEND, "holiday": HOLIDAY}

KIND_ADULT, KIND_ELDERLY, KIND_CHILD, KIND_DISABLED, KIND_PRIORITY, KIND_STUDENT = range(6)
CATEGORY_KINDS = {"adult": KIND_ADULT, "elderly": KIND_ELDERLY, "child": KIND_CHILD,
                  "disabled": KIND_DISABLED, "priority": KIND_PRIORITY, "student": KIND_STUDENT}

PERIOD_DAY, PERIOD_WEEK, PERIOD_MONTH = 0, 1, 2


class CTimeframe:
    """A timeframe as one 1440-byte minute map per day type (1 = inside)."""

    __slots__ = ("timeframe_id", "maps")

    def __init__(self, timeframe_id: str, maps: tuple[bytes, bytes, bytes]) -> None:
        self.timeframe_id = timeframe_id
        self.maps = maps


class CCategory:
    __slots__ = ("category_id", "kind", "min_age", "max_age", "groups", "percent", "timeframes",
                 "networks", "sites", "media", "identity_check", "name_zh", "name_en", "order")

    def __init__(self, **values: Any) -> None:
        for name in self.__slots__:
            setattr(self, name, values[name])


class CProduct:
    __slots__ = ("product_id", "kind", "price_fen", "season_prices", "media", "category_percent",
                 "eligible", "one_entry_per_day", "identity_check", "name_zh", "name_en")

    def __init__(self, **values: Any) -> None:
        for name in self.__slots__:
            setattr(self, name, values[name])


class CLegOption:
    """One flat leg rule of a route: the product if any of the timeframes is active."""

    __slots__ = ("timeframes", "product")

    def __init__(self, timeframes: tuple[CTimeframe, ...], product: CProduct) -> None:
        self.timeframes = timeframes
        self.product = product


class CRoute:
    __slots__ = ("route_id", "network_id", "operator_id", "area_based", "leg_options")

    def __init__(self, route_id: str, network_id: str, operator_id: str, area_based: bool,
                 leg_options: tuple[CLegOption, ...]) -> None:
        self.route_id = route_id
        self.network_id = network_id
        self.operator_id = operator_id
        self.area_based = area_based
        self.leg_options = leg_options


class CAreaFare:
    __slots__ = ("price_fen", "product")

    def __init__(self, price_fen: int, product: CProduct) -> None:
        self.price_fen = price_fen
        self.product = product


class CSite:
    __slots__ = ("site_id", "operator_id", "product")

    def __init__(self, site_id: str, operator_id: str, product: CProduct) -> None:
        self.site_id = site_id
        self.operator_id = operator_id
        self.product = product


class CTransfer:
    __slots__ = ("transfer_id", "limit_ms", "from_journey_start", "transfers_max", "mode", "amount_fen",
                 "same_category", "same_medium")

    def __init__(self, **values: Any) -> None:
        for name in self.__slots__:
            setattr(self, name, values[name])

    def leg_fare(self, category_fare: int) -> int:
        """Return what the leg costs as a transfer, never more than without it."""
        if self.mode == "free":
            return 0
        if self.mode == "fixed":
            return min(category_fare, self.amount_fen)
        return max(0, category_fare - self.amount_fen)


class CCap:
    __slots__ = ("cap_id", "period", "amount_fen", "categories", "name_zh", "name_en")

    def __init__(self, cap_id: str, period: int, amount_fen: int, categories: frozenset[str] | None,
                 name_zh: str, name_en: str) -> None:
        self.cap_id = cap_id
        self.period = period
        self.amount_fen = amount_fen
        self.categories = categories
        self.name_zh = name_zh
        self.name_en = name_en


def period_key(period: int, epoch_day: int, day: dt.date | None) -> int:
    """Return the key of the cap period containing local epoch day ``epoch_day``."""
    if period == PERIOD_DAY:
        return epoch_day
    if period == PERIOD_WEEK:
        return epoch_day - (epoch_day + 3) % 7
    assert day is not None
    return day.year * 12 + day.month - 1
