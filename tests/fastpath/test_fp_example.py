"""The worked example of docs/credential-format.md: fixed seeds give exactly the bytes on record."""

from __future__ import annotations

import datetime as dt
import json
import pathlib

import pytest

from fastpath import wire
from fastpath.entitlements import Entitlements
from fastpath.issuer import Card, IssuerKey, Phone, issue_credential
from fastpath.reasons import Medium, Reason

EXAMPLE = json.loads((pathlib.Path(__file__).resolve().parent.parent / "data" / "credential_v1_example.json")
                     .read_text())


@pytest.fixture(scope="module")
def credential() -> bytes:
    key = IssuerKey.from_seed(EXAMPLE["issuer_key_id"], bytes.fromhex(EXAMPLE["issuer_seed"]))
    assert key.public_key.hex() == EXAMPLE["issuer_public_key"]
    entitlements = Entitlements(birth_date=dt.date.fromisoformat(EXAMPLE["birth_date"]),
                                priority_until=dt.date.fromisoformat(EXAMPLE["priority_until"]),
                                priority_group=EXAMPLE["priority_group"])
    return issue_credential(
        key, holder_token=bytes.fromhex(EXAMPLE["holder_token"]),
        account_token=bytes.fromhex(EXAMPLE["account_token"]), entitlements=entitlements,
        valid_from_ms=EXAMPLE["valid_from_ms"], valid_until_ms=EXAMPLE["valid_until_ms"],
        holder_public_key=bytes.fromhex(EXAMPLE["holder_public_key"]),
        credential_id=bytes.fromhex(EXAMPLE["credential_id"]), issued_at_ms=EXAMPLE["issued_at_ms"])


def test_credential_bytes(credential: bytes) -> None:
    assert credential.hex() == EXAMPLE["credential"]
    assert wire.digest(credential[:wire.BODY_LEN]).hex() == EXAMPLE["body_digest"]


def test_qr_bytes(credential: bytes) -> None:
    qr = EXAMPLE["qr"]
    phone = Phone(credential, bytes.fromhex(EXAMPLE["holder_seed"]), counter=qr["counter"] - 1)
    envelope = phone.qr_envelope(qr["presented_at_ms"])
    assert envelope.hex() == qr["envelope"]
    assert (wire.QR_PREFIX + wire.base45_encode(envelope)).decode() == qr["text"]


def test_card_bytes(credential: bytes) -> None:
    card_example = EXAMPLE["card"]
    card = Card(credential, bytes.fromhex(EXAMPLE["holder_seed"]))
    response = card.answer(card_example["device_id"].encode(), bytes.fromhex(card_example["reader_nonce"]),
                           card_example["time_ms"])
    assert response.hex() == card_example["response"]


@pytest.mark.parametrize("medium", [Medium.QR, Medium.CARD])
def test_example_verifies(impl, medium: Medium) -> None:
    ring = impl.KeyRing()
    ring.add(EXAMPLE["issuer_key_id"], bytes.fromhex(EXAMPLE["issuer_public_key"]))
    verifier = impl.Verifier(ring)
    if medium == Medium.QR:
        part = EXAMPLE["qr"]
        presented, device, at = part["text"].encode(), b"", part["presented_at_ms"]
    else:
        part = EXAMPLE["card"]
        presented, device, at = bytes.fromhex(part["response"]), part["device_id"].encode(), part["time_ms"]
    result = verifier.verify(medium, presented, device, at + 2000)
    assert result.reason == Reason.ACCEPTED
    assert result.replay_key.hex() == part["replay_key"]
    assert wire.digest(bytes.fromhex(part["holder_message"])).hex() == part["replay_key"]
    assert result.entitlements.priority_group == 3
