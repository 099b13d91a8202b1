"""The demo's parts without running a day: the plan is deterministic and inside the day, and the checks fail
when an invariant is broken."""

from __future__ import annotations

import datetime as dt

import pytest

from gateway import db
from gateway.timeutil import day_bounds
from loadtests.scenario import load_model
from tapgate.demo import checks, plan
from tapgate.demo.drive import TapResult
from tapgate.demo.world import build_world

DAY = dt.date(2026, 11, 20)


@pytest.fixture(scope="module")
def world():
    return build_world(load_model(), DAY, holders=150, seed=11)


def _fingerprint(day_plan: plan.DayPlan) -> list[tuple]:
    return [(t.seq, t.kind, t.device.device_id, t.holder.holder_token if t.holder else None, t.medium, t.tap_kind,
             t.tap_time_ms, t.stop_id, t.offline) for d in day_plan.dispatches for t in d.taps]


def test_plan_same_seed_same_day(world) -> None:
    again = build_world(load_model(), DAY, holders=150, seed=11)
    first = plan.plan_day(world, 600, seed=11)
    second = plan.plan_day(again, 600, seed=11)
    assert _fingerprint(first) == _fingerprint(second)
    assert _fingerprint(first) != _fingerprint(plan.plan_day(world, 600, seed=12))


def test_plan_taps_inside_business_day(world) -> None:
    cutoff = dt.time(2, 0)
    day_plan = plan.plan_day(world, 800, seed=4, cutoff=cutoff)
    start, end = (int(moment.timestamp()) * 1000 for moment in day_bounds(DAY, cutoff))
    assert day_plan.taps
    assert all(start <= tap.tap_time_ms < end for tap in day_plan.taps)


def test_plan_mixes_every_bad_kind(world) -> None:
    day_plan = plan.plan_day(world, 2000, seed=5)
    for kind in plan.BAD_KINDS:
        assert day_plan.count(kind) > 0, kind
    assert any(d.offline and len(d.taps) > 1 for d in day_plan.dispatches)


def test_plan_replay_after_original(world) -> None:
    day_plan = plan.plan_day(world, 2000, seed=6)
    order = {id(tap): d.order for d in day_plan.dispatches for tap in d.taps}
    replays = [tap for tap in day_plan.taps if tap.kind == plan.REPLAYED_QR]
    assert replays
    for tap in replays:
        assert tap.replay_of is not None
        assert tap.replay_of.medium == "qr"
        assert not tap.replay_of.offline
        assert order[id(tap.replay_of)] < order[id(tap)]


def _result(world, kind: str, **fields) -> TapResult:
    tap = plan.PlannedTap(0, kind, "urban", world.devices[0], world.holders[0], "qr", "board", 0)
    tap.device_tap_id = 1
    return TapResult(tap, **fields)


def _check(found: list[checks.Check], name_en: str) -> checks.Check:
    return next(check for check in found if check.name_en == name_en)


def test_forged_code_accepted_fails(world) -> None:
    found = checks.traffic_checks([_result(world, plan.FORGED_ISSUER, http_status=200, decision="accepted",
                                           reason=0, journal_id=7)])
    assert not _check(found, "no forged code or card accepted").ok
    assert not _check(found, "bad taps rejected with their expected reason").ok


def test_valid_tap_rejected_by_signature_fails(world) -> None:
    found = checks.traffic_checks([_result(world, plan.VALID, http_status=200, decision="rejected", reason=6,
                                           journal_id=7)])
    assert not _check(found, "valid taps rejected only by fare rules").ok


def test_valid_tap_rejected_by_fare_rule_passes(world) -> None:
    found = checks.traffic_checks([_result(world, plan.VALID, http_status=200, decision="rejected", reason=61,
                                           journal_id=7)])
    assert all(check.ok for check in found)


async def test_acknowledged_tap_missing_fails(world, dsn: str) -> None:
    result = _result(world, plan.VALID, http_status=200, decision="accepted", reason=0, journal_id=42)
    async with db.connection(dsn) as conn:
        found = await checks.journal_checks(conn, [result], [])
    missing = _check(found, "every acknowledged tap is in the journal")
    assert not missing.ok
    assert "1 missing of 1" in missing.detail
