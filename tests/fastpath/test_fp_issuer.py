"""Issuer keys, credentials, QR texts and images made by the tooling."""

from __future__ import annotations

import datetime as dt
import os
import pathlib
import stat

import pytest

from fastpath import wire
from fastpath.entitlements import Entitlements
from fastpath.errors import KeyFileError
from fastpath.issuer import Card, IssuerKey, Phone, issue_credential, make_qr, parse_credential, parse_presentation
from tests.fastpath.conftest import DAY_MS, NOW_MS


class TestKeyFile:
    def test_saved_key_is_owner_only(self, tmp_path: pathlib.Path) -> None:
        key = IssuerKey.generate(3)
        path = tmp_path / "issuer-3.key"
        key.save(path)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        loaded = IssuerKey.load(path)
        assert loaded.key_id == 3
        assert loaded.public_key == key.public_key

    def test_save_refuses_overwrite(self, tmp_path: pathlib.Path) -> None:
        path = tmp_path / "k.key"
        IssuerKey.generate(1).save(path)
        with pytest.raises(KeyFileError, match="already exists"):
            IssuerKey.generate(1).save(path)

    def test_overwrite_narrows_mode(self, tmp_path: pathlib.Path) -> None:
        path = tmp_path / "k.key"
        path.write_text("old")
        os.chmod(path, 0o644)
        IssuerKey.generate(1).save(path, overwrite=True)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600

    def test_load_rejects_readable_by_group(self, tmp_path: pathlib.Path) -> None:
        path = tmp_path / "k.key"
        IssuerKey.generate(1).save(path)
        os.chmod(path, 0o640)
        with pytest.raises(KeyFileError, match="chmod 600"):
            IssuerKey.load(path)

    def test_load_rejects_mismatched_public_key(self, tmp_path: pathlib.Path) -> None:
        path = tmp_path / "k.key"
        IssuerKey.generate(1).save(path)
        text = path.read_text()
        other = IssuerKey.generate(1).public_key.hex()
        doc = __import__("json").loads(text)
        doc["public_key"] = other
        path.write_text(__import__("json").dumps(doc))
        with pytest.raises(KeyFileError, match="does not match"):
            IssuerKey.load(path)

    def test_load_rejects_other_file(self, tmp_path: pathlib.Path) -> None:
        path = tmp_path / "k.key"
        path.write_text("{}")
        os.chmod(path, 0o600)
        with pytest.raises(KeyFileError, match="not a valid tapgate issuer key file"):
            IssuerKey.load(path)

    def test_load_missing_file(self, tmp_path: pathlib.Path) -> None:
        with pytest.raises(KeyFileError, match="not found"):
            IssuerKey.load(tmp_path / "none.key")


class TestCredential:
    def test_round_trip(self) -> None:
        key = IssuerKey.from_seed(9, b"\x09" * 32)
        entitlements = Entitlements(birth_date=dt.date(1960, 5, 4), student_until=dt.date(2027, 7, 31),
                                    priority_group=2, priority_until=dt.date(2030, 1, 1))
        credential = issue_credential(key, holder_token=b"h" * 16, account_token=b"a" * 16,
                                      entitlements=entitlements, valid_from_ms=NOW_MS, valid_until_ms=NOW_MS + 1,
                                      holder_public_key=b"\x05" * 32, credential_id=b"c" * 16, issued_at_ms=42)
        assert len(credential) == wire.CREDENTIAL_LEN == 180
        fields = parse_credential(credential)
        assert fields.key_id == 9
        assert fields.credential_id == b"c" * 16
        assert fields.holder_token == b"h" * 16
        assert fields.account_token == b"a" * 16
        assert fields.issued_at_ms == 42
        assert fields.valid_from_ms == NOW_MS
        assert fields.valid_until_ms == NOW_MS + 1
        assert fields.entitlements == entitlements
        assert fields.holder_public_key == b"\x05" * 32

    def test_empty_validity_rejected(self) -> None:
        key = IssuerKey.generate(1)
        with pytest.raises(ValueError, match="must be after valid_from_ms"):
            issue_credential(key, holder_token=bytes(16), account_token=bytes(16),
                             entitlements=Entitlements(birth_date=dt.date(2000, 1, 1)),
                             valid_from_ms=NOW_MS, valid_until_ms=NOW_MS, holder_public_key=bytes(32))

    def test_short_token_rejected(self) -> None:
        key = IssuerKey.generate(1)
        with pytest.raises(ValueError, match="holder_token must be 16 bytes, got 15 bytes"):
            issue_credential(key, holder_token=bytes(15), account_token=bytes(16),
                             entitlements=Entitlements(birth_date=dt.date(2000, 1, 1)),
                             valid_from_ms=NOW_MS, valid_until_ms=NOW_MS + 1, holder_public_key=bytes(32))

    def test_date_out_of_range_rejected(self) -> None:
        key = IssuerKey.generate(1)
        with pytest.raises(ValueError, match="outside the encodable range"):
            issue_credential(key, holder_token=bytes(16), account_token=bytes(16),
                             entitlements=Entitlements(birth_date=dt.date(1899, 12, 31)),
                             valid_from_ms=NOW_MS, valid_until_ms=NOW_MS + 1, holder_public_key=bytes(32))

    def test_holder_key_must_match(self) -> None:
        phone = Phone.new(IssuerKey.generate(1))
        with pytest.raises(ValueError, match="does not match"):
            Phone(phone.credential, b"\x44" * 32)


class TestPresentations:
    def test_qr_text_size_and_alphabet(self) -> None:
        text = Phone.new(IssuerKey.generate(1)).qr_text(NOW_MS)
        assert len(text) == 391
        assert text.startswith("TG1:")
        assert set(text[4:].encode()) <= set(wire.BASE45_ALPHABET)

    def test_counter_increments(self) -> None:
        phone = Phone.new(IssuerKey.generate(1))
        phone.qr_text(NOW_MS)
        phone.qr_text(NOW_MS)
        assert phone.counter == 2

    def test_qr_symbol_version_12_level_m(self) -> None:
        code = make_qr(Phone.new(IssuerKey.generate(1)).qr_text(NOW_MS))
        assert code.version == 12
        assert code.error == "M"
        assert code.mode == "alphanumeric"

    @pytest.mark.parametrize("suffix", [".png", ".svg"])
    def test_qr_image_written(self, tmp_path: pathlib.Path, suffix: str) -> None:
        path = tmp_path / f"code{suffix}"
        make_qr(Phone.new(IssuerKey.generate(1)).qr_text(NOW_MS), path)
        data = path.read_bytes()
        assert data.startswith(b"\x89PNG") if suffix == ".png" else b"<svg" in data[:400]

    def test_qr_image_bad_suffix(self, tmp_path: pathlib.Path) -> None:
        with pytest.raises(ValueError, match="must be .png or .svg"):
            make_qr("TG1:00", tmp_path / "code.gif")

    def test_card_response_layout(self) -> None:
        card = Card.new(IssuerKey.generate(1), valid_from_ms=NOW_MS, valid_until_ms=NOW_MS + DAY_MS)
        response = card.answer(b"gate-1", bytes(16), NOW_MS)
        assert len(response) == wire.CARD_FIXED_LEN + 6
        assert response[:2] == b"\x01\x01"
        assert response[2:182] == card.credential

    @pytest.mark.parametrize(("device", "nonce"), [(b"", bytes(16)), (b"x" * 65, bytes(16)), (b"g", bytes(15))])
    def test_card_challenge_checked(self, device: bytes, nonce: bytes) -> None:
        card = Card.new(IssuerKey.generate(1))
        with pytest.raises(ValueError):
            card.answer(device, nonce, NOW_MS)


class TestBase45:
    # Examples of RFC 9285 section 4.
    @pytest.mark.parametrize(("raw", "text"), [(b"AB", b"BB8"), (b"Hello!!", b"%69 VD92EX0"),
                                               (b"base-45", b"UJCLQE7W581"), (b"ietf!", b"QED8WEX0")])
    def test_rfc_examples(self, raw: bytes, text: bytes) -> None:
        assert wire.base45_encode(raw) == text
        assert wire.base45_decode(text) == raw

    @pytest.mark.parametrize("text", [b"GGW", b"A", b"ABCD", b"aa", b"::"])
    def test_invalid_rejected(self, text: bytes) -> None:
        with pytest.raises(ValueError):
            wire.base45_decode(text)


class TestParsePresentation:
    def test_qr_split(self) -> None:
        phone = Phone.new(IssuerKey.generate(1))
        credential, dynamic = parse_presentation(2, phone.qr_text(NOW_MS).encode())
        assert credential == phone.credential
        assert dynamic == NOW_MS.to_bytes(8, "big") + (1).to_bytes(4, "big")

    def test_card_split(self) -> None:
        card = Card.new(IssuerKey.generate(1))
        credential, dynamic = parse_presentation(1, card.answer(b"g1", bytes(16), NOW_MS))
        assert credential == card.credential
        assert dynamic == wire.encode_card_dynamic(b"g1", bytes(16), NOW_MS)
