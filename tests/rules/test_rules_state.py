"""Rider state: its MessagePack encoding round-trips, and pricing is a pure function of it."""

from __future__ import annotations

import datetime as dt

from hypothesis import given
from hypothesis import strategies as st

from gateway.rules import PricingRequest, RiderState, RuleBook
from gateway.rules.localtime import local_day_and_minute
from gateway.rules.state import CapSpend, LegRecord, OpenTrip, SiteEntry
from tests.rules.conftest import Entitlements, local_ms

ids = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=12)
times = st.integers(min_value=0, max_value=4_102_444_800_000)
fen = st.integers(min_value=0, max_value=10_000_000)

legs = st.builds(LegRecord, times, ids, ids, st.sampled_from([1, 2]), times, st.integers(0, 20))
trips = st.builds(OpenTrip, times, ids, ids, fen, fen, ids, ids, st.one_of(st.just(""), ids))
states = st.builds(RiderState, last_leg=st.none() | legs, open_trip=st.none() | trips,
                   caps=st.lists(st.builds(CapSpend, ids, st.integers(0, 100_000), fen), max_size=4).map(tuple),
                   entries=st.lists(st.builds(SiteEntry, ids, st.integers(0, 100_000)), max_size=4).map(tuple))


@given(states)
def test_state_roundtrip(state: RiderState) -> None:
    assert RiderState.decode(state.encode()) == state


def test_empty_state_is_small() -> None:
    assert len(RiderState().encode()) <= 8


@given(st.lists(st.tuples(st.integers(0, 3 * 24 * 60), st.sampled_from(["1", "2", "K101"]),
                          st.sampled_from(["NM01", "LC01", "DL02"])), min_size=1, max_size=12),
       st.dates(min_value=dt.date(1930, 1, 1), max_value=dt.date(2025, 1, 1)))
def test_pricing_is_repeatable(yiyuan: RuleBook, taps: list[tuple[int, str, str]], birth: dt.date) -> None:
    start = local_ms(2026, 12, 1)
    who = Entitlements(birth_date=birth)
    requests = []
    for minute, route, stop in sorted(taps):
        kind = "board" if route != "K101" else ("on" if len(requests) % 2 == 0 else "off")
        requests.append(PricingRequest(tap_time_ms=start + minute * 60_000, tap_kind=kind, route_id=route,
                                       stop_id=stop, entitlements=who))

    def run() -> list[tuple[int, int, int]]:
        state = None
        out = []
        for request in requests:
            price, new_state = yiyuan.price(request, state)
            if price.reason == 0:
                state = new_state
            assert price.fare_fen >= 0
            assert price.fare_fen <= price.full_fare_fen or price.full_fare_fen == 0
            assert price.adjustment_fen <= 0
            out.append((price.reason, price.fare_fen, price.adjustment_fen))
        return out

    first = run()
    assert first == run()

    # The Yiyuan daily cap (10 yuan on both bus networks) holds on every local day.
    per_day: dict[int, int] = {}
    for request, (_, fare, adjustment) in zip(requests, first):
        day = local_day_and_minute(request.tap_time_ms)[0]
        per_day[day] = per_day.get(day, 0) + fare + adjustment
    assert all(total <= 1000 for total in per_day.values()), per_day
