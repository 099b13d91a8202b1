"""Known-answer tests: Wycheproof and RFC 8032 Ed25519 vectors through the fast path.

``verify_signature`` of the compiled module is a thin wrapper over the same
C call (``fastpath._sodium.ed25519_verify``) that ``Verifier.verify`` makes
for issuer and holder signatures, and the twin's is the one its verifier
calls. The RFC 8032 seeds also sign real credentials and codes that must
verify end to end.
"""

from __future__ import annotations

import json
import pathlib

import pytest

from fastpath.issuer import IssuerKey, Phone
from fastpath.reasons import Medium, Reason
from tests.fastpath.conftest import NOW_MS

DATA = pathlib.Path(__file__).resolve().parent.parent / "data"


def wycheproof_cases() -> list[tuple[int, str, bytes, bytes, bytes, bool]]:
    document = json.loads((DATA / "ed25519_test.json").read_text())
    cases = []
    for group in document["testGroups"]:
        public_key = bytes.fromhex(group["publicKey"]["pk"])
        for test in group["tests"]:
            cases.append((test["tcId"], test["comment"], public_key, bytes.fromhex(test["msg"]),
                          bytes.fromhex(test["sig"]), test["result"] == "valid"))
    return cases


def rfc8032_cases() -> list[dict[str, str]]:
    return json.loads((DATA / "rfc8032_ed25519_section7_1.json").read_text())["tests"]


WYCHEPROOF = wycheproof_cases()
RFC8032 = rfc8032_cases()


def test_vector_files_complete() -> None:
    assert len(WYCHEPROOF) == 151
    assert sum(1 for case in WYCHEPROOF if case[-1]) == 88
    assert len(RFC8032) == 5


def test_wycheproof_verdicts(impl) -> None:
    wrong = []
    for tc_id, comment, public_key, message, signature, valid in WYCHEPROOF:
        if impl.verify_signature(public_key, message, signature) != valid:
            wrong.append((tc_id, comment))
    assert wrong == []


def test_wycheproof_keys_rejected_by_ring_verify_nothing(impl) -> None:
    # A key the key ring refuses (small order, non-canonical) must have no valid signature in the set,
    # so refusing it at KeyRing.add never turns away a credential libsodium would accept.
    by_key: dict[bytes, list[bool]] = {}
    for *_, public_key, _message, _signature, valid in WYCHEPROOF:
        by_key.setdefault(public_key, []).append(valid)
    for public_key, verdicts in by_key.items():
        try:
            impl.KeyRing().add(1, public_key)
        except ValueError:
            assert not any(verdicts), public_key.hex()


@pytest.mark.parametrize("case", RFC8032, ids=[case["name"] for case in RFC8032])
def test_rfc8032_signature(impl, case: dict[str, str]) -> None:
    public_key = bytes.fromhex(case["public_key"])
    message = bytes.fromhex(case["message"])
    signature = bytes.fromhex(case["signature"])
    assert impl.verify_signature(public_key, message, signature) is True
    tampered = bytes([signature[0] ^ 1]) + signature[1:]
    assert impl.verify_signature(public_key, message, tampered) is False


@pytest.mark.parametrize("case", RFC8032, ids=[case["name"] for case in RFC8032])
def test_rfc8032_seed_as_issuer_key(impl, case: dict[str, str]) -> None:
    key = IssuerKey.from_seed(40, bytes.fromhex(case["secret_key"]))
    assert key.public_key == bytes.fromhex(case["public_key"])
    assert key.sign(bytes.fromhex(case["message"])) == bytes.fromhex(case["signature"])

    ring = impl.KeyRing()
    ring.add(40, key.public_key)
    phone = Phone.new(key, valid_from_ms=NOW_MS - 1000, holder_seed=bytes.fromhex(case["secret_key"]))
    result = impl.Verifier(ring).verify(Medium.QR, phone.qr_text(NOW_MS).encode(), b"", NOW_MS)
    assert result.reason == Reason.ACCEPTED


@pytest.mark.parametrize(("public_key", "signature"), [
    (b"\x00" * 32, bytes(64)),
    (b"\x00" * 31, bytes(64)),
    (b"\x00" * 32, bytes(63)),
])
def test_wrong_sizes_invalid(impl, public_key: bytes, signature: bytes) -> None:
    assert impl.verify_signature(public_key, b"m", signature) is False
