"""Cross-reference and business checks of a structurally valid rule-set document."""

from __future__ import annotations

import datetime as dt
from typing import Any, Iterable, Sequence

from gateway.rules.schema import RuleSetDocument
from gateway.rules.validate import RuleProblem, show

# Month-days are checked against a leap year so that 02-29 is a valid day.
_LEAP_YEAR = 2000


def parse_interval(text: str) -> tuple[int, int] | None:
    """Return (start, end) minutes of day for "HH:MM-HH:MM", or None if invalid.

    ``end`` may be 1440 ("24:00"). ``start > end`` wraps past midnight.
    """
    start_text, _, end_text = text.partition("-")
    start, end = _minutes(start_text), _minutes(end_text)
    if start is None or end is None or start == end or start == 1440:
        return None
    return start, end


def _minutes(text: str) -> int | None:
    hours, _, minutes = text.partition(":")
    h, m = int(hours), int(minutes)
    if m >= 60 or h > 24 or (h == 24 and m != 0):
        return None
    return h * 60 + m


def parse_month_day_range(text: str) -> tuple[dt.date, dt.date] | None:
    """Return the first and last day of "MM-DD/MM-DD" in a leap year, or None if invalid."""
    first_text, _, last_text = text.partition("/")
    try:
        first = dt.date(_LEAP_YEAR, int(first_text[:2]), int(first_text[3:]))
        last = dt.date(_LEAP_YEAR, int(last_text[:2]), int(last_text[3:]))
    except ValueError:
        return None
    return first, last


def month_days(first: dt.date, last: dt.date) -> list[tuple[int, int]]:
    """Return every (month, day) from first to last inclusive, wrapping past new year."""
    days: list[tuple[int, int]] = []
    day = first
    while True:
        days.append((day.month, day.day))
        if day == last:
            return days
        day = day + dt.timedelta(days=1)
        if day.year != _LEAP_YEAR:
            day = dt.date(_LEAP_YEAR, 1, 1)


class _Problems:
    def __init__(self) -> None:
        self.items: list[RuleProblem] = []

    def add(self, path: str, value: Any, expected_en: str, expected_zh: str) -> None:
        self.items.append(RuleProblem(path=path, value=show(value), expected_en=expected_en,
                                      expected_zh=expected_zh))

    def unique(self, section: str, ids: Sequence[str], field: str) -> None:
        seen: set[str] = set()
        for index, value in enumerate(ids):
            if value in seen:
                self.add(f"$.{section}[{index}].{field}", value, f"an id not used by another item of {section}",
                         f"{section} 中未被其他项使用的标识")
            seen.add(value)

    def known(self, path: str, value: str, known: Iterable[str], section: str) -> None:
        names = sorted(known)
        if value not in names:
            listed = ", ".join(names[:12]) or "(none / 无)"
            self.add(path, value, f"one of the ids defined in $.{section}: {listed}",
                     f"$.{section} 中定义的标识之一：{listed}")

    def known_all(self, path: str, values: Iterable[str], known: Iterable[str], section: str) -> None:
        known = set(known)
        for index, value in enumerate(values):
            self.known(f"{path}[{index}]", value, known, section)


def check_semantics(doc: RuleSetDocument) -> list[RuleProblem]:
    """Return the problems that the schema alone cannot see."""
    out = _Problems()
    _check_ids(doc, out)
    _check_network_parts(doc, out)
    _check_categories(doc, out)
    _check_times(doc, out)
    _check_products(doc, out)
    _check_rules(doc, out)
    return out.items


def _check_ids(doc: RuleSetDocument, out: _Problems) -> None:
    out.unique("operators", [o.operator_id for o in doc.operators], "operator_id")
    out.unique("networks", [n.network_id for n in doc.networks], "network_id")
    out.unique("areas", [a.area_id for a in doc.areas], "area_id")
    out.unique("sites", [s.site_id for s in doc.sites], "site_id")
    out.unique("timeframes", [t.timeframe_id for t in doc.timeframes], "timeframe_id")
    out.unique("seasons", [s.season_id for s in doc.seasons], "season_id")
    out.unique("rider_categories", [c.category_id for c in doc.rider_categories], "category_id")
    out.unique("products", [p.product_id for p in doc.products], "product_id")
    out.unique("transfer_rules", [t.transfer_id for t in doc.transfer_rules], "transfer_id")
    out.unique("caps", [c.cap_id for c in doc.caps], "cap_id")


def _check_network_parts(doc: RuleSetDocument, out: _Problems) -> None:
    operators = {o.operator_id for o in doc.operators}
    route_owner: dict[str, str] = {}
    for index, network in enumerate(doc.networks):
        out.known(f"$.networks[{index}].operator_id", network.operator_id, operators, "operators")
        for r_index, route in enumerate(network.routes):
            if route in route_owner:
                out.add(f"$.networks[{index}].routes[{r_index}]", route,
                        f"a route in one network only (already in network {route_owner[route]!r})",
                        f"只属于一个线网的线路（已属于线网 {route_owner[route]!r}）")
            route_owner.setdefault(route, network.network_id)
    stop_owner: dict[str, str] = {}
    for index, area in enumerate(doc.areas):
        for s_index, stop in enumerate(area.stops):
            if stop in stop_owner:
                out.add(f"$.areas[{index}].stops[{s_index}]", stop,
                        f"a stop in one area only (already in area {stop_owner[stop]!r})",
                        f"只属于一个区域的站点（已属于区域 {stop_owner[stop]!r}）")
            stop_owner.setdefault(stop, area.area_id)
    for index, site in enumerate(doc.sites):
        out.known(f"$.sites[{index}].operator_id", site.operator_id, operators, "operators")


def _check_categories(doc: RuleSetDocument, out: _Problems) -> None:
    adults = [i for i, c in enumerate(doc.rider_categories) if c.kind == "adult"]
    if not adults:
        out.add("$.rider_categories", [c.category_id for c in doc.rider_categories],
                'exactly one category of kind "adult", the fallback for every rider',
                '恰好一个 kind 为 "adult" 的类别，作为所有乘客的默认类别')
    for index in adults[1:]:
        out.add(f"$.rider_categories[{index}].kind", "adult",
                'one category of kind "adult" only; give this one another kind',
                '只能有一个 kind 为 "adult" 的类别；请为此类别选择其他 kind')
    timeframes = {t.timeframe_id for t in doc.timeframes}
    networks = {n.network_id for n in doc.networks}
    sites = {s.site_id for s in doc.sites}
    for index, category in enumerate(doc.rider_categories):
        path = f"$.rider_categories[{index}]"
        if category.kind == "elderly" and category.min_age is None:
            out.add(f"{path}.min_age", None, "the age from which the elderly category applies, such as 65",
                    "老年人类别的起始年龄，例如 65")
        if category.kind == "child" and category.max_age is None:
            out.add(f"{path}.max_age", None, "the last age of the child category, such as 5",
                    "儿童类别的最大年龄，例如 5")
        if category.kind not in ("elderly", "child") and (category.min_age is not None
                                                         or category.max_age is not None):
            out.add(f"{path}.min_age", category.min_age, 'no age limits: ages apply to kinds "elderly" and "child"',
                    '不设年龄：年龄只适用于 "elderly" 与 "child" 类别')
        if category.min_age is not None and category.max_age is not None and category.min_age > category.max_age:
            out.add(f"{path}.max_age", category.max_age, f"an age of at least min_age ({category.min_age})",
                    f"不小于 min_age（{category.min_age}）的年龄")
        if category.kind == "adult" and (category.timeframes or category.networks or category.sites
                                         or category.media):
            out.add(f"{path}.kind", "adult", "no limits on the adult category, which must apply to everyone",
                    "成人类别不得设置限制，它必须适用于所有乘客")
        if category.priority_groups and category.kind != "priority":
            out.add(f"{path}.priority_groups", category.priority_groups,
                    'no priority groups unless kind is "priority"', '仅 kind 为 "priority" 时可设置优抚类别')
        out.known_all(f"{path}.timeframes", category.timeframes, timeframes, "timeframes")
        out.known_all(f"{path}.networks", category.networks, networks, "networks")
        out.known_all(f"{path}.sites", category.sites, sites, "sites")


def _check_times(doc: RuleSetDocument, out: _Problems) -> None:
    for index, timeframe in enumerate(doc.timeframes):
        for i_index, interval in enumerate(timeframe.intervals):
            if parse_interval(interval) is None:
                out.add(f"$.timeframes[{index}].intervals[{i_index}]", interval,
                        'two different times from 00:00 to 24:00, "HH:MM-HH:MM"',
                        '两个不同的时间（00:00 到 24:00），格式 "HH:MM-HH:MM"')
    holidays = set(doc.calendar.holidays)
    for index, day in enumerate(doc.calendar.workdays):
        if day in holidays:
            out.add(f"$.calendar.workdays[{index}]", day, "a date that is not also listed in holidays",
                    "未同时列入 holidays 的日期")
    owner: dict[tuple[int, int], str] = {}
    for index, season in enumerate(doc.seasons):
        for p_index, period in enumerate(season.periods):
            path = f"$.seasons[{index}].periods[{p_index}]"
            parsed = parse_month_day_range(period)
            if parsed is None:
                out.add(path, period, 'real month-days "MM-DD/MM-DD" such as "04-01/10-31"',
                        '真实存在的月日 "MM-DD/MM-DD"，例如 "04-01/10-31"')
                continue
            clash = None
            for month_day in month_days(*parsed):
                if month_day in owner and clash is None:
                    clash = (month_day, owner[month_day])
                owner.setdefault(month_day, season.season_id)
            if clash is not None:
                (month, day), other = clash
                out.add(path, period, f"days in no other season ({month:02d}-{day:02d} is already in {other!r})",
                        f"不与其他季节重叠的日期（{month:02d}-{day:02d} 已属于 {other!r}）")


def covered_month_days(doc: RuleSetDocument, season_ids: Iterable[str]) -> set[tuple[int, int]]:
    wanted = set(season_ids)
    covered: set[tuple[int, int]] = set()
    for season in doc.seasons:
        if season.season_id not in wanted:
            continue
        for period in season.periods:
            parsed = parse_month_day_range(period)
            if parsed:
                covered.update(month_days(*parsed))
    return covered


def _check_products(doc: RuleSetDocument, out: _Problems) -> None:
    seasons = {s.season_id for s in doc.seasons}
    categories = {c.category_id for c in doc.rider_categories}
    year = len(month_days(dt.date(_LEAP_YEAR, 1, 1), dt.date(_LEAP_YEAR, 12, 31)))
    for index, product in enumerate(doc.products):
        path = f"$.products[{index}]"
        for season_id in product.season_prices:
            out.known(f"{path}.season_prices.{season_id}", season_id, seasons, "seasons")
        for category_id in product.category_percent:
            out.known(f"{path}.category_percent.{category_id}", category_id, categories, "rider_categories")
        out.known_all(f"{path}.eligible_categories", product.eligible_categories, categories, "rider_categories")
        if product.season_prices and product.kind != "scenic_ticket":
            out.add(f"{path}.season_prices", product.season_prices,
                    'no season prices unless kind is "scenic_ticket"', '仅 kind 为 "scenic_ticket" 时可设置季节价格')
        if product.price_fen is None and product.season_prices:
            if len(covered_month_days(doc, product.season_prices)) < year:
                out.add(f"{path}.price_fen", None,
                        "a price for days outside the priced seasons, because they do not cover the whole year",
                        "所列季节未覆盖全年，请为其余日期设置 price_fen")
        elif product.price_fen is None and product.kind != "single_ride":
            out.add(f"{path}.price_fen", None, "the full fare in fen (0 for free entry)",
                    "全价，单位为分（免费入场填 0）")


def _check_rules(doc: RuleSetDocument, out: _Problems) -> None:
    networks = {n.network_id: n for n in doc.networks}
    products = {p.product_id: p for p in doc.products}
    timeframes = {t.timeframe_id for t in doc.timeframes}
    areas = {a.area_id for a in doc.areas}
    sites = {s.site_id for s in doc.sites}
    categories = {c.category_id for c in doc.rider_categories}

    for index, rule in enumerate(doc.leg_rules):
        path = f"$.leg_rules[{index}]"
        out.known(f"{path}.network_id", rule.network_id, networks, "networks")
        out.known(f"{path}.product_id", rule.product_id, products, "products")
        out.known_all(f"{path}.timeframes", rule.timeframes, timeframes, "timeframes")
        network = networks.get(rule.network_id)
        if network is not None:
            if network.fare_structure != "flat":
                out.add(f"{path}.network_id", rule.network_id, 'a network with fare_structure "flat"; '
                        "area networks are priced by area_fares",
                        'fare_structure 为 "flat" 的线网；分区计价线网由 area_fares 定价')
            out.known_all(f"{path}.routes", rule.routes, network.routes, f"networks[{rule.network_id}].routes")
        product = products.get(rule.product_id)
        if product is not None and (product.kind != "single_ride" or product.price_fen is None):
            out.add(f"{path}.product_id", rule.product_id, 'a product of kind "single_ride" with a price_fen',
                    'kind 为 "single_ride" 且设置了 price_fen 的票种')

    for index, fare in enumerate(doc.area_fares):
        path = f"$.area_fares[{index}]"
        out.known(f"{path}.network_id", fare.network_id, networks, "networks")
        out.known(f"{path}.from_area", fare.from_area, areas, "areas")
        out.known(f"{path}.to_area", fare.to_area, areas, "areas")
        out.known(f"{path}.product_id", fare.product_id, products, "products")
        network = networks.get(fare.network_id)
        if network is not None and network.fare_structure != "area":
            out.add(f"{path}.network_id", fare.network_id, 'a network with fare_structure "area"',
                    'fare_structure 为 "area" 的线网')
    for index, network in enumerate(doc.networks):
        if network.fare_structure == "area" and not any(f.network_id == network.network_id for f in doc.area_fares):
            out.add(f"$.networks[{index}].fare_structure", "area", "area_fares for this network, or \"flat\"",
                    "为此线网设置 area_fares，或改为 \"flat\"")

    seen_sites: set[str] = set()
    for index, rule in enumerate(doc.site_rules):
        path = f"$.site_rules[{index}]"
        out.known(f"{path}.site_id", rule.site_id, sites, "sites")
        out.known(f"{path}.product_id", rule.product_id, products, "products")
        if rule.site_id in seen_sites:
            out.add(f"{path}.site_id", rule.site_id, "a site with one site rule only", "每个场所只能有一条规则")
        seen_sites.add(rule.site_id)
        product = products.get(rule.product_id)
        if product is not None and product.kind == "single_ride":
            out.add(f"{path}.product_id", rule.product_id, 'a product of kind "scenic_ticket" or "venue_entry"',
                    'kind 为 "scenic_ticket" 或 "venue_entry" 的票种')

    for index, transfer in enumerate(doc.transfer_rules):
        path = f"$.transfer_rules[{index}]"
        out.known_all(f"{path}.from_networks", transfer.from_networks, networks, "networks")
        out.known_all(f"{path}.to_networks", transfer.to_networks, networks, "networks")
        if transfer.mode != "free" and transfer.amount_fen == 0:
            out.add(f"{path}.amount_fen", 0, f'an amount above 0 for mode "{transfer.mode}", or mode "free"',
                    f'mode 为 "{transfer.mode}" 时须大于 0，或改用 mode "free"')

    for index, cap in enumerate(doc.caps):
        path = f"$.caps[{index}]"
        out.known_all(f"{path}.networks", cap.networks, networks, "networks")
        out.known_all(f"{path}.categories", cap.categories, categories, "rider_categories")
