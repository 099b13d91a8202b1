"""What-if simulation over journaled taps, written straight into the ``taps`` table."""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import itertools

import asyncpg

from gateway.rules import PricingRequest, RiderState, compile_rule_set, example_document_text, load_rule_set_document
from gateway.rules import store
from gateway.rules.simulate import format_report, simulate
from gateway.timeutil import business_day, from_unix_ms
from tests.rules.conftest import ADULT, Entitlements, local_ms

TEXT = example_document_text()
CHEAPER = TEXT.replace("price_fen = 100\n", "price_fen = 80\n", 1)
SENIOR = Entitlements(birth_date=dt.date(1950, 1, 1))
_ids = itertools.count(1)


async def _journal(conn: asyncpg.Connection, book, holder: bytes, who, taps: list[PricingRequest]) -> None:
    """Price ``taps`` with ``book`` and insert them as the gateway would journal them."""
    state: RiderState | None = None
    kinds = {"board": 0, "on": 1, "off": 2, "entry": 3}
    for request in taps:
        request = PricingRequest(tap_time_ms=request.tap_time_ms, tap_kind=request.tap_kind, route_id=request.route_id,
                                 stop_id=request.stop_id, site_id=request.site_id, holder_token=holder,
                                 entitlements=who)
        price, new_state = book.price(request, state)
        if price.reason == 0:
            state = new_state
        tap_id = next(_ids)
        moment = from_unix_ms(request.tap_time_ms)
        operator = "yiyuan-bus" if request.route_id else "lushan-park"
        await conn.execute(
            """INSERT INTO taps (tap_id, business_day, batch_id, device_id, device_tap_id, tap_time, received_at,
                   operator_id, route_id, stop_id, site_id, tap_kind, medium, holder_token, decision, reason,
                   rider_category, product_id, fare_fen, full_fare_fen, discount_kinds, rule_set_version,
                   request_digest, adjustment_fen, full_fare_adjustment_fen)
               VALUES ($1, $2, 1, 'dev-1', $1, $3, $3, $4, $5, $6, $7, $8, 1, $9, $10, $11, $12, $13, $14, $15,
                   $16, $17, $18, $19, $20)""",
            tap_id, business_day(moment), moment, operator, request.route_id, request.stop_id, request.site_id,
            kinds[request.tap_kind], holder, 1 if price.reason == 0 else 0, price.reason, price.rider_category,
            price.product_id, price.fare_fen, price.full_fare_fen, list(price.discount_kinds),
            price.rule_set_version, hashlib.sha256(str(tap_id).encode()).digest(), price.adjustment_fen,
            price.full_fare_adjustment_fen)


async def test_cheaper_urban_fare_lowers_revenue_and_subsidy(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        start = local_ms(2026, 11, 30)
        version = await store.create_draft(conn, TEXT, "toml", "alice")
        await store.publish(conn, version, start, "alice", now_ms=start)
        books = await store.load_books(conn)
        book = books.for_time(start)
        day = [PricingRequest(tap_time_ms=local_ms(2026, 12, 2, hour), route_id="1") for hour in (8, 10, 12)]
        await _journal(conn, book, b"A" * 16, ADULT, day)
        await _journal(conn, book, b"S" * 16, SENIOR, day)
        await _journal(conn, book, b"T" * 16, ADULT, [
            PricingRequest(tap_time_ms=local_ms(2026, 12, 2, 9), tap_kind="entry", route_id=None, site_id="lushan"),
            PricingRequest(tap_time_ms=local_ms(2026, 12, 2, 10), tap_kind="entry", route_id=None, site_id="lushan"),
        ])

        draft = compile_rule_set(load_rule_set_document(CHEAPER), version=99)
        bar = io.StringIO()
        report = await simulate(conn, draft, dt.date(2026, 12, 2), dt.date(2026, 12, 2), published=books,
                                progress_file=bar)
    finally:
        await conn.close()

    rows = {(r.operator_id, r.rider_category): r for r in report.rows}
    adult = rows[("yiyuan-bus", "adult")]
    assert (adult.baseline_taps, adult.draft_taps) == (3, 3)
    assert (adult.baseline_revenue_fen, adult.draft_revenue_fen) == (300, 240)
    assert adult.revenue_delta_fen == -60
    senior_peak = rows[("yiyuan-bus", "senior-60")]
    assert (senior_peak.baseline_revenue_fen, senior_peak.draft_revenue_fen) == (50, 40)
    senior_free = rows[("yiyuan-bus", "senior-65")]
    assert (senior_free.baseline_subsidy_fen, senior_free.draft_subsidy_fen) == (200, 160)
    assert senior_free.subsidy_delta_fen == -40
    scenic = rows[("lushan-park", "adult")]
    assert (scenic.baseline_taps, scenic.draft_taps, scenic.draft_revenue_fen) == (1, 1, 4000)
    assert report.taps_read == 8
    assert (report.newly_accepted, report.newly_rejected) == (0, 0)
    assert report.totals().revenue_delta_fen == -70
    assert "8/8" in bar.getvalue()
    lines = list(format_report(report))
    assert lines[-1].startswith("* | * | 7/7 | 43.50 | 42.80 | -0.70")


async def test_county_baseline_counts_tap_off_adjustment(dsn: str) -> None:
    # Simulating the published rules themselves must change nothing: the baseline
    # is the trip fare (4.00 from Nanma to Dongli), not the tap-on's maximum (6.00).
    conn = await asyncpg.connect(dsn)
    try:
        start = local_ms(2026, 11, 30)
        version = await store.create_draft(conn, TEXT, "toml", "alice")
        await store.publish(conn, version, start, "alice", now_ms=start)
        books = await store.load_books(conn)
        on_ms = local_ms(2026, 12, 2, 8)
        await _journal(conn, books.for_time(start), b"C" * 16, ADULT, [
            PricingRequest(tap_time_ms=on_ms, tap_kind="on", route_id="K101", stop_id="NM01"),
            PricingRequest(tap_time_ms=on_ms + 1_800_000, tap_kind="off", route_id="K101", stop_id="DL01"),
        ])
        draft = compile_rule_set(load_rule_set_document(TEXT), version=99)
        report = await simulate(conn, draft, dt.date(2026, 12, 2), dt.date(2026, 12, 2), published=books,
                                progress=False)
    finally:
        await conn.close()

    [row] = report.rows
    assert (row.operator_id, row.rider_category) == ("yiyuan-bus", "adult")
    assert (row.baseline_revenue_fen, row.draft_revenue_fen) == (400, 400)
    assert (row.baseline_subsidy_fen, row.draft_subsidy_fen) == (0, 0)


async def test_empty_period_reports_nothing(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        draft = compile_rule_set(load_rule_set_document(TEXT), version=1)
        report = await simulate(conn, draft, dt.date(2026, 1, 1), dt.date(2026, 1, 31), progress=False)
    finally:
        await conn.close()
    assert report.rows == []
    assert report.taps_read == 0
