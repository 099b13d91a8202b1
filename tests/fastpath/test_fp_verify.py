"""Verdicts of the verifier, run on the compiled module and on the pure-Python twin."""

from __future__ import annotations

import datetime as dt

import pytest

from fastpath import wire
from fastpath.entitlements import Entitlements
from fastpath.issuer import Card, IssuerKey, Phone, issue_credential
from fastpath.reasons import Medium, Reason
from tests.fastpath.conftest import DAY_MS, DEVICE, NOW_MS

NONCE = bytes(range(100, 116))


def qr(phone: Phone, at_ms: int = NOW_MS) -> bytes:
    return phone.qr_text(at_ms).encode("ascii")


def reencode(envelope: bytes | bytearray) -> bytes:
    return wire.QR_PREFIX + wire.base45_encode(bytes(envelope))


class TestAccepted:
    def test_qr_accepted_with_fields(self, verifier, phone: Phone) -> None:
        result = verifier.verify(Medium.QR, qr(phone), b"", NOW_MS + 1500)
        fields = phone.fields
        assert result.reason == Reason.ACCEPTED
        assert result.accepted is True
        assert result.medium == Medium.QR
        assert result.key_id == 7
        assert result.credential_id == fields.credential_id
        assert result.holder_token == fields.holder_token
        assert result.account_token == fields.account_token
        assert result.entitlements == fields.entitlements
        assert result.presented_at_ms == NOW_MS

    def test_card_accepted(self, verifier, card: Card) -> None:
        response = card.answer(DEVICE, NONCE, NOW_MS)
        result = verifier.verify(Medium.CARD, response, DEVICE, NOW_MS + 200)
        assert result.reason == Reason.ACCEPTED
        assert result.credential_id == card.fields.credential_id
        assert result.presented_at_ms == NOW_MS

    def test_entitlements_decoded(self, impl, issuer_key: IssuerKey) -> None:
        ring = impl.KeyRing()
        ring.add(issuer_key.key_id, issuer_key.public_key)
        entitlements = Entitlements(birth_date=dt.date(1948, 2, 29), disability_until=dt.date(2079, 6, 6),
                                    priority_until=dt.date(2030, 12, 31), student_until=dt.date(1900, 1, 2),
                                    priority_group=3)
        phone = Phone.new(issuer_key, entitlements=entitlements, valid_from_ms=NOW_MS - DAY_MS,
                          valid_until_ms=NOW_MS + DAY_MS)
        result = impl.Verifier(ring).verify(Medium.QR, qr(phone), b"", NOW_MS)
        assert result.reason == Reason.ACCEPTED
        assert result.entitlements == entitlements
        assert result.entitlements.age_on(dt.date(2026, 6, 1)) == 78

    def test_reason_names(self, verifier, phone: Phone) -> None:
        result = verifier.verify(Medium.QR, b"nonsense", b"", NOW_MS)
        assert result.reason == Reason.MALFORMED
        assert result.reason_name == "MALFORMED"
        assert result.accepted is False
        assert result.credential_id is None
        assert result.replay_key is None


class TestDecoding:
    @pytest.mark.parametrize("text", [b"", b"TG", b"TG1", b"XX1:AAA", b"TG1-AAA", b"tg1:AAA"])
    def test_bad_prefix_malformed(self, verifier, text: bytes) -> None:
        assert verifier.verify(Medium.QR, text, b"", NOW_MS).reason == Reason.MALFORMED

    def test_other_prefix_version_unsupported(self, verifier, phone: Phone) -> None:
        text = b"TG2:" + qr(phone)[4:]
        assert verifier.verify(Medium.QR, text, b"", NOW_MS).reason == Reason.UNSUPPORTED_VERSION

    @pytest.mark.parametrize("cut", [1, 2, 3, 100])
    def test_truncated_qr_malformed(self, verifier, phone: Phone, cut: int) -> None:
        assert verifier.verify(Medium.QR, qr(phone)[:-cut], b"", NOW_MS).reason == Reason.MALFORMED

    def test_lowercase_base45_malformed(self, verifier, phone: Phone) -> None:
        text = bytearray(qr(phone))
        position = next(i for i in range(4, len(text)) if chr(text[i]).isalpha())
        text[position] = ord(chr(text[position]).lower())
        assert verifier.verify(Medium.QR, bytes(text), b"", NOW_MS).reason == Reason.MALFORMED

    def test_overlong_payload_malformed(self, verifier, phone: Phone) -> None:
        text = qr(phone) + b"000" * 100
        assert verifier.verify(Medium.QR, text, b"", NOW_MS).reason == Reason.MALFORMED

    def test_non_canonical_base45_group_malformed(self, verifier, phone: Phone) -> None:
        # "::" + ":" is 44 + 44*45 + 44*2025 = 91124, above 65535.
        text = qr(phone)[:4] + b":::" + qr(phone)[7:]
        assert verifier.verify(Medium.QR, text, b"", NOW_MS).reason == Reason.MALFORMED

    def test_envelope_version_unsupported(self, verifier, phone: Phone) -> None:
        envelope = bytearray(phone.qr_envelope(NOW_MS))
        envelope[0] = 2
        assert verifier.verify(Medium.QR, reencode(envelope), b"", NOW_MS).reason == Reason.UNSUPPORTED_VERSION

    def test_credential_version_unsupported(self, verifier, phone: Phone) -> None:
        envelope = bytearray(phone.qr_envelope(NOW_MS))
        envelope[wire.OFF_CREDENTIAL] = 2
        assert verifier.verify(Medium.QR, reencode(envelope), b"", NOW_MS).reason == Reason.UNSUPPORTED_VERSION

    def test_unknown_medium_byte_malformed(self, verifier, phone: Phone) -> None:
        envelope = bytearray(phone.qr_envelope(NOW_MS))
        envelope[1] = 9
        assert verifier.verify(Medium.QR, reencode(envelope), b"", NOW_MS).reason == Reason.MALFORMED

    def test_card_response_as_qr_wrong_medium(self, verifier, card: Card) -> None:
        text = reencode(card.answer(DEVICE, NONCE, NOW_MS))
        assert verifier.verify(Medium.QR, text, b"", NOW_MS).reason == Reason.WRONG_MEDIUM

    def test_qr_text_as_card_wrong_medium(self, verifier, phone: Phone) -> None:
        assert verifier.verify(Medium.CARD, qr(phone), DEVICE, NOW_MS).reason == Reason.WRONG_MEDIUM

    def test_qr_envelope_as_card_wrong_medium(self, verifier, phone: Phone) -> None:
        envelope = phone.qr_envelope(NOW_MS)
        assert verifier.verify(Medium.CARD, envelope, DEVICE, NOW_MS).reason == Reason.WRONG_MEDIUM

    @pytest.mark.parametrize("size", [0, 1, 2, 3, 182, 183, 270, 271, 400])
    def test_card_length_malformed(self, verifier, card: Card, size: int) -> None:
        response = card.answer(DEVICE, NONCE, NOW_MS)
        data = (response + bytes(200))[:size]
        assert verifier.verify(Medium.CARD, data, DEVICE, NOW_MS).reason in (Reason.MALFORMED,)

    @pytest.mark.parametrize("id_len", [0, 65, 255])
    def test_card_device_id_length_malformed(self, verifier, card: Card, id_len: int) -> None:
        response = bytearray(card.answer(DEVICE, NONCE, NOW_MS))
        response[wire.OFF_DYNAMIC] = id_len
        assert verifier.verify(Medium.CARD, bytes(response), DEVICE, NOW_MS).reason == Reason.MALFORMED


class TestKeys:
    def test_unknown_key(self, impl, phone: Phone) -> None:
        verifier = impl.Verifier(impl.KeyRing())
        assert verifier.verify(Medium.QR, qr(phone), b"", NOW_MS).reason == Reason.UNKNOWN_KEY

    def test_revoked_key(self, impl, issuer_key: IssuerKey, phone: Phone) -> None:
        ring = impl.KeyRing()
        ring.add(issuer_key.key_id, issuer_key.public_key, "revoked")
        result = impl.Verifier(ring).verify(Medium.QR, qr(phone), b"", NOW_MS)
        assert result.reason == Reason.REVOKED_KEY
        assert result.credential_id is None

    def test_revocation_applies_to_cached_credential(self, impl, issuer_key: IssuerKey, phone: Phone) -> None:
        ring = impl.KeyRing()
        ring.add(issuer_key.key_id, issuer_key.public_key)
        verifier = impl.Verifier(ring)
        assert verifier.verify(Medium.QR, qr(phone), b"", NOW_MS).reason == Reason.ACCEPTED
        ring.add(issuer_key.key_id, issuer_key.public_key, "revoked")
        assert verifier.verify(Medium.QR, qr(phone), b"", NOW_MS).reason == Reason.REVOKED_KEY
        ring.remove(issuer_key.key_id)
        assert verifier.verify(Medium.QR, qr(phone), b"", NOW_MS).reason == Reason.UNKNOWN_KEY

    def test_retired_key_verifies_earlier_credentials(self, impl, issuer_key: IssuerKey) -> None:
        ring = impl.KeyRing()
        ring.add(issuer_key.key_id, issuer_key.public_key, "retired", retired_at_ms=NOW_MS - DAY_MS)
        verifier = impl.Verifier(ring)
        before = Phone.new(issuer_key, issued_at_ms=NOW_MS - DAY_MS - 1, valid_from_ms=NOW_MS - 2 * DAY_MS,
                           valid_until_ms=NOW_MS + DAY_MS)
        at = Phone.new(issuer_key, issued_at_ms=NOW_MS - DAY_MS, valid_from_ms=NOW_MS - 2 * DAY_MS,
                       valid_until_ms=NOW_MS + DAY_MS)
        assert verifier.verify(Medium.QR, qr(before), b"", NOW_MS).reason == Reason.ACCEPTED
        result = verifier.verify(Medium.QR, qr(at), b"", NOW_MS)
        assert result.reason == Reason.KEY_RETIRED
        assert result.credential_id == at.fields.credential_id

    def test_several_active_keys(self, impl) -> None:
        first, second = IssuerKey.from_seed(1, b"\x01" * 32), IssuerKey.from_seed(2, b"\x02" * 32)
        ring = impl.KeyRing()
        ring.add(1, first.public_key)
        ring.add(2, second.public_key)
        verifier = impl.Verifier(ring)
        for key in (first, second):
            phone = Phone.new(key, valid_from_ms=NOW_MS - DAY_MS)
            assert verifier.verify(Medium.QR, qr(phone), b"", NOW_MS).reason == Reason.ACCEPTED

    def test_key_id_of_other_key_issuer_invalid(self, impl, issuer_key: IssuerKey, phone: Phone) -> None:
        other = IssuerKey.from_seed(issuer_key.key_id, b"\x03" * 32)
        ring = impl.KeyRing()
        ring.add(issuer_key.key_id, other.public_key)
        result = impl.Verifier(ring).verify(Medium.QR, qr(phone), b"", NOW_MS)
        assert result.reason == Reason.ISSUER_SIGNATURE_INVALID


class TestSignatures:
    def test_issuer_signature_invalid(self, verifier, phone: Phone) -> None:
        envelope = bytearray(phone.qr_envelope(NOW_MS))
        envelope[wire.OFF_CREDENTIAL + wire.BODY_LEN + 5] ^= 0x40
        result = verifier.verify(Medium.QR, reencode(envelope), b"", NOW_MS)
        assert result.reason == Reason.ISSUER_SIGNATURE_INVALID
        assert result.credential_id is None

    def test_changed_body_issuer_invalid(self, verifier, phone: Phone) -> None:
        envelope = bytearray(phone.qr_envelope(NOW_MS))
        envelope[wire.OFF_CREDENTIAL + wire.OFF_PRIORITY_GROUP] = 1
        assert verifier.verify(Medium.QR, reencode(envelope), b"", NOW_MS).reason == Reason.ISSUER_SIGNATURE_INVALID

    def test_holder_signature_invalid(self, verifier, phone: Phone) -> None:
        envelope = bytearray(phone.qr_envelope(NOW_MS))
        envelope[-1] ^= 0x01
        result = verifier.verify(Medium.QR, reencode(envelope), b"", NOW_MS)
        assert result.reason == Reason.HOLDER_SIGNATURE_INVALID
        assert result.credential_id == phone.fields.credential_id
        assert result.replay_key is None

    def test_changed_time_holder_invalid(self, verifier, phone: Phone) -> None:
        envelope = bytearray(phone.qr_envelope(NOW_MS))
        envelope[wire.OFF_DYNAMIC + 7] ^= 0x01
        assert verifier.verify(Medium.QR, reencode(envelope), b"", NOW_MS).reason == Reason.HOLDER_SIGNATURE_INVALID

    def test_credential_of_other_holder_rejected(self, verifier, issuer_key: IssuerKey, phone: Phone) -> None:
        # A thief who copies someone's credential cannot sign with its holder key.
        thief = Phone.new(issuer_key, valid_from_ms=NOW_MS - DAY_MS)
        envelope = bytearray(thief.qr_envelope(NOW_MS))
        envelope[wire.OFF_CREDENTIAL:wire.OFF_DYNAMIC] = phone.credential
        assert verifier.verify(Medium.QR, reencode(envelope), b"", NOW_MS).reason == Reason.HOLDER_SIGNATURE_INVALID

    def test_small_order_holder_key_rejected(self, verifier, issuer_key: IssuerKey) -> None:
        # An identity point as holder key with R = identity and S = 0 satisfies the cofactored equation for
        # every message; libsodium's strict rules reject it.
        identity = bytes([1]) + bytes(31)
        credential = issue_credential(issuer_key, holder_token=bytes(16), account_token=bytes(16),
                                      entitlements=Entitlements(birth_date=dt.date(1990, 1, 1)),
                                      valid_from_ms=NOW_MS - DAY_MS, valid_until_ms=NOW_MS + DAY_MS,
                                      holder_public_key=identity)
        dynamic = NOW_MS.to_bytes(8, "big") + (1).to_bytes(4, "big")
        envelope = bytes((1, 2)) + credential + dynamic + identity + bytes(32)
        assert verifier.verify(Medium.QR, reencode(envelope), b"", NOW_MS).reason == Reason.HOLDER_SIGNATURE_INVALID


class TestCard:
    def test_challenge_for_other_device(self, verifier, card: Card) -> None:
        response = card.answer(b"gate-7", NONCE, NOW_MS)
        result = verifier.verify(Medium.CARD, response, DEVICE, NOW_MS)
        assert result.reason == Reason.CHALLENGE_MISMATCH
        assert result.credential_id == card.fields.credential_id

    def test_device_id_prefix_mismatch(self, verifier, card: Card) -> None:
        response = card.answer(DEVICE, NONCE, NOW_MS)
        assert verifier.verify(Medium.CARD, response, DEVICE + b"x", NOW_MS).reason == Reason.CHALLENGE_MISMATCH
        assert verifier.verify(Medium.CARD, response, DEVICE[:-1], NOW_MS).reason == Reason.CHALLENGE_MISMATCH

    def test_longest_device_id(self, verifier, card: Card) -> None:
        device = b"d" * wire.DEVICE_ID_MAX
        response = card.answer(device, NONCE, NOW_MS)
        assert len(response) == wire.CARD_ENVELOPE_MAX
        assert verifier.verify(Medium.CARD, response, device, NOW_MS).reason == Reason.ACCEPTED

    def test_old_challenge_expired(self, verifier, card: Card) -> None:
        response = card.answer(DEVICE, NONCE, NOW_MS - 91_000)
        assert verifier.verify(Medium.CARD, response, DEVICE, NOW_MS).reason == Reason.CODE_EXPIRED


class TestTimes:
    @pytest.mark.parametrize(("presented_at", "reason"), [
        (NOW_MS, Reason.ACCEPTED),
        (NOW_MS - 90_000, Reason.ACCEPTED),           # lifetime 60 s + skew 30 s
        (NOW_MS - 90_001, Reason.CODE_EXPIRED),
        (NOW_MS + 30_000, Reason.ACCEPTED),
        (NOW_MS + 30_001, Reason.CODE_FROM_FUTURE),
        (0, Reason.CODE_EXPIRED),
    ])
    def test_presentation_window(self, verifier, phone: Phone, presented_at: int, reason: Reason) -> None:
        assert verifier.verify(Medium.QR, qr(phone, presented_at), b"", NOW_MS).reason == reason

    def test_credential_validity_bounds(self, verifier, issuer_key: IssuerKey) -> None:
        phone = Phone.new(issuer_key, valid_from_ms=NOW_MS, valid_until_ms=NOW_MS + 1000)
        assert verifier.verify(Medium.QR, qr(phone), b"", NOW_MS - 1).reason == Reason.CREDENTIAL_NOT_YET_VALID
        assert verifier.verify(Medium.QR, qr(phone), b"", NOW_MS).reason == Reason.ACCEPTED
        assert verifier.verify(Medium.QR, qr(phone), b"", NOW_MS + 999).reason == Reason.ACCEPTED
        result = verifier.verify(Medium.QR, qr(phone), b"", NOW_MS + 1000)
        assert result.reason == Reason.CREDENTIAL_EXPIRED
        assert result.holder_token == phone.fields.holder_token

    def test_offline_upload_judged_at_tap_time(self, verifier, card: Card) -> None:
        tapped = NOW_MS - 3 * DAY_MS
        response = card.answer(DEVICE, NONCE, tapped)
        assert verifier.verify(Medium.CARD, response, DEVICE, NOW_MS).reason == Reason.CODE_EXPIRED
        result = verifier.verify(Medium.CARD, response, DEVICE, NOW_MS, tap_time_ms=tapped + 500)
        assert result.reason == Reason.ACCEPTED

    def test_offline_upload_too_late(self, verifier, card: Card) -> None:
        tapped = NOW_MS - 7 * DAY_MS
        response = card.answer(DEVICE, NONCE, tapped)
        assert verifier.verify(Medium.CARD, response, DEVICE, NOW_MS, tap_time_ms=tapped).reason == Reason.ACCEPTED
        late = verifier.verify(Medium.CARD, response, DEVICE, NOW_MS + 1, tap_time_ms=tapped)
        assert late.reason == Reason.OFFLINE_UPLOAD_TOO_LATE

    def test_offline_tap_from_future(self, verifier, card: Card) -> None:
        response = card.answer(DEVICE, NONCE, NOW_MS + 60_000)
        result = verifier.verify(Medium.CARD, response, DEVICE, NOW_MS, tap_time_ms=NOW_MS + 60_000)
        assert result.reason == Reason.CODE_FROM_FUTURE

    def test_offline_credential_valid_at_tap_time(self, verifier, issuer_key: IssuerKey) -> None:
        card = Card.new(issuer_key, valid_from_ms=NOW_MS - 10 * DAY_MS, valid_until_ms=NOW_MS - DAY_MS)
        tapped = NOW_MS - 2 * DAY_MS
        response = card.answer(DEVICE, NONCE, tapped)
        assert verifier.verify(Medium.CARD, response, DEVICE, NOW_MS, tap_time_ms=tapped).reason == Reason.ACCEPTED
        assert verifier.verify(Medium.CARD, response, DEVICE, NOW_MS).reason == Reason.CREDENTIAL_EXPIRED

    def test_far_future_time_no_overflow(self, verifier, phone: Phone) -> None:
        assert verifier.verify(Medium.QR, qr(phone, (1 << 62) - 1), b"", NOW_MS).reason == Reason.CODE_FROM_FUTURE


class TestCache:
    def test_returning_rider_one_signature_check(self, verifier, phone: Phone) -> None:
        verifier.verify(Medium.QR, qr(phone), b"", NOW_MS)
        before = verifier.stats()
        assert verifier.verify(Medium.QR, qr(phone), b"", NOW_MS).accepted
        after = verifier.stats()
        assert after["signature_checks"] - before["signature_checks"] == 1
        assert after["cache_hits"] - before["cache_hits"] == 1

    def test_new_credential_two_signature_checks(self, verifier, phone: Phone) -> None:
        verifier.verify(Medium.QR, qr(phone), b"", NOW_MS)
        assert verifier.stats()["signature_checks"] == 2
        assert verifier.stats()["cache_misses"] == 1

    def test_cache_is_bounded(self, impl, ring, issuer_key: IssuerKey) -> None:
        verifier = impl.Verifier(ring, cache_size=3)
        phones = [Phone.new(issuer_key, valid_from_ms=NOW_MS - DAY_MS) for _ in range(5)]
        for phone in phones:
            assert verifier.verify(Medium.QR, qr(phone), b"", NOW_MS).accepted
        assert verifier.stats()["cache_len"] == 3
        # The oldest entries went first.
        verifier.verify(Medium.QR, qr(phones[-1]), b"", NOW_MS)
        verifier.verify(Medium.QR, qr(phones[0]), b"", NOW_MS)
        assert verifier.stats()["cache_hits"] == 1

    def test_no_cache(self, impl, ring, phone: Phone) -> None:
        verifier = impl.Verifier(ring, cache_size=0)
        for _ in range(3):
            assert verifier.verify(Medium.QR, qr(phone), b"", NOW_MS).accepted
        assert verifier.stats() == {"cache_hits": 0, "cache_misses": 3, "signature_checks": 6, "cache_len": 0}

    def test_cached_body_with_bad_signature_rejected(self, verifier, phone: Phone) -> None:
        assert verifier.verify(Medium.QR, qr(phone), b"", NOW_MS).accepted
        envelope = bytearray(phone.qr_envelope(NOW_MS))
        envelope[wire.OFF_CREDENTIAL + wire.BODY_LEN] ^= 0x02
        assert verifier.verify(Medium.QR, reencode(envelope), b"", NOW_MS).reason == Reason.ISSUER_SIGNATURE_INVALID
        # The valid credential is still cached and still accepted.
        assert verifier.verify(Medium.QR, qr(phone), b"", NOW_MS).accepted

    def test_clear_cache(self, verifier, phone: Phone) -> None:
        verifier.verify(Medium.QR, qr(phone), b"", NOW_MS)
        verifier.clear_cache()
        assert verifier.stats()["cache_len"] == 0


class TestReplayKey:
    def test_replay_key_is_digest_of_signed_message(self, verifier, phone: Phone) -> None:
        envelope = phone.qr_envelope(NOW_MS)
        result = verifier.verify(Medium.QR, reencode(envelope), b"", NOW_MS)
        body_digest = wire.digest(phone.credential[:wire.BODY_LEN])
        expected = wire.digest(wire.qr_message(body_digest, NOW_MS, phone.counter))
        assert result.replay_key == expected

    def test_same_code_same_replay_key(self, verifier, phone: Phone) -> None:
        text = qr(phone)
        first = verifier.verify(Medium.QR, text, b"", NOW_MS)
        second = verifier.verify(Medium.QR, text, b"", NOW_MS + 1000)
        assert first.replay_key == second.replay_key

    def test_new_code_new_replay_key(self, verifier, phone: Phone) -> None:
        first = verifier.verify(Medium.QR, qr(phone), b"", NOW_MS)
        second = verifier.verify(Medium.QR, qr(phone), b"", NOW_MS)
        assert first.replay_key != second.replay_key

    def test_card_replay_key_covers_nonce(self, verifier, card: Card) -> None:
        first = verifier.verify(Medium.CARD, card.answer(DEVICE, NONCE, NOW_MS), DEVICE, NOW_MS)
        second = verifier.verify(Medium.CARD, card.answer(DEVICE, bytes(16), NOW_MS), DEVICE, NOW_MS)
        assert first.replay_key != second.replay_key
        body_digest = wire.digest(card.credential[:wire.BODY_LEN])
        dynamic = wire.encode_card_dynamic(DEVICE, NONCE, NOW_MS)
        assert first.replay_key == wire.digest(wire.card_message(body_digest, dynamic))


class TestTamper:
    def test_every_qr_character_change_rejected(self, verifier, phone: Phone) -> None:
        text = qr(phone)
        assert verifier.verify(Medium.QR, text, b"", NOW_MS).accepted
        for position in range(len(text)):
            for replacement in {b"0"[0], b"Z"[0], b":"[0], text[position] ^ 0x01}:
                if replacement == text[position]:
                    continue
                changed = text[:position] + bytes((replacement,)) + text[position + 1:]
                result = verifier.verify(Medium.QR, changed, b"", NOW_MS)
                assert not result.accepted, (position, replacement)

    def test_every_qr_envelope_byte_flip_rejected(self, verifier, phone: Phone) -> None:
        envelope = phone.qr_envelope(NOW_MS)
        assert verifier.verify(Medium.QR, reencode(envelope), b"", NOW_MS).accepted
        for position in range(len(envelope)):
            for mask in (0x01, 0x80, 0xFF):
                changed = bytearray(envelope)
                changed[position] ^= mask
                result = verifier.verify(Medium.QR, reencode(changed), b"", NOW_MS)
                assert not result.accepted, (position, mask)

    def test_every_card_byte_flip_rejected(self, verifier, card: Card) -> None:
        response = card.answer(DEVICE, NONCE, NOW_MS)
        assert verifier.verify(Medium.CARD, response, DEVICE, NOW_MS).accepted
        for position in range(len(response)):
            for mask in (0x01, 0x80, 0xFF):
                changed = bytearray(response)
                changed[position] ^= mask
                result = verifier.verify(Medium.CARD, bytes(changed), DEVICE, NOW_MS)
                assert not result.accepted, (position, mask)


class TestMisuse:
    def test_unknown_medium_raises(self, verifier, phone: Phone) -> None:
        with pytest.raises(ValueError, match="medium = 3"):
            verifier.verify(3, qr(phone), b"", NOW_MS)

    def test_text_instead_of_bytes_raises(self, verifier, phone: Phone) -> None:
        with pytest.raises(TypeError, match="presented must be bytes"):
            verifier.verify(Medium.QR, phone.qr_text(NOW_MS), b"", NOW_MS)

    def test_device_id_text_raises(self, verifier, card: Card) -> None:
        with pytest.raises(TypeError, match="device_id must be bytes"):
            verifier.verify(Medium.CARD, card.answer(DEVICE, NONCE, NOW_MS), "bus", NOW_MS)

    @pytest.mark.parametrize("now", [-1, 1 << 62])
    def test_time_out_of_range_raises(self, verifier, phone: Phone, now: int) -> None:
        with pytest.raises(ValueError, match="now_ms"):
            verifier.verify(Medium.QR, qr(phone), b"", now)

    def test_negative_tap_time_raises(self, verifier, phone: Phone) -> None:
        with pytest.raises(ValueError, match="tap_time_ms"):
            verifier.verify(Medium.QR, qr(phone), b"", NOW_MS, -5)

    def test_ring_of_other_implementation_rejected(self, impl) -> None:
        import fastpath._verify_py as twin

        other = twin.KeyRing() if impl is not twin else __import__("fastpath._verify", fromlist=["KeyRing"]).KeyRing()
        with pytest.raises(TypeError, match="ring must be"):
            impl.Verifier(other)

    @pytest.mark.parametrize(("name", "value"), [("clock_skew_s", -1), ("code_lifetime_s", 0),
                                                 ("offline_upload_max_s", -1), ("cache_size", -1)])
    def test_bad_setting_raises(self, impl, ring, name: str, value: int) -> None:
        with pytest.raises(ValueError, match=name):
            impl.Verifier(ring, **{name: value})


class TestKeyRing:
    def test_small_order_key_rejected(self, impl) -> None:
        with pytest.raises(ValueError, match="not a valid Ed25519 point"):
            impl.KeyRing().add(1, bytes([1]) + bytes(31))

    def test_short_key_rejected(self, impl) -> None:
        with pytest.raises(ValueError, match="31 bytes, expected 32"):
            impl.KeyRing().add(1, bytes(31))

    def test_retired_needs_time(self, impl, issuer_key: IssuerKey) -> None:
        with pytest.raises(ValueError, match="retired_at_ms is None"):
            impl.KeyRing().add(1, issuer_key.public_key, "retired")

    def test_active_with_time_rejected(self, impl, issuer_key: IssuerKey) -> None:
        with pytest.raises(ValueError, match="active but retired_at_ms"):
            impl.KeyRing().add(1, issuer_key.public_key, "active", retired_at_ms=5)

    def test_unknown_status_rejected(self, impl, issuer_key: IssuerKey) -> None:
        with pytest.raises(ValueError, match="status = 'paused'"):
            impl.KeyRing().add(1, issuer_key.public_key, "paused")

    @pytest.mark.parametrize("key_id", [-1, 65536])
    def test_key_id_range(self, impl, issuer_key: IssuerKey, key_id: int) -> None:
        with pytest.raises(ValueError, match="key_id"):
            impl.KeyRing().add(key_id, issuer_key.public_key)

    def test_get_and_version(self, impl, issuer_key: IssuerKey) -> None:
        ring = impl.KeyRing()
        assert ring.get(7) is None
        ring.add(7, issuer_key.public_key, "retired", retired_at_ms=123)
        assert ring.get(7) == (issuer_key.public_key, "retired", 123)
        assert 7 in ring
        assert len(ring) == 1
        assert ring.key_ids() == [7]
        assert ring.version == 1
        ring.remove(7)
        assert ring.version == 2
        with pytest.raises(KeyError):
            ring.remove(7)
