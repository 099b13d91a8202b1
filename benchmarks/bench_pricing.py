"""Cost of pricing one tap with the compiled illustrative Yiyuan rule set (group "pricing").

Each case calls ``RuleBook.price(request, state)`` once per iteration with a
request built beforehand:

- ``board_adult_new``: urban flat fare, rider without state (first tap);
- ``board_senior_transfer``: elderly rider at an off-peak hour with a previous
  leg 20 minutes earlier, so the category, transfer and cap steps all run;
- ``tap_on_area`` and ``tap_off_area``: a county-line tap-on (maximum fare)
  and the tap-off that corrects it;
- ``entry_scenic``: scenic ticket with a seasonal price and one-entry check;
- ``reject_unknown_route``: the cheapest path, a rejection;
- ``state_roundtrip``: encoding and decoding a rider state (MessagePack), as
  the gateway does around every priced tap.

Group "localtime" compares the cached local-time lookup that pricing uses
with building an aware ``datetime`` per tap. Group "compile" measures
compiling the whole document (done once per published version).

    python -m pytest benchmarks/bench_pricing.py --benchmark-columns=min,median,mean,ops

Results and the machine they were measured on are in docs/benchmarks.md.
"""

from __future__ import annotations

import datetime as dt
import tomllib

import pytest

from gateway.rules import (PricingRequest, RiderState, compile_rule_set, document_from_builtins,
                           example_document_text)
from gateway.rules.localtime import local_day_and_minute
from gateway.timeutil import LOCAL_TZ, to_unix_ms


class Entitlements:
    __slots__ = ("birth_date", "disability_until", "priority_until", "student_until", "priority_group")

    def __init__(self, birth_date: dt.date | None) -> None:
        self.birth_date = birth_date
        self.disability_until = None
        self.priority_until = None
        self.student_until = None
        self.priority_group = 0


ADULT = Entitlements(dt.date(1990, 5, 17))
SENIOR = Entitlements(dt.date(1950, 3, 1))
DOCUMENT = document_from_builtins(tomllib.loads(example_document_text()))
BOOK = compile_rule_set(DOCUMENT, version=1)


def local_ms(*parts: int) -> int:
    return to_unix_ms(dt.datetime(*parts, tzinfo=LOCAL_TZ))


TEN = local_ms(2026, 12, 2, 10, 0)
_, SENIOR_STATE = BOOK.price(PricingRequest(tap_time_ms=TEN - 20 * 60_000, route_id="1", entitlements=SENIOR), None)
ON_REQUEST = PricingRequest(tap_time_ms=TEN, tap_kind="on", route_id="K101", stop_id="NM01", entitlements=ADULT)
_, ON_STATE = BOOK.price(ON_REQUEST, None)

CASES = {
    "board_adult_new": (PricingRequest(tap_time_ms=TEN, route_id="1", entitlements=ADULT), None),
    "board_senior_transfer": (PricingRequest(tap_time_ms=TEN, route_id="2", entitlements=SENIOR), SENIOR_STATE),
    "tap_on_area": (ON_REQUEST, None),
    "tap_off_area": (PricingRequest(tap_time_ms=TEN + 40 * 60_000, tap_kind="off", route_id="K101", stop_id="LC01",
                                    entitlements=ADULT), ON_STATE),
    "entry_scenic": (PricingRequest(tap_time_ms=TEN, tap_kind="entry", site_id="lushan", entitlements=ADULT), None),
    "reject_unknown_route": (PricingRequest(tap_time_ms=TEN, route_id="99", entitlements=ADULT), None),
}


@pytest.mark.benchmark(group="pricing")
@pytest.mark.parametrize("case", list(CASES))
def test_price(benchmark, case: str) -> None:
    request, state = CASES[case]
    price, _ = benchmark(BOOK.price, request, state)
    assert price.rule_set_version == 1


@pytest.mark.benchmark(group="pricing")
def test_state_roundtrip(benchmark) -> None:
    state = ON_STATE
    decoded = benchmark(lambda: RiderState.decode(state.encode()))
    assert decoded == state


@pytest.mark.benchmark(group="localtime")
def test_localtime_cached(benchmark) -> None:
    assert benchmark(local_day_and_minute, TEN) == (TEN // 86_400_000, 600)


@pytest.mark.benchmark(group="localtime")
def test_localtime_datetime(benchmark) -> None:
    def convert(ms: int) -> tuple[dt.date, int]:
        moment = dt.datetime.fromtimestamp(ms / 1000, LOCAL_TZ)
        return moment.date(), moment.hour * 60 + moment.minute

    assert benchmark(convert, TEN)[1] == 600


@pytest.mark.benchmark(group="compile")
def test_compile(benchmark) -> None:
    book = benchmark(compile_rule_set, DOCUMENT, 1)
    assert len(book.routes) == 8
