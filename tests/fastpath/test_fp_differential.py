"""Differential test: the compiled verifier and the pure-Python twin give identical results.

Hypothesis builds valid QR codes and card responses under several keys and
key states, then mutates them (byte changes, cuts, extensions, splices) and
picks clocks around the validity edges. Both implementations see the same
sequence of calls, so their caches and counters must also stay equal.
"""

from __future__ import annotations

import datetime as dt

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastpath._verify as compiled
import fastpath._verify_py as twin
from fastpath import wire
from fastpath.entitlements import Entitlements
from fastpath.issuer import Card, IssuerKey, Phone
from fastpath.reasons import Medium
from tests.fastpath.conftest import DAY_MS, NOW_MS

KEYS = [IssuerKey.from_seed(key_id, bytes([key_id]) * 32) for key_id in (1, 2, 3, 4)]
# Key 1 active, 2 retired at NOW_MS, 3 revoked, 4 never added to the ring.
RING_SETUP = [(1, "active", None), (2, "retired", NOW_MS), (3, "revoked", None)]
DEVICES = [b"bus-101-v1", b"gate-7", b"d" * 64]


def make_ring(module):
    ring = module.KeyRing()
    for key_id, status, retired in RING_SETUP:
        ring.add(key_id, KEYS[key_id - 1].public_key, status, retired_at_ms=retired)
    return ring


def outcome(result) -> tuple:
    return (int(result.reason), result.medium, result.key_id, result.credential_id, result.holder_token,
            result.account_token, result.entitlements, result.replay_key, result.presented_at_ms)


def optional_dates():
    return st.one_of(st.none(), st.dates(min_value=dt.date(1900, 1, 2), max_value=dt.date(2079, 6, 6)))


@st.composite
def holders(draw):
    key = draw(st.sampled_from([KEYS[0], KEYS[0], KEYS[0], KEYS[1], KEYS[2], KEYS[3]]))
    valid_from = NOW_MS + draw(st.sampled_from([-30 * DAY_MS, -1, 0, 1, DAY_MS]))
    valid_until = valid_from + draw(st.sampled_from([1, 1000, DAY_MS, 60 * DAY_MS]))
    issued_at = NOW_MS + draw(st.sampled_from([-DAY_MS, -1, 0, 1]))
    entitlements = Entitlements(birth_date=draw(optional_dates()), disability_until=draw(optional_dates()),
                                priority_until=draw(optional_dates()), student_until=draw(optional_dates()),
                                priority_group=draw(st.integers(0, 255)))
    cls = draw(st.sampled_from([Phone, Card]))
    return cls.new(key, entitlements=entitlements, valid_from_ms=valid_from, valid_until_ms=valid_until,
                   issued_at_ms=issued_at, holder_seed=draw(st.binary(min_size=32, max_size=32)))


@st.composite
def presentations(draw):
    """Return (medium, presented bytes, device id given to verify, now_ms, tap_time_ms)."""
    holder = draw(holders())
    presented_at = NOW_MS + draw(st.sampled_from([0, -90_000, -90_001, 30_000, 30_001, -3 * DAY_MS]))
    device = draw(st.sampled_from(DEVICES))
    if isinstance(holder, Phone):
        medium = Medium.QR
        envelope = holder.qr_envelope(presented_at)
    else:
        medium = Medium.CARD
        envelope = holder.answer(device, draw(st.binary(min_size=16, max_size=16)), presented_at)

    data = bytearray(envelope)
    # About half the cases stay intact, so the accepting paths and the time rules get their share.
    mutation = draw(st.sampled_from(["none"] * 6 + ["flip", "set", "cut", "extend", "splice", "header"]))
    if mutation == "flip" and data:
        position = draw(st.integers(0, len(data) - 1))
        data[position] ^= draw(st.integers(1, 255))
    elif mutation == "set":
        position = draw(st.integers(0, len(data) - 1))
        data[position] = draw(st.integers(0, 255))
    elif mutation == "cut":
        del data[draw(st.integers(0, len(data))):]
    elif mutation == "extend":
        data += draw(st.binary(min_size=1, max_size=80))
    elif mutation == "splice":
        start = draw(st.integers(0, len(data)))
        data[start:start + draw(st.integers(0, 40))] = draw(st.binary(max_size=40))
    elif mutation == "header":
        data[draw(st.integers(0, 2))] = draw(st.integers(0, 3))

    as_medium = medium if draw(st.integers(0, 19)) else Medium(3 - medium)
    if as_medium == Medium.QR:
        presented = wire.QR_PREFIX + wire.base45_encode(bytes(data))
        if draw(st.integers(0, 9)) == 0 and presented:
            # Change one character of the text itself, possibly to one outside the alphabet.
            position = draw(st.integers(0, len(presented) - 1))
            presented = presented[:position] + bytes([draw(st.integers(0, 127))]) + presented[position + 1:]
    else:
        presented = bytes(data)
    verify_device = device if draw(st.integers(0, 4)) else draw(st.sampled_from(DEVICES + [b"", b"x"]))
    now = NOW_MS + draw(st.sampled_from([0, 1, -1, 90_000, 7 * DAY_MS, 7 * DAY_MS + 1]))
    tap_time = draw(st.sampled_from([0, 0, presented_at, presented_at + 1, NOW_MS + 60_000]))
    return as_medium, presented, verify_device, now, max(tap_time, 0)


VERIFIERS = {}


def verifiers():
    # One pair per test run, so the caches are shared across examples and exercised as in service.
    if not VERIFIERS:
        VERIFIERS["compiled"] = compiled.Verifier(make_ring(compiled), cache_size=8)
        VERIFIERS["python"] = twin.Verifier(make_ring(twin), cache_size=8)
    return VERIFIERS["compiled"], VERIFIERS["python"]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(presentations())
def test_mutated_presentations_same_result(case) -> None:
    medium, presented, device, now, tap_time = case
    fast, slow = verifiers()
    assert outcome(fast.verify(medium, presented, device, now, tap_time)) == \
        outcome(slow.verify(medium, presented, device, now, tap_time))
    assert fast.stats() == slow.stats()


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([Medium.QR, Medium.CARD]), st.binary(max_size=400), st.binary(max_size=70),
       st.integers(0, (1 << 62) - 1), st.integers(0, (1 << 62) - 1))
def test_random_bytes_same_result(medium, presented, device, now, tap_time) -> None:
    fast, slow = verifiers()
    if medium == Medium.QR and presented[:1] != b"T":
        presented = b"TG1:" + presented
    assert outcome(fast.verify(medium, presented, device, now, tap_time)) == \
        outcome(slow.verify(medium, presented, device, now, tap_time))


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=wire.BASE45_ALPHABET.decode() + "abc\x00", max_size=520))
def test_random_qr_text_same_result(payload: str) -> None:
    fast, slow = verifiers()
    presented = b"TG1:" + payload.encode()
    assert outcome(fast.verify(Medium.QR, presented, b"", NOW_MS)) == \
        outcome(slow.verify(Medium.QR, presented, b"", NOW_MS))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64), st.binary(max_size=64), st.binary(max_size=100))
def test_signature_check_same_result(public_key: bytes, signature: bytes, message: bytes) -> None:
    assert compiled.verify_signature(public_key, message, signature) == \
        twin.verify_signature(public_key, message, signature)


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=500))
def test_base45_round_trip(data: bytes) -> None:
    assert wire.base45_decode(wire.base45_encode(data)) == data
