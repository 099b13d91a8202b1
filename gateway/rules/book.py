"""Pricing: a compiled rule set as a pure function of a tap and the rider's state.

``RuleBook.price(request, state)`` returns ``(Price, RiderState)`` and touches
nothing else, so the gateway decides when to store the new state (only when
the tap is journaled as accepted).

The steps, in order:

1. the local day, minute and day type of the tap (Asia/Shanghai, whatever
   the process time zone);
2. the fare product and full fare: a flat leg rule of the route (first whose
   timeframes match), the highest area fare from the boarding area for a
   tap-on, the area-to-area fare for a tap-off, or the site's product
   (scenic tickets by season);
3. the rider category: of the categories the credential qualifies for at this
   time, place and medium, the one with the lowest fare percent for the
   product (equal percents: the first in document order);
4. a transfer from the previous leg, if a transfer rule covers the two
   networks within its time limit, transfer count, category and medium terms;
5. caps on the network for the current local day, week or month;
6. one entry per holder per local day at scenic spots.

Missing tap-offs: a tap-on is charged the highest fare from its boarding area
at once (``OpenTrip`` remembers it). A tap-off within ``tap_off_within_min``
closes the trip and returns a zero or negative ``adjustment_fen`` that
corrects the charge to the real trip fare. If no tap-off comes, nothing more
needs charging: the rider's next tap (or the next day) drops the open trip and
reports ``unmatched_trip_closed``.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from gateway.reasons import DISPLAY, Reason
from gateway.rules.compiled import (KIND_ADULT, KIND_CHILD, KIND_DISABLED, KIND_ELDERLY, KIND_PRIORITY,
                                    KIND_STUDENT, PERIOD_MONTH, WEEKEND, WORKDAY, CAreaFare, CCap, CCategory, CProduct, CRoute,
                                    CSite, CTransfer, period_key)
from gateway.rules.localtime import age_on, epoch_day_to_date, local_day_and_minute
from gateway.rules.schema import RuleSetDocument
from gateway.rules.state import (EMPTY_STATE, CapSpend, LegRecord, OpenTrip, Price, PricingRequest, RiderState,
                                 SiteEntry)

_TRANSFER = "transfer"
_CATEGORY = "category"
_CAP = "cap"


def yuan(fen: int) -> str:
    """Format fen as yuan with two decimals, without floating point."""
    return f"{fen // 100}.{fen % 100:02d}"


def fare_text(fen: int) -> tuple[str, str]:
    if fen == 0:
        return "免费", "free"
    return f"{yuan(fen)}元", f"¥{yuan(fen)}"


class _Context:
    """Facts about one tap that several steps need, computed at most once."""

    __slots__ = ("epoch_day", "minute", "day_type", "date", "age")

    def __init__(self, epoch_day: int, minute: int, day_type: int) -> None:
        self.epoch_day = epoch_day
        self.minute = minute
        self.day_type = day_type
        self.date: dt.date | None = None
        self.age: int | None = -1

    def local_date(self) -> dt.date:
        if self.date is None:
            self.date = epoch_day_to_date(self.epoch_day)
        return self.date


class RuleBook:
    """One compiled, immutable version of a rule set."""

    def __init__(self, *, document: RuleSetDocument, version: int, effective_from_ms: int,
                 categories: tuple[CCategory, ...], products: dict[str, CProduct], routes: dict[str, CRoute],
                 stop_areas: dict[str, str], area_fares: dict[tuple[str, str, str], CAreaFare],
                 max_fares: dict[tuple[str, str], CAreaFare], sites: dict[str, CSite], seasons: dict[int, str],
                 transfers: dict[tuple[str, str], CTransfer], caps: dict[str, tuple[CCap, ...]],
                 day_types: dict[int, int], operator_of_network: dict[str, str], tap_off_within_ms: int) -> None:
        self.document = document
        self.version = version
        self.effective_from_ms = effective_from_ms
        self.rule_set_id = document.rule_set.rule_set_id
        self.categories = categories
        self.products = products
        self.routes = routes
        self.stop_areas = stop_areas
        self.area_fares = area_fares
        self.max_fares = max_fares
        self.sites = sites
        self.seasons = seasons
        self.transfers = transfers
        self.caps = caps
        self.day_types = day_types
        self.operator_of_network = operator_of_network
        self.tap_off_within_ms = tap_off_within_ms
        self._reject_cache: dict[int, Price] = {}
        self._candidates_cache: dict[str, tuple[tuple[CCategory, int], ...]] = {}
        self._display_cache: dict[tuple[str, str, int, tuple[str, ...], bool], tuple[str, str]] = {}

    def __repr__(self) -> str:
        return f"<RuleBook {self.rule_set_id} v{self.version} from {self.effective_from_ms}>"

    # -- helpers ----------------------------------------------------------

    def reject(self, reason: Reason) -> Price:
        cached = self._reject_cache.get(reason)
        if cached is None:
            zh, en = DISPLAY[reason]
            cached = Price(reason=int(reason), display_zh=zh, display_en=en, rule_set_version=self.version)
            self._reject_cache[reason] = cached
        return cached

    def day_type(self, epoch_day: int) -> int:
        special = self.day_types.get(epoch_day)
        if special is not None:
            return special
        return WEEKEND if (epoch_day + 3) % 7 >= 5 else WORKDAY

    def _qualifies(self, category: CCategory, ent: Any, ctx: _Context, network_id: str | None,
                   site_id: str | None, medium: int) -> bool:
        """Return whether a rider with entitlements ``ent`` belongs to ``category`` at this tap.

        The limits (place, medium, time) are checked before the entitlements
        because they cost a set lookup, not a date comparison.
        """
        # A category limited to networks and/or sites applies only on or at one of them.
        if category.networks is not None or category.sites is not None:
            on_network = category.networks is not None and network_id in category.networks
            at_site = category.sites is not None and site_id in category.sites
            if not (on_network or at_site):
                return False
        if category.media is not None and medium not in category.media:
            return False
        if category.timeframes is not None:
            for timeframe in category.timeframes:
                if timeframe.maps[ctx.day_type][ctx.minute]:
                    break
            else:
                return False

        kind = category.kind
        if kind == KIND_ADULT:
            return True
        if ent is None:
            return False
        if kind == KIND_ELDERLY or kind == KIND_CHILD:
            if ctx.age == -1:
                birth = ent.birth_date
                ctx.age = None if birth is None else age_on(birth, ctx.local_date())
            age = ctx.age
            if age is None:
                return False
            if category.min_age is not None and age < category.min_age:
                return False
            return category.max_age is None or age <= category.max_age
        if kind == KIND_DISABLED:
            until = ent.disability_until
            return until is not None and until >= ctx.local_date()
        if kind == KIND_PRIORITY:
            until = ent.priority_until
            group = ent.priority_group or 0
            if until is None or until < ctx.local_date() or group == 0:
                return False
            return category.groups is None or group in category.groups
        if kind == KIND_STUDENT:
            until = ent.student_until
            return until is not None and until >= ctx.local_date()
        return False

    def _candidates(self, product: CProduct) -> tuple[tuple[CCategory, int], ...]:
        """Return the categories allowed for ``product`` with their percent, cheapest first.

        The fare grows with the percent, so the first qualifying candidate has
        the lowest fare; equal percents keep document order.
        """
        cached = self._candidates_cache.get(product.product_id)
        if cached is None:
            pairs = [(c, product.category_percent.get(c.category_id, c.percent)) for c in self.categories
                     if product.eligible is None or c.category_id in product.eligible]
            pairs.sort(key=lambda pair: (pair[1], pair[0].order))
            cached = self._candidates_cache[product.product_id] = tuple(pairs)
        return cached

    def _choose_category(self, product: CProduct, full_fen: int, ent: Any, ctx: _Context,
                         network_id: str | None, site_id: str | None,
                         medium: int) -> tuple[CCategory, int] | None:
        for category, percent in self._candidates(product):
            if category.kind == KIND_ADULT or self._qualifies(category, ent, ctx, network_id, site_id, medium):
                return category, (full_fen * percent + 50) // 100
        return None

    def _apply_caps(self, caps: tuple[CCap, ...], category_id: str, fare: int, ctx: _Context,
                    spends: tuple[CapSpend, ...]) -> tuple[int, tuple[CapSpend, ...], CCap | None]:
        """Limit ``fare`` by the caps that apply and return (fare, new spends, the cap that bit)."""
        keyed: list[tuple[CCap, int, int]] = []
        bit: CCap | None = None
        for cap in caps:
            if cap.categories is not None and category_id not in cap.categories:
                continue
            key = period_key(cap.period, ctx.epoch_day, ctx.local_date() if cap.period == PERIOD_MONTH else None)
            spent = 0
            for spend in spends:
                if spend.cap_id == cap.cap_id and spend.period_key == key:
                    spent = spend.spent_fen
                    break
            remaining = cap.amount_fen - spent
            if fare > remaining:
                fare = remaining if remaining > 0 else 0
                bit = cap
            keyed.append((cap, key, spent))
        if not keyed:
            return fare, spends, None
        return fare, _add_spend(spends, keyed, fare), bit

    # -- pricing ----------------------------------------------------------

    def price(self, request: PricingRequest, state: RiderState | None = None) -> tuple[Price, RiderState]:
        """Price one tap; return the price and the rider's new state (``state`` is never changed)."""
        if state is None:
            state = EMPTY_STATE
        epoch_day, minute = local_day_and_minute(request.tap_time_ms)
        ctx = _Context(epoch_day, minute, self.day_type(epoch_day))
        kind = request.tap_kind
        if kind == "board" or kind == "on":
            return self._price_leg(request, state, ctx, kind == "on")
        if kind == "off":
            return self._price_tap_off(request, state, ctx)
        if kind == "entry":
            return self._price_entry(request, state, ctx)
        raise ValueError(f"unknown tap_kind {kind!r}: use one of board, on, off, entry")

    def _drop_open_trip(self, state: RiderState) -> tuple[RiderState, bool]:
        if state.open_trip is None:
            return state, False
        return RiderState(last_leg=state.last_leg, open_trip=None, caps=state.caps, entries=state.entries), True

    def _price_leg(self, request: PricingRequest, state: RiderState, ctx: _Context,
                   tap_on: bool) -> tuple[Price, RiderState]:
        route = self.routes.get(request.route_id)  # type: ignore[arg-type]
        if route is None or route.area_based != tap_on:
            return self.reject(Reason.NO_FARE_RULE), state
        if request.operator_id and request.operator_id != route.operator_id:
            return self.reject(Reason.NO_FARE_RULE), state
        network_id = route.network_id

        area_id = ""
        if tap_on:
            area_id = self.stop_areas.get(request.stop_id, "")  # type: ignore[arg-type]
            fare_entry = self.max_fares.get((network_id, area_id))
            if fare_entry is None:
                return self.reject(Reason.NO_FARE_RULE), state
            product, full_fen = fare_entry.product, fare_entry.price_fen
        else:
            for option in route.leg_options:
                if not option.timeframes:
                    break
                if any(tf.maps[ctx.day_type][ctx.minute] for tf in option.timeframes):
                    break
            else:
                return self.reject(Reason.NO_FARE_RULE), state
            product = option.product
            full_fen = product.price_fen

        medium = request.medium
        if product.media is not None and medium not in product.media:
            return self.reject(Reason.MEDIUM_NOT_ACCEPTED), state
        chosen = self._choose_category(product, full_fen, request.entitlements, ctx, network_id, None, medium)
        if chosen is None:
            return self.reject(Reason.CATEGORY_NOT_ELIGIBLE), state
        category, fare = chosen
        kinds: list[str] = [_CATEGORY] if fare < full_fen else []

        state, dropped = self._drop_open_trip(state)
        time_ms = request.tap_time_ms
        transfer = self._transfer_for(state.last_leg, network_id, category.category_id, medium, time_ms)
        if transfer is not None:
            leg = state.last_leg
            assert leg is not None
            transfer_fare = transfer.leg_fare(fare)
            if transfer_fare < fare:
                fare = transfer_fare
                kinds.append(_TRANSFER)
            new_leg = LegRecord(time_ms, network_id, category.category_id, medium, leg.journey_start_ms,
                                leg.transfers + 1)
        else:
            new_leg = LegRecord(time_ms, network_id, category.category_id, medium, time_ms, 0)

        spends = state.caps
        caps = self.caps.get(network_id)
        bit = None
        if caps:
            fare, spends, bit = self._apply_caps(caps, category.category_id, fare, ctx, spends)
            if bit is not None:
                kinds.append(_CAP)

        open_trip = None
        if tap_on:
            open_trip = OpenTrip(time_ms, network_id, area_id, fare, full_fen, category.category_id,
                                 product.product_id, transfer.transfer_id if transfer is not None else "")
        new_state = RiderState(last_leg=new_leg, open_trip=open_trip, caps=spends, entries=state.entries)
        zh, en = self._display(category, product, fare, kinds, tap_on=tap_on)
        price = Price(reason=0, fare_fen=fare, full_fare_fen=full_fen, rider_category=category.category_id,
                      product_id=product.product_id, discount_kinds=tuple(kinds), display_zh=zh, display_en=en,
                      rule_set_version=self.version, unmatched_trip_closed=dropped)
        return price, new_state

    def _transfer_for(self, leg: LegRecord | None, network_id: str, category_id: str, medium: int,
                      time_ms: int) -> CTransfer | None:
        if leg is None:
            return None
        rule = self.transfers.get((leg.network_id, network_id))
        if rule is None or leg.transfers >= rule.transfers_max:
            return None
        since = time_ms - (leg.journey_start_ms if rule.from_journey_start else leg.tap_time_ms)
        # A tap older than the previous leg (an offline upload out of order) is no transfer.
        if since < 0 or since > rule.limit_ms:
            return None
        if rule.same_category and leg.category_id != category_id:
            return None
        if rule.same_medium and leg.medium != medium:
            return None
        return rule

    def _price_tap_off(self, request: PricingRequest, state: RiderState,
                       ctx: _Context) -> tuple[Price, RiderState]:
        trip = state.open_trip
        time_ms = request.tap_time_ms
        if trip is None or not (0 <= time_ms - trip.on_time_ms <= self.tap_off_within_ms):
            state, dropped = self._drop_open_trip(state)
            return Price(reason=0, display_zh="无上车记录", display_en="No tap-on found",
                         rule_set_version=self.version, unmatched_trip_closed=dropped), state
        route = self.routes.get(request.route_id)  # type: ignore[arg-type]
        off_area = self.stop_areas.get(request.stop_id, "")  # type: ignore[arg-type]
        fare_entry = self.area_fares.get((trip.network_id, trip.area_id, off_area))
        if (route is not None and route.network_id != trip.network_id) or fare_entry is None:
            # Unknown alighting stop: the maximum fare charged at the tap-on remains.
            state, _ = self._drop_open_trip(state)
            return Price(reason=0, rider_category=trip.category_id, product_id=trip.product_id,
                         display_zh="按最高票价", display_en="Max fare kept",
                         rule_set_version=self.version), state

        on_day, _ = local_day_and_minute(trip.on_time_ms)
        on_ctx = _Context(on_day, 0, self.day_type(on_day))
        category = next((c for c in self.categories if c.category_id == trip.category_id), None)
        product = fare_entry.product
        full_fen = fare_entry.price_fen
        kinds: list[str] = []
        if category is None:
            fare = full_fen
        else:
            percent = product.category_percent.get(category.category_id, category.percent)
            fare = (full_fen * percent + 50) // 100
            if fare < full_fen:
                kinds.append(_CATEGORY)
        if trip.transfer_id:
            rule = next((r for r in self.transfers.values() if r.transfer_id == trip.transfer_id), None)
            if rule is not None and rule.leg_fare(fare) < fare:
                fare = rule.leg_fare(fare)
                kinds.append(_TRANSFER)
        final = min(fare, trip.charged_fen)
        if final < fare:
            kinds.append(_CAP)
        adjustment = final - trip.charged_fen

        spends = state.caps
        if adjustment:
            spends = _correct_spends(spends, self.caps.get(trip.network_id, ()), trip.category_id, on_ctx, adjustment)
        new_state = RiderState(last_leg=state.last_leg, open_trip=None, caps=spends, entries=state.entries)
        zh_fare, en_fare = fare_text(final)
        name_zh = category.name_zh if category else trip.category_id
        name_en = category.name_en if category else trip.category_id
        zh, en = f"{name_zh} {zh_fare}", f"{name_en}, {en_fare}"
        if adjustment:
            zh += f" 退{yuan(-adjustment)}元"
            en += f" (¥{yuan(-adjustment)} back)"
        price = Price(reason=0, fare_fen=0, full_fare_fen=0, rider_category=trip.category_id,
                      product_id=product.product_id, discount_kinds=tuple(kinds), display_zh=zh, display_en=en,
                      rule_set_version=self.version, adjustment_fen=adjustment,
                      full_fare_adjustment_fen=full_fen - trip.full_fare_fen)
        return price, new_state

    def _price_entry(self, request: PricingRequest, state: RiderState,
                     ctx: _Context) -> tuple[Price, RiderState]:
        site = self.sites.get(request.site_id)  # type: ignore[arg-type]
        if site is None or (request.operator_id and request.operator_id != site.operator_id):
            return self.reject(Reason.NO_FARE_RULE), state
        product = site.product
        full_fen = product.price_fen
        if product.season_prices:
            date = ctx.local_date()
            season = self.seasons.get(date.month * 32 + date.day)
            if season is not None and season in product.season_prices:
                full_fen = product.season_prices[season]
        if full_fen is None:
            return self.reject(Reason.NO_FARE_RULE), state
        medium = request.medium
        if product.media is not None and medium not in product.media:
            return self.reject(Reason.MEDIUM_NOT_ACCEPTED), state

        entries = state.entries
        if product.one_entry_per_day:
            for entry in entries:
                if entry.site_id == site.site_id and entry.epoch_day == ctx.epoch_day:
                    return self.reject(Reason.ALREADY_ENTERED_TODAY), state
            entries = tuple(e for e in entries if e.epoch_day == ctx.epoch_day) + (
                SiteEntry(site.site_id, ctx.epoch_day),)

        chosen = self._choose_category(product, full_fen, request.entitlements, ctx, None, site.site_id, medium)
        if chosen is None:
            return self.reject(Reason.CATEGORY_NOT_ELIGIBLE), state
        category, fare = chosen
        kinds = (_CATEGORY,) if fare < full_fen else ()
        state, dropped = self._drop_open_trip(state)
        new_state = RiderState(last_leg=state.last_leg, open_trip=None, caps=state.caps, entries=entries)
        zh, en = self._display(category, product, fare, list(kinds), tap_on=False)
        price = Price(reason=0, fare_fen=fare, full_fare_fen=full_fen, rider_category=category.category_id,
                      product_id=product.product_id, discount_kinds=kinds, display_zh=zh, display_en=en,
                      rule_set_version=self.version, unmatched_trip_closed=dropped)
        return price, new_state

    def _display(self, category: CCategory, product: CProduct, fare: int, kinds: list[str],
                 tap_on: bool) -> tuple[str, str]:
        key = (category.category_id, product.product_id, fare, tuple(kinds), tap_on)
        cached = self._display_cache.get(key)
        if cached is None:
            if len(self._display_cache) >= 10_000:
                self._display_cache.clear()
            cached = self._display_cache[key] = self._compose_display(category, product, fare, kinds, tap_on)
        return cached

    def _compose_display(self, category: CCategory, product: CProduct, fare: int, kinds: list[str],
                         tap_on: bool) -> tuple[str, str]:
        zh_fare, en_fare = fare_text(fare)
        if product.kind == "venue_entry" and fare == 0:
            # Free entry for everyone: the product name describes the entry better than the category.
            zh, en = [product.name_zh], [product.name_en]
        else:
            zh, en = [category.name_zh], [category.name_en]
        if _TRANSFER in kinds:
            zh.append("换乘")
            en.append("transfer")
        if _CAP in kinds:
            zh.append("已封顶")
            en.append("capped")
        if tap_on and fare:
            zh.append(f"预扣{yuan(fare)}元")
            en.append(f"¥{yuan(fare)} until tap-off")
        elif product.kind != "venue_entry" or fare:
            zh.append(zh_fare)
            en.append(en_fare)
        if category.identity_check or product.identity_check:
            zh.append("请核验身份")
            en.append("check ID")
        return " ".join(zh), ", ".join(en)


def _add_spend(spends: tuple[CapSpend, ...], keyed: list[tuple[CCap, int, int]],
               fare: int) -> tuple[CapSpend, ...]:
    """Return spends with ``fare`` added to each cap's current period; older periods are dropped."""
    current = {cap.cap_id: key for cap, key, _ in keyed}
    kept = [s for s in spends if s.cap_id not in current]
    for cap, key, spent in keyed:
        kept.append(CapSpend(cap.cap_id, key, spent + fare))
    return tuple(kept)


def _correct_spends(spends: tuple[CapSpend, ...], caps: tuple[CCap, ...], category_id: str, ctx: _Context,
                    delta: int) -> tuple[CapSpend, ...]:
    """Add ``delta`` (negative: a refund) to the cap periods that the tap-on counted in."""
    keys = {cap.cap_id: period_key(cap.period, ctx.epoch_day,
                                   ctx.local_date() if cap.period == PERIOD_MONTH else None)
            for cap in caps if cap.categories is None or category_id in cap.categories}
    return tuple(CapSpend(s.cap_id, s.period_key, max(0, s.spent_fen + delta))
                 if keys.get(s.cap_id) == s.period_key else s for s in spends)

