"""Fuzzing the QR and card decoders of both fast-path implementations.

Every example starts from a genuine presentation that the verifier accepts,
mutates it (bit flips, byte overwrites, cuts, extensions, splices, and for QR
codes changes to the text itself), and checks three things:

- ``verify`` returns a result and never raises, whatever the bytes;
- a mutation is accepted only if the signed bytes are unchanged (for a QR
  code: the text still decodes to the very same envelope);
- the compiled module and the pure-Python twin give the same reason.

The verifiers keep their credential caches across examples and have already
accepted the genuine presentation, so a cache that answered for a changed
credential would show up here as an accepted mutation.
"""

from __future__ import annotations

import types

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastpath._verify as compiled
import fastpath._verify_py as twin
from fastpath import wire
from fastpath.entitlements import Entitlements
from fastpath.issuer import Card, IssuerKey, Phone
from fastpath.reasons import Medium
from tests.faults.conftest import examples

# 2026-06-01 00:00 Asia/Shanghai in Unix milliseconds; a fixed clock keeps examples reproducible.
NOW_MS = 1_780_243_200_000
DAY_MS = 86_400_000
DEVICE = b"bus-1-001"
ISSUER = IssuerKey.from_seed(9, bytes(range(100, 132)))
PHONE = Phone.new(ISSUER, entitlements=Entitlements(birth_date=None), valid_from_ms=NOW_MS - DAY_MS,
                  valid_until_ms=NOW_MS + DAY_MS, holder_seed=b"\x33" * 32)
CARD = Card.new(ISSUER, valid_from_ms=NOW_MS - DAY_MS, valid_until_ms=NOW_MS + DAY_MS, holder_seed=b"\x44" * 32)
QR_TEXT = PHONE.qr_text(NOW_MS)
CARD_RESPONSE = CARD.answer(DEVICE, b"\x55" * 16, NOW_MS)
QR_ENVELOPE = wire.base45_decode(QR_TEXT.encode()[wire.QR_PREFIX_LEN:])

MODULES = {"compiled": compiled, "python": twin}
_verifiers: dict[str, object] = {}


def verifier(name: str):
    """One verifier per implementation for the whole run, so its cache fills as in service."""
    if name not in _verifiers:
        module: types.ModuleType = MODULES[name]
        ring = module.KeyRing()
        ring.add(ISSUER.key_id, ISSUER.public_key)
        _verifiers[name] = module.Verifier(ring, cache_size=64)
    return _verifiers[name]


def verify_both(medium: int, presented: bytes) -> int:
    reasons = {}
    for name in MODULES:
        result = verifier(name).verify(medium, presented, DEVICE, NOW_MS, 0)
        assert isinstance(result.reason, int) or int(result.reason) >= 0
        reasons[name] = int(result.reason)
    assert reasons["compiled"] == reasons["python"], (presented, reasons)
    return reasons["compiled"]


@pytest.mark.parametrize("medium,presented", [(Medium.QR, QR_TEXT.encode()), (Medium.CARD, CARD_RESPONSE)])
def test_genuine_presentations_accepted(medium: int, presented: bytes) -> None:
    # The fuzz tests below mean something only if the unmutated inputs pass.
    assert verify_both(medium, presented) == 0


def mutate(data: bytes, draw) -> bytes:
    out = bytearray(data)
    kind = draw(st.sampled_from(["flip", "set", "cut", "extend", "splice", "swap"]))
    if kind == "flip":
        position = draw(st.integers(0, len(out) - 1))
        out[position] ^= 1 << draw(st.integers(0, 7))
    elif kind == "set":
        out[draw(st.integers(0, len(out) - 1))] = draw(st.integers(0, 255))
    elif kind == "cut":
        start = draw(st.integers(0, len(out) - 1))
        del out[start:start + draw(st.integers(1, 64))]
    elif kind == "extend":
        out[draw(st.integers(0, len(out))):0] = draw(st.binary(min_size=1, max_size=64))
    elif kind == "splice":
        start = draw(st.integers(0, len(out)))
        out[start:start + draw(st.integers(0, 40))] = draw(st.binary(max_size=40))
    else:
        i, j = draw(st.integers(0, len(out) - 1)), draw(st.integers(0, len(out) - 1))
        out[i], out[j] = out[j], out[i]
    return bytes(out)


@st.composite
def mutated_qr_texts(draw) -> bytes:
    if draw(st.booleans()):
        # Change the envelope, then encode it properly: the mutation reaches the decoder's checks.
        return wire.QR_PREFIX + wire.base45_encode(mutate(QR_ENVELOPE, draw))
    # Change the text itself: the Base45 decoder and the prefix check see it first.
    return mutate(QR_TEXT.encode(), draw)


@st.composite
def mutated_card_responses(draw) -> bytes:
    return mutate(CARD_RESPONSE, draw)


def qr_signed_bytes(text: bytes) -> bytes | None:
    if not text.startswith(wire.QR_PREFIX):
        return None
    try:
        return wire.base45_decode(text[wire.QR_PREFIX_LEN:])
    except ValueError:
        return None


@settings(max_examples=examples(600), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_qr_texts())
def test_mutated_qr_code_never_accepted(text: bytes) -> None:
    verify_both(Medium.QR, QR_TEXT.encode())
    reason = verify_both(Medium.QR, text)
    if qr_signed_bytes(text) != QR_ENVELOPE:
        assert reason != 0, text


@settings(max_examples=examples(600), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_card_responses())
def test_mutated_card_response_never_accepted(response: bytes) -> None:
    verify_both(Medium.CARD, CARD_RESPONSE)
    reason = verify_both(Medium.CARD, response)
    if response != CARD_RESPONSE:
        assert reason != 0, response.hex()


@settings(max_examples=examples(300), deadline=None)
@given(st.binary(max_size=600), st.sampled_from([Medium.QR, Medium.CARD]))
def test_random_bytes_never_accepted(data: bytes, medium: int) -> None:
    if medium == Medium.QR and draw_prefix(data):
        data = wire.QR_PREFIX + data
    assert verify_both(medium, data) != 0


def draw_prefix(data: bytes) -> bool:
    # About half the QR inputs get the right prefix, so the Base45 decoder is reached.
    return bool(data) and data[0] % 2 == 0


@settings(max_examples=examples(200), deadline=None)
@given(st.text(alphabet=wire.BASE45_ALPHABET.decode(), min_size=300, max_size=520))
def test_random_base45_payload_never_accepted(payload: str) -> None:
    assert verify_both(Medium.QR, wire.QR_PREFIX + payload.encode()) != 0


@pytest.mark.parametrize("name", MODULES)
@pytest.mark.parametrize("medium", [0, 3, 255])
def test_unknown_medium_is_misuse(name: str, medium: int) -> None:
    # The gateway maps the medium from a closed set, so another value is a programming error.
    with pytest.raises(ValueError, match="medium"):
        verifier(name).verify(medium, QR_TEXT.encode(), DEVICE, NOW_MS, 0)


def test_qr_code_presented_as_card_rejected() -> None:
    assert verify_both(Medium.CARD, QR_ENVELOPE) != 0
    assert verify_both(Medium.QR, wire.QR_PREFIX + wire.base45_encode(CARD_RESPONSE)) != 0
