"""The fast path's reason codes and the gateway's table are one numbering."""

from __future__ import annotations

import gateway.reasons
from fastpath.reasons import Medium, Reason


def test_fastpath_codes_match_gateway() -> None:
    for reason in Reason:
        assert gateway.reasons.Reason[reason.name].value == reason.value, reason


def test_gateway_fastpath_range_known_here() -> None:
    in_range = {r.name: r.value for r in gateway.reasons.Reason if r.value < 40}
    assert in_range == {r.name: r.value for r in Reason}


def test_fastpath_codes_have_display_texts() -> None:
    for reason in Reason:
        zh, en = gateway.reasons.display(gateway.reasons.Reason(reason.value))
        assert zh
        assert en


def test_medium_numbers_match_journal() -> None:
    # taps.medium: 1 card, 2 QR code.
    assert Medium.CARD == 1
    assert Medium.QR == 2
