"""Compile a validated rule-set document into a :class:`~gateway.rules.book.RuleBook`."""

from __future__ import annotations

from gateway.rules.book import RuleBook
from gateway.rules.checks import month_days, parse_interval, parse_month_day_range
from gateway.rules.compiled import (CATEGORY_KINDS, DAY_TYPES, PERIOD_DAY, PERIOD_MONTH, PERIOD_WEEK,
                                    CAreaFare, CCap, CCategory, CLegOption, CProduct, CRoute, CSite,
                                    CTimeframe, CTransfer)
from gateway.rules.localtime import date_to_epoch_day
from gateway.rules.schema import RuleSetDocument
from gateway.rules.state import MEDIUM_CODES
from gateway.rules.validate import RuleSetError, check_document, document_to_builtins

_PERIODS = {"day": PERIOD_DAY, "week": PERIOD_WEEK, "month": PERIOD_MONTH}


def _timeframe(timeframe_id: str, day_types: list[str], intervals: list[str]) -> CTimeframe:
    minutes = bytearray(1440)
    for text in intervals:
        parsed = parse_interval(text)
        assert parsed is not None, "validated documents have valid intervals"
        start, end = parsed
        spans = [(start, end)] if start < end else [(start, 1440), (0, end)]
        for first, last in spans:
            minutes[first:last] = b"\x01" * (last - first)
    empty = bytes(1440)
    wanted = {DAY_TYPES[d] for d in day_types} if day_types else set(DAY_TYPES.values())
    maps = tuple(bytes(minutes) if code in wanted else empty for code in range(3))
    return CTimeframe(timeframe_id, maps)  # type: ignore[arg-type]


def _media(media: list[str]) -> frozenset[int] | None:
    return frozenset(MEDIUM_CODES[m] for m in media) if media else None


def compile_rule_set(doc: RuleSetDocument, version: int = 0, effective_from_ms: int = 0) -> RuleBook:
    """Compile ``doc`` into lookup structures for pricing.

    ``doc`` must come from :func:`~gateway.rules.validate.load_rule_set_document`;
    it is checked again here so that a document built in code cannot compile
    into a book that fails while pricing.
    """
    problems = check_document(document_to_builtins(doc))
    if problems:
        raise RuleSetError(problems)

    timeframes = {t.timeframe_id: _timeframe(t.timeframe_id, list(t.day_types), list(t.intervals))
                  for t in doc.timeframes}

    categories = tuple(
        CCategory(category_id=c.category_id, kind=CATEGORY_KINDS[c.kind], min_age=c.min_age, max_age=c.max_age,
                  groups=frozenset(c.priority_groups) or None, percent=c.fare_percent,
                  timeframes=tuple(timeframes[t] for t in c.timeframes) or None,
                  networks=frozenset(c.networks) or None, sites=frozenset(c.sites) or None,
                  media=_media(list(c.media)), identity_check=c.identity_check,
                  name_zh=c.name_zh, name_en=c.name_en, order=index)
        for index, c in enumerate(doc.rider_categories))

    products = {
        p.product_id: CProduct(
            product_id=p.product_id, kind=p.kind, price_fen=p.price_fen, season_prices=dict(p.season_prices),
            media=_media(list(p.media)), category_percent=dict(p.category_percent),
            eligible=frozenset(p.eligible_categories) or None,
            one_entry_per_day=(p.kind == "scenic_ticket") if p.one_entry_per_day is None else p.one_entry_per_day,
            identity_check=p.identity_check, name_zh=p.name_zh, name_en=p.name_en)
        for p in doc.products}

    operator_of_network = {n.network_id: n.operator_id for n in doc.networks}
    routes: dict[str, CRoute] = {}
    for network in doc.networks:
        for route_id in network.routes:
            options = tuple(
                CLegOption(tuple(timeframes[t] for t in rule.timeframes), products[rule.product_id])
                for rule in doc.leg_rules
                if rule.network_id == network.network_id and (not rule.routes or route_id in rule.routes))
            routes[route_id] = CRoute(route_id, network.network_id, network.operator_id,
                                      network.fare_structure == "area", options)

    stop_areas = {stop: area.area_id for area in doc.areas for stop in area.stops}
    area_fares: dict[tuple[str, str, str], CAreaFare] = {}
    for fare in doc.area_fares:
        entry = CAreaFare(fare.price_fen, products[fare.product_id])
        area_fares[(fare.network_id, fare.from_area, fare.to_area)] = entry
        if fare.symmetric:
            area_fares.setdefault((fare.network_id, fare.to_area, fare.from_area), entry)
    # The fare charged at a tap-on: the highest fare from the boarding area.
    max_fares: dict[tuple[str, str], CAreaFare] = {}
    for (network_id, from_area, _), entry in area_fares.items():
        best = max_fares.get((network_id, from_area))
        if best is None or entry.price_fen > best.price_fen:
            max_fares[(network_id, from_area)] = entry

    site_operator = {s.site_id: s.operator_id for s in doc.sites}
    sites = {rule.site_id: CSite(rule.site_id, site_operator[rule.site_id], products[rule.product_id])
             for rule in doc.site_rules}

    seasons: dict[int, str] = {}
    for season in doc.seasons:
        for period in season.periods:
            parsed = parse_month_day_range(period)
            assert parsed is not None
            for month, day in month_days(*parsed):
                seasons[month * 32 + day] = season.season_id

    transfers: dict[tuple[str, str], CTransfer] = {}
    for rule in doc.transfer_rules:
        compiled = CTransfer(transfer_id=rule.transfer_id, limit_ms=rule.duration_limit_min * 60_000,
                             from_journey_start=rule.measured_from == "journey_start",
                             transfers_max=rule.transfers_max, mode=rule.mode, amount_fen=rule.amount_fen,
                             same_category=rule.same_category_required, same_medium=rule.same_medium_required)
        for source in rule.from_networks:
            for target in rule.to_networks:
                # The first rule listed for a pair of networks wins.
                transfers.setdefault((source, target), compiled)

    caps: dict[str, list[CCap]] = {}
    for cap in doc.caps:
        compiled_cap = CCap(cap.cap_id, _PERIODS[cap.period], cap.amount_fen, frozenset(cap.categories) or None,
                            cap.name_zh, cap.name_en)
        for network_id in cap.networks:
            caps.setdefault(network_id, []).append(compiled_cap)

    day_types: dict[int, int] = {}
    for day in doc.calendar.holidays:
        day_types[date_to_epoch_day(day)] = DAY_TYPES["holiday"]
    for day in doc.calendar.workdays:
        day_types[date_to_epoch_day(day)] = DAY_TYPES["workday"]

    return RuleBook(
        document=doc, version=version, effective_from_ms=effective_from_ms,
        categories=categories, products=products, routes=routes, stop_areas=stop_areas,
        area_fares=area_fares, max_fares=max_fares, sites=sites, seasons=seasons, transfers=transfers,
        caps={k: tuple(v) for k, v in caps.items()}, day_types=day_types,
        operator_of_network=operator_of_network,
        tap_off_within_ms=doc.trips.tap_off_within_min * 60_000)

