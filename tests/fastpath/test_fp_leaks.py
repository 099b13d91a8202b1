"""The compiled verifier keeps no memory per call: accepted and rejected paths alike."""

from __future__ import annotations

import gc
import sys

import pytest

import fastpath._verify as compiled
from fastpath import wire
from fastpath.issuer import Card, IssuerKey, Phone
from fastpath.reasons import Medium, Reason
from tests.fastpath.conftest import DAY_MS, DEVICE, NOW_MS


def allocated_after(run, calls: int) -> int:
    for _ in range(calls):
        run()
    gc.collect()
    return sys.getallocatedblocks()


@pytest.fixture(scope="module")
def cases() -> dict[str, tuple]:
    key = IssuerKey.from_seed(1, b"\x01" * 32)
    phone = Phone.new(key, valid_from_ms=NOW_MS - DAY_MS, holder_seed=b"\x02" * 32)
    card = Card.new(key, valid_from_ms=NOW_MS - DAY_MS, holder_seed=b"\x03" * 32)
    text = phone.qr_text(NOW_MS).encode()
    bad_holder = bytearray(phone.qr_envelope(NOW_MS))
    bad_holder[-1] ^= 1
    return {
        "accepted_qr": (Medium.QR, text, b"", NOW_MS, Reason.ACCEPTED),
        "accepted_card": (Medium.CARD, card.answer(DEVICE, bytes(16), NOW_MS), DEVICE, NOW_MS, Reason.ACCEPTED),
        "malformed": (Medium.QR, text[:-3], b"", NOW_MS, Reason.MALFORMED),
        "holder_invalid": (Medium.QR, wire.QR_PREFIX + wire.base45_encode(bytes(bad_holder)), b"", NOW_MS,
                           Reason.HOLDER_SIGNATURE_INVALID),
        "expired_code": (Medium.QR, text, b"", NOW_MS + DAY_MS // 2, Reason.CODE_EXPIRED),
        "mismatch": (Medium.CARD, card.answer(b"other", bytes(16), NOW_MS), DEVICE, NOW_MS,
                     Reason.CHALLENGE_MISMATCH),
    }


@pytest.mark.parametrize("case", ["accepted_qr", "accepted_card", "malformed", "holder_invalid", "expired_code",
                                  "mismatch"])
def test_no_growth_per_call(cases, case: str) -> None:
    key = IssuerKey.from_seed(1, b"\x01" * 32)
    ring = compiled.KeyRing()
    ring.add(1, key.public_key)
    verifier = compiled.Verifier(ring)
    medium, presented, device, now, expected = cases[case]
    assert verifier.verify(medium, presented, device, now).reason == expected

    def run() -> None:
        verifier.verify(medium, presented, device, now)

    baseline = allocated_after(run, 200)
    after = allocated_after(run, 2000)
    # A leak of one object per call would show as about 2000 blocks.
    assert after - baseline < 50
