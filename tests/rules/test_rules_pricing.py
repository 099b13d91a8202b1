"""Table-driven pricing tests on the illustrative Yiyuan rule set.

Each scenario is a sequence of taps by one holder; the rider state returned
by one tap is passed to the next, as the gateway does. 2026-12-02 is a
Wednesday (a workday), 2026-12-05 a Saturday.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from gateway.reasons import Reason
from gateway.rules import MEDIUM_CARD, MEDIUM_QR, PricingRequest, RiderState, RuleBook
from tests.rules.conftest import ADULT, Entitlements, local_ms

SENIOR_65_ON_DEC_2 = Entitlements(birth_date=dt.date(1961, 12, 2))
SENIOR_70 = Entitlements(birth_date=dt.date(1956, 3, 1))
SENIOR_62 = Entitlements(birth_date=dt.date(1964, 7, 1))
LEAP_BABY = Entitlements(birth_date=dt.date(1960, 2, 29))
DISABLED = Entitlements(birth_date=dt.date(1980, 1, 1), disability_until=dt.date(2027, 1, 1))
DISABLED_EXPIRED = Entitlements(birth_date=dt.date(1980, 1, 1), disability_until=dt.date(2026, 12, 1))
PRIORITY = Entitlements(birth_date=dt.date(1970, 1, 1), priority_until=dt.date(2030, 1, 1), priority_group=3)
STUDENT = Entitlements(birth_date=dt.date(2008, 1, 1), student_until=dt.date(2027, 7, 31))
CHILD = Entitlements(birth_date=dt.date(2022, 1, 1))


def tap(time_ms: int, kind: str = "board", route: str | None = "1", stop: str | None = None,
        site: str | None = None, medium: int = MEDIUM_CARD, who: Any = ADULT) -> PricingRequest:
    return PricingRequest(tap_time_ms=time_ms, tap_kind=kind, medium=medium, route_id=route, stop_id=stop,
                          site_id=site, holder_token=b"h" * 16, entitlements=who)


def run(book: RuleBook, steps: list[tuple[PricingRequest, dict[str, Any]]]) -> RiderState | None:
    state: RiderState | None = None
    for number, (request, expected) in enumerate(steps, 1):
        price, state = book.price(request, state)
        # Round-trip the state through its encoding at every step, as the gateway stores it.
        state = RiderState.decode(state.encode())
        for field, value in expected.items():
            assert getattr(price, field) == value, f"step {number} {field}: {price}"
    return state


SINGLE_TAPS = [
    # (name, request, expected)
    ("adult urban flat fare", tap(local_ms(2026, 12, 2, 10)),
     dict(reason=0, fare_fen=100, full_fare_fen=100, rider_category="adult", product_id="urban-single",
          discount_kinds=(), display_zh="成人 1.00元", display_en="Adult, ¥1.00")),
    ("65th birthday on the day of the ride", tap(local_ms(2026, 12, 2, 10), who=SENIOR_65_ON_DEC_2),
     dict(fare_fen=0, rider_category="senior-65", discount_kinds=("category",), display_zh="老年人 免费",
          display_en="Senior, free")),
    ("day before the 65th birthday", tap(local_ms(2026, 12, 1, 10), who=SENIOR_65_ON_DEC_2),
     dict(fare_fen=50, rider_category="senior-60", display_zh="老年人 0.50元")),
    ("senior at peak pays the 60+ half fare", tap(local_ms(2026, 12, 2, 7, 30), who=SENIOR_70),
     dict(fare_fen=50, rider_category="senior-60")),
    ("senior at peak on a weekend rides free", tap(local_ms(2026, 12, 5, 7, 30), who=SENIOR_70),
     dict(fare_fen=0, rider_category="senior-65")),
    ("adjusted working Saturday has peak hours", tap(local_ms(2026, 2, 14, 8), who=SENIOR_70),
     dict(fare_fen=50, rider_category="senior-60")),
    ("holiday weekday has no peak hours", tap(local_ms(2026, 10, 2, 8), who=SENIOR_70),
     dict(fare_fen=0, rider_category="senior-65")),
    ("peak ends at 09:00", tap(local_ms(2026, 12, 2, 9, 0), who=SENIOR_70),
     dict(fare_fen=0, rider_category="senior-65")),
    ("60 to 64 half fare", tap(local_ms(2026, 12, 2, 10), who=SENIOR_62),
     dict(fare_fen=50, rider_category="senior-60", discount_kinds=("category",))),
    ("29 Feb birthday not reached on 28 Feb", tap(local_ms(2025, 2, 28, 10), who=LEAP_BABY),
     dict(fare_fen=50, rider_category="senior-60")),
    ("29 Feb birthday reached on 1 Mar", tap(local_ms(2025, 3, 1, 10), who=LEAP_BABY),
     dict(fare_fen=0, rider_category="senior-65")),
    ("disabled free", tap(local_ms(2026, 12, 2, 8), who=DISABLED),
     dict(fare_fen=0, rider_category="disabled", display_en="Disabled, free")),
    ("expired disability pays", tap(local_ms(2026, 12, 2, 8), who=DISABLED_EXPIRED),
     dict(fare_fen=100, rider_category="adult")),
    ("priority group free", tap(local_ms(2026, 12, 2, 8), who=PRIORITY),
     dict(fare_fen=0, rider_category="priority", display_zh="优抚对象 免费")),
    ("student half on urban buses", tap(local_ms(2026, 12, 2, 8), who=STUDENT),
     dict(fare_fen=50, rider_category="student")),
    ("child free", tap(local_ms(2026, 12, 2, 8), who=CHILD), dict(fare_fen=0, rider_category="child")),
    ("no entitlements is adult", tap(local_ms(2026, 12, 2, 8), who=None),
     dict(fare_fen=100, rider_category="adult")),
    ("unknown route", tap(local_ms(2026, 12, 2, 8), route="99"),
     dict(reason=Reason.NO_FARE_RULE, fare_fen=0, display_zh="此线路暂不支持")),
    ("county route needs tap-on, not board", tap(local_ms(2026, 12, 2, 8), route="K101"),
     dict(reason=Reason.NO_FARE_RULE)),
    ("scenic peak season price", tap(local_ms(2026, 5, 10, 9), kind="entry", route=None, site="lushan"),
     dict(fare_fen=6000, full_fare_fen=6000, product_id="lushan-ticket", display_zh="成人 60.00元")),
    ("scenic off-peak season price", tap(local_ms(2026, 12, 2, 9), kind="entry", route=None, site="lushan"),
     dict(fare_fen=4000, full_fare_fen=4000)),
    ("scenic student discount", tap(local_ms(2026, 12, 2, 9), kind="entry", route=None, site="niulang",
                                    who=STUDENT),
     dict(fare_fen=1500, full_fare_fen=3000, rider_category="student", discount_kinds=("category",))),
    ("scenic senior 65 free with ID check",
     tap(local_ms(2026, 12, 2, 9), kind="entry", route=None, site="niulang", who=SENIOR_70),
     dict(fare_fen=0, rider_category="senior-65-visit", display_zh="老年人 免费 请核验身份",
          display_en="Senior, free, check ID")),
    ("venue free entry with ID check", tap(local_ms(2026, 12, 2, 9), kind="entry", route=None, site="library"),
     dict(reason=0, fare_fen=0, full_fare_fen=0, product_id="free-entry", display_zh="免费入场 请核验身份",
          display_en="Free entry, check ID")),
    ("unknown site", tap(local_ms(2026, 12, 2, 9), kind="entry", route=None, site="zoo"),
     dict(reason=Reason.NO_FARE_RULE)),
]


@pytest.mark.parametrize("request_, expected", [case[1:] for case in SINGLE_TAPS],
                         ids=[case[0] for case in SINGLE_TAPS])
def test_single_tap(yiyuan: RuleBook, request_: PricingRequest, expected: dict[str, Any]) -> None:
    run(yiyuan, [(request_, expected)])


def test_midnight_local_with_process_in_utc(yiyuan: RuleBook, utc_process: None) -> None:
    # 23:59:59 on 1 Dec is before the 65th birthday and during the day's cap period; 00:00:00 is after.
    last_second = tap(local_ms(2026, 12, 1, 23, 59, 59), who=SENIOR_65_ON_DEC_2)
    midnight = tap(local_ms(2026, 12, 2, 0, 0, 0), who=SENIOR_65_ON_DEC_2)
    run(yiyuan, [(last_second, dict(fare_fen=50, rider_category="senior-60"))])
    run(yiyuan, [(midnight, dict(fare_fen=0, rider_category="senior-65"))])


def test_daily_cap_resets_at_local_midnight(variant, utc_process: None) -> None:
    def edit(raw: dict[str, Any]) -> None:
        raw["transfer_rules"] = []
        raw["caps"][0]["amount_fen"] = 200

    book = variant(edit)
    run(book, [
        (tap(local_ms(2026, 12, 1, 23, 0)), dict(fare_fen=100)),
        (tap(local_ms(2026, 12, 1, 23, 30)), dict(fare_fen=100)),
        (tap(local_ms(2026, 12, 1, 23, 59, 59)), dict(fare_fen=0, discount_kinds=("cap",))),
        (tap(local_ms(2026, 12, 2, 0, 0, 0)), dict(fare_fen=100, discount_kinds=())),
    ])


TRANSFERS = [
    ("free urban transfer within 60 minutes", [
        (tap(local_ms(2026, 12, 2, 10)), dict(fare_fen=100)),
        (tap(local_ms(2026, 12, 2, 11), route="2"),
         dict(fare_fen=0, discount_kinds=("transfer",), display_zh="成人 换乘 免费")),
    ]),
    ("no transfer after 60 minutes", [
        (tap(local_ms(2026, 12, 2, 10)), dict(fare_fen=100)),
        (tap(local_ms(2026, 12, 2, 11, 0, 1), route="2"), dict(fare_fen=100, discount_kinds=())),
    ]),
    ("one transfer per journey", [
        (tap(local_ms(2026, 12, 2, 10)), dict(fare_fen=100)),
        (tap(local_ms(2026, 12, 2, 10, 20), route="2"), dict(fare_fen=0)),
        (tap(local_ms(2026, 12, 2, 10, 40), route="3"), dict(fare_fen=100)),
    ]),
    ("transfer across media: card then QR code", [
        (tap(local_ms(2026, 12, 2, 10), medium=MEDIUM_CARD), dict(fare_fen=100)),
        (tap(local_ms(2026, 12, 2, 10, 30), route="5", medium=MEDIUM_QR),
         dict(fare_fen=0, discount_kinds=("transfer",))),
    ]),
    ("elderly free ride, then a paid peak leg: categories differ, no transfer", [
        (tap(local_ms(2026, 12, 2, 16, 30), who=SENIOR_70), dict(fare_fen=0, rider_category="senior-65")),
        (tap(local_ms(2026, 12, 2, 17, 10), route="2", who=SENIOR_70),
         dict(fare_fen=50, rider_category="senior-60", discount_kinds=("category",))),
    ]),
    ("urban to county line: 1 yuan off the tap-on", [
        (tap(local_ms(2026, 12, 2, 10)), dict(fare_fen=100)),
        (tap(local_ms(2026, 12, 2, 10, 30), kind="on", route="K101", stop="NM02"),
         dict(fare_fen=500, full_fare_fen=600, discount_kinds=("transfer",))),
        (tap(local_ms(2026, 12, 2, 11, 10), kind="off", route="K101", stop="LC01"),
         dict(fare_fen=0, adjustment_fen=-100, full_fare_adjustment_fen=-100, discount_kinds=("transfer",),
              display_zh="成人 4.00元 退1.00元")),
    ]),
]


@pytest.mark.parametrize("steps", [case[1] for case in TRANSFERS], ids=[case[0] for case in TRANSFERS])
def test_transfer(yiyuan: RuleBook, steps: list[tuple[PricingRequest, dict[str, Any]]]) -> None:
    run(yiyuan, steps)


def test_transfer_same_medium_required(variant) -> None:
    book = variant(lambda raw: raw["transfer_rules"][0].update(same_medium_required=True))
    run(book, [
        (tap(local_ms(2026, 12, 2, 10), medium=MEDIUM_CARD), dict(fare_fen=100)),
        (tap(local_ms(2026, 12, 2, 10, 30), route="5", medium=MEDIUM_QR), dict(fare_fen=100, discount_kinds=())),
    ])


def test_transfer_from_free_ride_without_category_match(variant) -> None:
    book = variant(lambda raw: raw["transfer_rules"][0].update(same_category_required=False))
    run(book, [
        (tap(local_ms(2026, 12, 2, 16, 30), who=SENIOR_70), dict(fare_fen=0, rider_category="senior-65")),
        (tap(local_ms(2026, 12, 2, 17, 10), route="2", who=SENIOR_70),
         dict(fare_fen=0, rider_category="senior-60", discount_kinds=("category", "transfer"))),
    ])


def _no_transfers_cap(amount: int, urban_fen: int):
    def edit(raw: dict[str, Any]) -> None:
        raw["transfer_rules"] = []
        raw["caps"][0]["amount_fen"] = amount
        raw["products"][0]["price_fen"] = urban_fen

    return edit


def test_cap_reached_exactly(variant) -> None:
    book = variant(_no_transfers_cap(300, 100))
    run(book, [
        (tap(local_ms(2026, 12, 2, 8)), dict(fare_fen=100, discount_kinds=())),
        (tap(local_ms(2026, 12, 2, 9)), dict(fare_fen=100, discount_kinds=())),
        (tap(local_ms(2026, 12, 2, 10)), dict(fare_fen=100, discount_kinds=())),
        (tap(local_ms(2026, 12, 2, 11)),
         dict(fare_fen=0, full_fare_fen=100, discount_kinds=("cap",), display_zh="成人 已封顶 免费")),
    ])


def test_cap_exceeded(variant) -> None:
    book = variant(_no_transfers_cap(300, 200))
    run(book, [
        (tap(local_ms(2026, 12, 2, 8)), dict(fare_fen=200, discount_kinds=())),
        (tap(local_ms(2026, 12, 2, 9)), dict(fare_fen=100, full_fare_fen=200, discount_kinds=("cap",))),
        (tap(local_ms(2026, 12, 2, 10)), dict(fare_fen=0, discount_kinds=("cap",))),
    ])


def test_cap_counts_discounted_fares(variant) -> None:
    book = variant(_no_transfers_cap(100, 100))
    run(book, [
        (tap(local_ms(2026, 12, 2, 8), who=SENIOR_62), dict(fare_fen=50)),
        (tap(local_ms(2026, 12, 2, 9), who=SENIOR_62), dict(fare_fen=50, discount_kinds=("category",))),
        (tap(local_ms(2026, 12, 2, 10), who=SENIOR_62), dict(fare_fen=0, discount_kinds=("category", "cap"))),
    ])


def test_weekly_cap_resets_on_monday(variant) -> None:
    def edit(raw: dict[str, Any]) -> None:
        _no_transfers_cap(150, 100)(raw)
        raw["caps"][0]["period"] = "week"

    book = variant(edit)
    run(book, [
        (tap(local_ms(2026, 12, 5, 10)), dict(fare_fen=100)),   # Saturday
        (tap(local_ms(2026, 12, 6, 10)), dict(fare_fen=50)),    # Sunday
        (tap(local_ms(2026, 12, 6, 23, 59)), dict(fare_fen=0)),
        (tap(local_ms(2026, 12, 7, 0, 1)), dict(fare_fen=100)),  # Monday
    ])


def test_tap_off_corrects_max_fare(yiyuan: RuleBook) -> None:
    state = run(yiyuan, [
        (tap(local_ms(2026, 12, 2, 10), kind="on", route="K102", stop="NM01"),
         dict(fare_fen=600, full_fare_fen=600, display_zh="成人 预扣6.00元")),
        (tap(local_ms(2026, 12, 2, 10, 40), kind="off", route="K102", stop="DL02"),
         dict(fare_fen=0, adjustment_fen=-200, full_fare_adjustment_fen=-200, display_zh="成人 4.00元 退2.00元",
              display_en="Adult, ¥4.00 (¥2.00 back)")),
    ])
    assert state is not None and state.open_trip is None
    assert state.caps[0].spent_fen == 400


def test_missing_tap_off_keeps_max_fare(yiyuan: RuleBook) -> None:
    state = run(yiyuan, [
        (tap(local_ms(2026, 12, 2, 10), kind="on", route="K102", stop="NM01"), dict(fare_fen=600)),
        # The next tap, an urban boarding, closes the unmatched trip: no new charge for it.
        (tap(local_ms(2026, 12, 2, 15), route="1"), dict(fare_fen=100, unmatched_trip_closed=True)),
    ])
    assert state is not None and state.open_trip is None
    assert state.caps[0].spent_fen == 700


def test_tap_off_after_the_limit_is_not_matched(yiyuan: RuleBook) -> None:
    run(yiyuan, [
        (tap(local_ms(2026, 12, 2, 10), kind="on", route="K102", stop="NM01"), dict(fare_fen=600)),
        (tap(local_ms(2026, 12, 2, 14, 1), kind="off", route="K102", stop="DL02"),
         dict(reason=0, fare_fen=0, adjustment_fen=0, display_en="No tap-on found", unmatched_trip_closed=True)),
    ])


def test_senior_tap_on_free_tap_off_nothing_back(yiyuan: RuleBook) -> None:
    run(yiyuan, [
        (tap(local_ms(2026, 12, 2, 10), kind="on", route="K101", stop="LC01", who=SENIOR_70),
         dict(fare_fen=0, full_fare_fen=500, rider_category="senior-65", display_zh="老年人 免费")),
        (tap(local_ms(2026, 12, 2, 10, 50), kind="off", route="K101", stop="NM03", who=SENIOR_70),
         dict(adjustment_fen=0, full_fare_adjustment_fen=0, rider_category="senior-65")),
    ])


def test_scenic_one_entry_per_day(yiyuan: RuleBook) -> None:
    run(yiyuan, [
        (tap(local_ms(2026, 12, 2, 9), kind="entry", route=None, site="lushan"), dict(reason=0, fare_fen=4000)),
        (tap(local_ms(2026, 12, 2, 15), kind="entry", route=None, site="lushan"),
         dict(reason=Reason.ALREADY_ENTERED_TODAY, fare_fen=0, display_zh="今日已入园")),
        (tap(local_ms(2026, 12, 2, 15), kind="entry", route=None, site="niulang"), dict(reason=0, fare_fen=3000)),
        (tap(local_ms(2026, 12, 3, 9), kind="entry", route=None, site="lushan"), dict(reason=0, fare_fen=4000)),
    ])


def test_venue_entry_repeats_allowed(yiyuan: RuleBook) -> None:
    run(yiyuan, [
        (tap(local_ms(2026, 12, 2, 9), kind="entry", route=None, site="museum"), dict(reason=0)),
        (tap(local_ms(2026, 12, 2, 10), kind="entry", route=None, site="museum"), dict(reason=0)),
    ])


def test_operator_must_own_the_route(yiyuan: RuleBook) -> None:
    request = PricingRequest(tap_time_ms=local_ms(2026, 12, 2, 9), route_id="1", operator_id="lushan-park")
    price, _ = yiyuan.price(request, None)
    assert price.reason == Reason.NO_FARE_RULE


def test_medium_restriction(variant) -> None:
    book = variant(lambda raw: raw["products"][0].update(media=["card"]))
    run(book, [(tap(local_ms(2026, 12, 2, 9), medium=MEDIUM_QR), dict(reason=Reason.MEDIUM_NOT_ACCEPTED))])


def test_category_not_eligible(variant) -> None:
    book = variant(lambda raw: raw["products"][2].update(eligible_categories=["student"]))
    run(book, [(tap(local_ms(2026, 12, 2, 9), kind="entry", route=None, site="lushan"),
                dict(reason=Reason.CATEGORY_NOT_ELIGIBLE))])


def test_state_is_not_modified(yiyuan: RuleBook) -> None:
    _, first = yiyuan.price(tap(local_ms(2026, 12, 2, 10)), None)
    encoded = first.encode()
    yiyuan.price(tap(local_ms(2026, 12, 2, 10, 30), route="2"), first)
    assert first.encode() == encoded


def test_unknown_tap_kind_raises(yiyuan: RuleBook) -> None:
    with pytest.raises(ValueError, match="unknown tap_kind 'exit'"):
        yiyuan.price(tap(local_ms(2026, 12, 2, 10), kind="exit"), None)
