"""Coverage-guided fuzzing with atheris, outside the default test suite.

Targets (the same properties as the hypothesis tests in tests/faults/):

- ``qr``: a QR text starting from a genuine code; both fast-path
  implementations must agree, and only the genuine envelope may be accepted;
- ``card``: the same for a card response;
- ``returns``: ``settlement.returns.read_return_file`` may raise only
  InputFileError or SchemaValidationError;
- ``rules``: ``gateway.rules.load_rule_set_document`` (JSON, YAML, TOML by the
  first byte) may raise only RuleSetError.

Usage, one target per process, bounded in time::

    pip install atheris        # 3.0.0 has a manylinux wheel for CPython 3.11
    python tests/fuzz/atheris_targets.py qr -max_total_time=60 -seed=8

Every option after the target name goes to libFuzzer. A finding stops the
run with the exception and writes the input to ``crash-<sha1>``.
"""

from __future__ import annotations

import sys

try:
    import atheris
except ImportError:
    sys.exit("atheris is not installed: pip install atheris (not needed for the test suite)")

with atheris.instrument_imports():
    import fastpath._verify as compiled
    import fastpath._verify_py as twin
    from fastpath import wire
    from fastpath.entitlements import Entitlements
    from fastpath.issuer import Card, IssuerKey, Phone
    from fastpath.reasons import Medium
    from gateway.rules import RuleSetError, load_rule_set_document
    from settlement.errors import InputFileError, SchemaValidationError
    from settlement.returns import read_return_file

NOW_MS = 1_780_243_200_000
DAY_MS = 86_400_000
DEVICE = b"bus-1-001"
ISSUER = IssuerKey.from_seed(9, bytes(range(100, 132)))
PHONE = Phone.new(ISSUER, entitlements=Entitlements(birth_date=None), valid_from_ms=NOW_MS - DAY_MS,
                  valid_until_ms=NOW_MS + DAY_MS, holder_seed=b"\x33" * 32)
CARD = Card.new(ISSUER, valid_from_ms=NOW_MS - DAY_MS, valid_until_ms=NOW_MS + DAY_MS, holder_seed=b"\x44" * 32)
QR_TEXT = PHONE.qr_text(NOW_MS).encode()
QR_ENVELOPE = wire.base45_decode(QR_TEXT[wire.QR_PREFIX_LEN:])
CARD_RESPONSE = CARD.answer(DEVICE, b"\x55" * 16, NOW_MS)


def _verifiers():
    pair = []
    for module in (compiled, twin):
        ring = module.KeyRing()
        ring.add(ISSUER.key_id, ISSUER.public_key)
        pair.append(module.Verifier(ring, cache_size=64))
    return pair


VERIFIERS = _verifiers()


def _verify_both(medium: int, presented: bytes) -> int:
    fast, slow = (int(v.verify(medium, presented, DEVICE, NOW_MS, 0).reason) for v in VERIFIERS)
    if fast != slow:
        raise AssertionError(f"compiled says {fast}, python says {slow} for {presented!r}")
    return fast


def fuzz_qr(data: bytes) -> None:
    reason = _verify_both(Medium.QR, data)
    if reason == 0:
        try:
            envelope = wire.base45_decode(data[wire.QR_PREFIX_LEN:]) if data.startswith(wire.QR_PREFIX) else None
        except ValueError:
            envelope = None
        if envelope != QR_ENVELOPE:
            raise AssertionError(f"changed QR code accepted: {data!r}")


def fuzz_card(data: bytes) -> None:
    if _verify_both(Medium.CARD, data) == 0 and data != CARD_RESPONSE:
        raise AssertionError(f"changed card response accepted: {data.hex()}")


def fuzz_returns(data: bytes) -> None:
    try:
        read_return_file(data, "returns.dat")
    except (InputFileError, SchemaValidationError):
        pass


def fuzz_rules(data: bytes) -> None:
    fmt = ("json", "yaml", "toml")[data[0] % 3] if data else "toml"
    try:
        load_rule_set_document(data[1:], fmt)
    except RuleSetError:
        pass


TARGETS = {"qr": (fuzz_qr, [QR_TEXT]), "card": (fuzz_card, [CARD_RESPONSE]),
           "returns": (fuzz_returns, []), "rules": (fuzz_rules, [])}


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in TARGETS:
        sys.exit(f"usage: {sys.argv[0]} {{{','.join(TARGETS)}}} [libFuzzer options, e.g. -max_total_time=60]")
    target, seeds = TARGETS[sys.argv[1]]
    # libFuzzer reads its starting corpus from a directory, so the genuine input is written to a temporary one.
    import os
    import tempfile

    args = [sys.argv[0], *sys.argv[2:]]
    if seeds:
        folder = tempfile.mkdtemp(prefix="atheris-seed-")
        for n, seed in enumerate(seeds):
            with open(os.path.join(folder, f"seed{n}"), "wb") as file:
                file.write(seed)
        args.append(folder)
    atheris.Setup(args, target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
