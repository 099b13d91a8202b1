"""Every traffic kind, verified by the real fast path: each must get the outcome the check expects."""

from __future__ import annotations

import base64
import random
import time

import msgspec
import pytest

import fastpath
from fastpath.issuer import IssuerKey
from gateway.reasons import Reason
from loadtests import scenario as sc
from loadtests.answers import Answer
from loadtests.fixture import Fixture
from loadtests.traffic import (EXPECTED_REASONS, Place, TrafficMaker, flip_signature_byte, outcome_is_expected,
                               partition)

MEDIUM = {"card": fastpath.Medium.CARD, "qr": fastpath.Medium.QR}


def verifier_for(issuer: IssuerKey) -> fastpath.Verifier:
    ring = fastpath.KeyRing()
    ring.add(issuer.key_id, issuer.public_key)
    return fastpath.Verifier(ring, clock_skew_s=30, code_lifetime_s=60)


def verify(verifier: fastpath.Verifier, body: dict, device_id: str, now_ms: int) -> int:
    presented = body["presented"].encode("ascii")
    if body["medium"] == "card":
        presented = base64.b64decode(presented)
    return verifier.verify(MEDIUM[body["medium"]], presented, device_id.encode(), now_ms).reason


@pytest.mark.parametrize("kind", [sc.VALID_CARD, sc.VALID_QR, sc.EXPIRED_QR, sc.FORGED_HOLDER, sc.FORGED_ISSUER])
def test_kind_gets_expected_fastpath_reason(kind: str, small_fixture: Fixture, issuer: IssuerKey,
                                            run_spec: sc.RunSpec, rng: random.Random) -> None:
    maker = TrafficMaker(small_fixture, run_spec, 0, rng)
    verifier = verifier_for(issuer)
    device = small_fixture.devices[0]
    now_ms = time.time_ns() // 1_000_000
    for tap_id in range(20):
        tap = maker.make(kind, device, Place("board", route_id=device.route_id, stop_id="U1-01"), tap_id, now_ms, {})
        assert tap.kind == kind
        assert verify(verifier, tap.body, device.device_id, now_ms) in EXPECTED_REASONS[kind]


def test_lost_and_arrears_holders_have_valid_codes(small_fixture: Fixture, issuer: IssuerKey,
                                                   run_spec: sc.RunSpec, rng: random.Random) -> None:
    # Only the deny list may reject them; their signatures are sound.
    maker = TrafficMaker(small_fixture, run_spec, 0, rng)
    verifier = verifier_for(issuer)
    device = small_fixture.devices[0]
    now_ms = time.time_ns() // 1_000_000
    for kind in (sc.LOST_CARD, sc.ARREARS):
        tap = maker.make(kind, device, Place("board", route_id=device.route_id), 1, now_ms, {})
        assert tap.holder is not None
        assert tap.holder.status == ("lost" if kind == sc.LOST_CARD else "arrears")
        assert verify(verifier, tap.body, device.device_id, now_ms) == Reason.ACCEPTED


def test_replay_waits_for_accepted_code(small_fixture: Fixture, run_spec: sc.RunSpec, rng: random.Random) -> None:
    maker = TrafficMaker(small_fixture, run_spec, 0, rng)
    device = small_fixture.devices[0]
    place = Place("board", route_id=device.route_id)
    now_ms = time.time_ns() // 1_000_000

    first = maker.make(sc.REPLAYED_QR, device, place, 1, now_ms, {})
    assert first.kind == sc.VALID_QR
    maker.remember_accepted(first, now_ms)
    replay = maker.make(sc.REPLAYED_QR, device, place, 2, now_ms + 1000, {})
    assert replay.kind == sc.REPLAYED_QR
    assert replay.body["presented"] == first.body["presented"]


def test_replay_skips_codes_near_expiry(small_fixture: Fixture, run_spec: sc.RunSpec, rng: random.Random) -> None:
    maker = TrafficMaker(small_fixture, run_spec, 0, rng)
    device = small_fixture.devices[0]
    now_ms = time.time_ns() // 1_000_000
    old = maker.make(sc.VALID_QR, device, Place("board"), 1, now_ms, {})
    maker.remember_accepted(old, now_ms)
    later = maker.make(sc.REPLAYED_QR, device, Place("board"), 2, now_ms + 59_000, {})
    assert later.kind == sc.VALID_QR


def test_unknown_device_signs_as_unregistered(small_fixture: Fixture, run_spec: sc.RunSpec,
                                              rng: random.Random) -> None:
    maker = TrafficMaker(small_fixture, run_spec, 0, rng)
    tap = maker.make(sc.UNKNOWN_DEVICE, small_fixture.devices[0], Place("board"), 1, 1, {})
    registered = set(small_fixture.device_ids())
    assert tap.creds.device_id not in registered
    assert tap.creds.device_id in {d.device_id for d in small_fixture.unknown_devices}


def test_holder_not_reused_at_same_device(small_fixture: Fixture, run_spec: sc.RunSpec, rng: random.Random) -> None:
    maker = TrafficMaker(small_fixture, run_spec, 0, rng)
    recent: dict[int, float] = {}
    picked = [maker.pick_holder(maker.ok, recent, 100.0).index for _ in range(10)]
    assert len(set(picked)) == len(picked)


def test_flip_signature_changes_one_byte() -> None:
    data = bytes(range(100))
    forged = flip_signature_byte("card", data)
    assert len(forged) == len(data)
    assert [i for i in range(len(data)) if forged[i] != data[i]] == [99]


def test_partition_splits_without_overlap() -> None:
    items = list(range(10))
    parts = [partition(items, index, 3) for index in range(3)]
    assert sorted(sum(parts, [])) == items


def test_process_without_lost_holders_rejected(small_fixture: Fixture, run_spec: sc.RunSpec,
                                               rng: random.Random) -> None:
    spec = msgspec.structs.replace(run_spec, processes=40)
    with pytest.raises(ValueError, match="provision more holders"):
        TrafficMaker(small_fixture, spec, 39, rng)


@pytest.mark.parametrize("kind, status, decision, reason, expected", [
    (sc.VALID_QR, 200, "accepted", 0, True),
    (sc.VALID_QR, 200, "rejected", 61, True),
    (sc.VALID_QR, 200, "rejected", 43, False),
    (sc.FORGED_HOLDER, 200, "accepted", 0, False),
    (sc.FORGED_HOLDER, 200, "rejected", 6, True),
    (sc.FORGED_ISSUER, 200, "rejected", 6, False),
    (sc.REPLAYED_QR, 200, "rejected", 43, True),
    (sc.LOST_CARD, 200, "rejected", 42, False),
    (sc.UNKNOWN_DEVICE, 401, None, None, True),
    (sc.UNKNOWN_DEVICE, 200, "accepted", 0, False),
    (sc.EXPIRED_QR, 0, None, None, True),
    (sc.UNKNOWN_DEVICE, 0, None, None, True),
    (sc.UNKNOWN_DEVICE, 403, None, None, False),
])
def test_outcome_expected_table(kind: str, status: int, decision: str | None, reason: int | None,
                                expected: bool) -> None:
    answer = Answer(device_id="d", tap_id=1, kind=kind, scenario="bus", medium="qr", sent_ms=0, status=status,
                    decision=decision, reason=reason, journal_id=5 if status == 200 else None)
    assert outcome_is_expected(answer, [61]) is expected


def test_command_side_never_imports_locust() -> None:
    # Locust monkey-patches the standard library with gevent; the asyncio side must never load it.
    import subprocess
    import sys

    code = ("import sys, tapgate.cli, loadtests.runner, loadtests.check, loadtests.report\n"
            "tapgate.cli.build_parser()\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('locust', 'gevent')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_tap_off_blocks_reboarding(small_fixture: Fixture, run_spec: sc.RunSpec, rng: random.Random) -> None:
    maker = TrafficMaker(small_fixture, run_spec, 0, rng)
    device = small_fixture.devices[0]
    holder = maker.ok[0]
    recent: dict[int, float] = {}
    maker.make_valid(holder, "card", device, Place("off", route_id=device.route_id), 1, 200_000, recent)
    assert recent == {holder.index: 200.0}


def test_site_entries_avoid_repeat_holders(small_fixture: Fixture, run_spec: sc.RunSpec,
                                           rng: random.Random) -> None:
    maker = TrafficMaker(small_fixture, run_spec, 0, rng)
    gate = next(d for d in small_fixture.devices if d.scenario == "scenic")
    place = Place("entry", site_id=gate.site_id)
    entered = [maker.make(sc.VALID_CARD, gate, place, n, 1_000_000 + n, {}).holder.index for n in range(10)]
    assert len(set(entered)) == 10
    assert maker.entered[gate.site_id] == set(entered)


def test_exhausted_site_still_respects_recency(small_fixture: Fixture, run_spec: sc.RunSpec,
                                               rng: random.Random) -> None:
    maker = TrafficMaker(small_fixture, run_spec, 0, rng)
    pool = maker.ok[:10]
    maker.entered["lushan"] = {h.index for h in pool}
    recent = {h.index: 100.0 for h in pool[:8]}
    picked = maker.pick_holder(pool, recent, 120.0, "lushan")
    assert picked in pool[8:]
