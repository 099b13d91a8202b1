"""GTFS Fares v2 import: what maps into a rule set, and the report of what does not."""

from __future__ import annotations

import datetime as dt
import pathlib
import zipfile

from gateway.rules import PricingRequest, compile_rule_set, document_from_builtins
from gateway.rules.gtfs import import_gtfs
from tests.rules.conftest import Entitlements, local_ms

FEED = pathlib.Path(__file__).parent / "data" / "gtfs"


def _unmapped(result) -> set[tuple[str, int, str]]:
    return {(u.file, u.row, u.field) for u in result.unmapped}


def test_feed_maps_to_a_valid_rule_set() -> None:
    result = import_gtfs(FEED, "yiyuan-gtfs")
    assert result.problems == []
    doc = result.document
    assert [n["network_id"] for n in doc["networks"]] == ["urban", "county"]
    assert doc["networks"][1]["fare_structure"] == "area"
    assert [c["kind"] for c in doc["rider_categories"]] == ["adult", "elderly"]
    urban = next(p for p in doc["products"] if p["product_id"] == "urban")
    assert urban["price_fen"] == 100
    assert urban["category_percent"] == {"senior": 50}
    assert {p["product_id"] for p in doc["products"]} == {"urban", "nm-lc", "night"}
    assert [t["mode"] for t in doc["transfer_rules"]] == ["free", "discount"]
    assert doc["transfer_rules"][1]["amount_fen"] == 100


def test_imported_rules_price_taps() -> None:
    book = compile_rule_set(document_from_builtins(import_gtfs(FEED).document))
    senior = Entitlements(birth_date=dt.date(1950, 1, 1))
    price, state = book.price(PricingRequest(tap_time_ms=local_ms(2026, 12, 2, 10), route_id="1",
                                             entitlements=senior), None)
    assert (price.fare_fen, price.rider_category) == (50, "senior")
    price, state = book.price(PricingRequest(tap_time_ms=local_ms(2026, 12, 2, 11), tap_kind="on", route_id="K101",
                                             stop_id="NM01"), None)
    assert price.fare_fen == 500


def test_everything_unmapped_is_reported() -> None:
    result = import_gtfs(FEED)
    assert _unmapped(result) == {
        ("timeframes", 2, "service_id"),
        ("rider_categories", 3, "eligibility_url"),
        ("rider_categories", 4, "rider_category_id"),
        ("fare_media", 4, "fare_media_type"),
        ("fare_products", 5, "rider_category_id"),
        ("fare_products", 8, "currency"),
        ("fare_products", 10, "fare_media_id"),
        ("fare_leg_rules", 5, "network_id"),
        ("fare_transfer_rules", 3, "duration_limit_type"),
        ("fare_transfer_rules", 4, "fare_transfer_type"),
    }
    currency = next(u for u in result.unmapped if u.field == "currency")
    assert currency.describe() == "fare_products.txt row 8 currency='USD': 仅支持人民币（CNY）金额 / only CNY amounts can be imported"


def test_zip_feed(tmp_path: pathlib.Path) -> None:
    archive = tmp_path / "feed.zip"
    with zipfile.ZipFile(archive, "w") as out:
        for path in FEED.iterdir():
            out.write(path, path.name)
    assert import_gtfs(archive).document == import_gtfs(FEED).document


def test_empty_feed_reports_missing_parts(tmp_path: pathlib.Path) -> None:
    result = import_gtfs(tmp_path)
    assert ("agency", 0, "agency_id") in _unmapped(result)
    assert [p.path for p in result.problems] == ["$.products"]
