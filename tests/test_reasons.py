"""Reason codes are a stable table."""

from gateway.reasons import DISPLAY, Reason


def test_every_reason_has_display_text() -> None:
    for reason in Reason:
        zh, en = DISPLAY[reason]
        assert zh and en, reason


def test_numbers_are_unique() -> None:
    values = [reason.value for reason in Reason]
    assert len(values) == len(set(values))
