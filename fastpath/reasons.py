"""Result codes of the fast path and the media a presentation comes on.

The numbers are stable and shared with ``gateway.reasons`` (0-39), where the
validator's display texts live. The fast path itself imports nothing from the
gateway, so the numbers are repeated here and a test checks that both enums
agree.
"""

from __future__ import annotations

import enum


class Reason(enum.IntEnum):
    """Verdict of one verification: 0 is accepted, every other value names the rule that failed."""

    ACCEPTED = 0
    # The bytes do not follow the layout (length, alphabet, field ranges).
    MALFORMED = 1
    # The QR prefix, envelope or credential carries a format version this verifier does not know.
    UNSUPPORTED_VERSION = 2
    # No issuer key with the credential's key id is in the key ring.
    UNKNOWN_KEY = 3
    # The issuer key is revoked: nothing it signed verifies any more.
    REVOKED_KEY = 4
    ISSUER_SIGNATURE_INVALID = 5
    HOLDER_SIGNATURE_INVALID = 6
    CREDENTIAL_EXPIRED = 7
    CREDENTIAL_NOT_YET_VALID = 8
    # The presentation time is older than the code lifetime plus the clock skew.
    CODE_EXPIRED = 9
    # The presentation (or offline tap) time is ahead of the reference clock by more than the skew.
    CODE_FROM_FUTURE = 10
    # The issuer key is retired and the credential was issued at or after its retirement.
    KEY_RETIRED = 11
    # The card signed a challenge for another device than the one that sent the tap.
    CHALLENGE_MISMATCH = 12
    # An offline tap was uploaded more than offline_upload_max_s after it was recorded.
    OFFLINE_UPLOAD_TOO_LATE = 13
    # A card response was sent as a QR code, or the other way round.
    WRONG_MEDIUM = 14


class Medium(enum.IntEnum):
    """How the rider presented the credential; the numbers are those of ``taps.medium``."""

    CARD = 1
    QR = 2
