"""Byte layout of credentials, QR presentations and card responses (format version 1).

docs/credential-format.md is the specification; this module is its Python
rendering, shared by the pure-Python verifier and the issuer tooling. The
compiled verifier repeats the offsets in ``_verify.pxd``, and a test checks
that both sets of numbers agree.

All integers are big-endian and unsigned. Times are Unix milliseconds (UTC).
"""

from __future__ import annotations

import dataclasses
import hashlib
import struct

from fastpath.entitlements import Entitlements, entitlements_from_numbers

ENVELOPE_VERSION = 1
CREDENTIAL_VERSION = 1

# Credential body: the bytes the issuer signs.
OFF_VERSION = 0            # u8
OFF_KEY_ID = 1             # u16
OFF_CREDENTIAL_ID = 3      # 16 bytes
OFF_HOLDER_TOKEN = 19      # 16 bytes
OFF_ACCOUNT_TOKEN = 35     # 16 bytes
OFF_ISSUED_AT = 51         # u64 ms
OFF_VALID_FROM = 59        # u64 ms
OFF_VALID_UNTIL = 67       # u64 ms, exclusive
OFF_BIRTH_DATE = 75        # u16 day number
OFF_DISABILITY_UNTIL = 77  # u16 day number, inclusive
OFF_PRIORITY_UNTIL = 79    # u16 day number, inclusive
OFF_STUDENT_UNTIL = 81     # u16 day number, inclusive
OFF_PRIORITY_GROUP = 83    # u8
OFF_HOLDER_KEY = 84        # 32 bytes, Ed25519 public key
BODY_LEN = 116
SIGNATURE_LEN = 64
CREDENTIAL_LEN = BODY_LEN + SIGNATURE_LEN  # body || issuer signature
TOKEN_LEN = 16

# Envelope: version, medium, credential, then the medium's dynamic part, then the holder signature.
HEADER_LEN = 2
OFF_CREDENTIAL = HEADER_LEN
OFF_DYNAMIC = HEADER_LEN + CREDENTIAL_LEN  # 182

# QR dynamic part: presented_at_ms u64, counter u32.
QR_DYNAMIC_LEN = 12
QR_ENVELOPE_LEN = OFF_DYNAMIC + QR_DYNAMIC_LEN + SIGNATURE_LEN  # 258

# Card dynamic part: device id length u8, device id, reader nonce, challenge time u64.
DEVICE_ID_MAX = 64
NONCE_LEN = 16
CARD_FIXED_LEN = OFF_DYNAMIC + 1 + NONCE_LEN + 8 + SIGNATURE_LEN  # 271, plus the device id
CARD_ENVELOPE_MAX = CARD_FIXED_LEN + DEVICE_ID_MAX                  # 335
ENVELOPE_MAX = max(QR_ENVELOPE_LEN, CARD_ENVELOPE_MAX)

# QR text: "TG" + one version character + ":" + Base45 of the envelope.
QR_PREFIX = b"TG1:"
QR_PREFIX_LEN = 4
QR_PAYLOAD_MAX = (ENVELOPE_MAX // 2) * 3 + (2 if ENVELOPE_MAX % 2 else 0)  # 503 characters

# Domain-separation prefixes of the messages the holder key signs.
QR_CONTEXT = b"tapgate.qr.v1"
CARD_CONTEXT = b"tapgate.card.v1"
DIGEST_LEN = 32

_BODY = struct.Struct(">BH16s16s16sQQQHHHHB32s")
assert _BODY.size == BODY_LEN
_QR_DYNAMIC = struct.Struct(">QI")
_U64 = struct.Struct(">Q")

BASE45_ALPHABET = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ $%*+-./:"
_BASE45_VALUE = {char: index for index, char in enumerate(BASE45_ALPHABET)}


def base45_encode(data: bytes) -> bytes:
    """Encode ``data`` in Base45 (RFC 9285): every 2 bytes become 3 characters, a last byte 2."""
    out = bytearray()
    for i in range(0, len(data) - 1, 2):
        value = data[i] * 256 + data[i + 1]
        value, c = divmod(value, 45)
        e, d = divmod(value, 45)
        out += bytes((BASE45_ALPHABET[c], BASE45_ALPHABET[d], BASE45_ALPHABET[e]))
    if len(data) % 2:
        d, c = divmod(data[-1], 45)
        out += bytes((BASE45_ALPHABET[c], BASE45_ALPHABET[d]))
    return bytes(out)


def base45_decode(text: bytes) -> bytes:
    """Decode strict Base45; raise ValueError for a bad length, character or out-of-range group.

    Strictness matters: every byte string has exactly one accepted encoding,
    so changing any character of a QR text changes the decoded bytes or is
    rejected.
    """
    if len(text) % 3 == 1:
        raise ValueError(f"Base45 text of {len(text)} characters: the length must not be 1 modulo 3")
    out = bytearray()
    try:
        for i in range(0, len(text) - 2, 3):
            value = _BASE45_VALUE[text[i]] + _BASE45_VALUE[text[i + 1]] * 45 + _BASE45_VALUE[text[i + 2]] * 2025
            if value > 0xFFFF:
                raise ValueError(f"Base45 group at {i} encodes {value}, more than 65535")
            out += bytes((value >> 8, value & 0xFF))
        if len(text) % 3 == 2:
            value = _BASE45_VALUE[text[-2]] + _BASE45_VALUE[text[-1]] * 45
            if value > 0xFF:
                raise ValueError(f"Base45 final pair encodes {value}, more than 255")
            out.append(value)
    except KeyError as exc:
        raise ValueError(f"character {bytes((exc.args[0],))!r} is not in the Base45 alphabet") from None
    return bytes(out)


def digest(data: bytes) -> bytes:
    """BLAKE2b with a 32-byte output and no key (libsodium's crypto_generichash with outlen 32)."""
    return hashlib.blake2b(data, digest_size=DIGEST_LEN).digest()


def qr_message(body_digest: bytes, presented_at_ms: int, counter: int) -> bytes:
    """Return the bytes the holder key signs for a QR code."""
    return QR_CONTEXT + body_digest + _QR_DYNAMIC.pack(presented_at_ms, counter)


def card_message(body_digest: bytes, dynamic: bytes) -> bytes:
    """Return the bytes the card signs: context, credential digest and the challenge as encoded."""
    return CARD_CONTEXT + body_digest + dynamic


def encode_card_dynamic(device_id: bytes, reader_nonce: bytes, time_ms: int) -> bytes:
    if not 1 <= len(device_id) <= DEVICE_ID_MAX:
        raise ValueError(f"device id of {len(device_id)} bytes: expected 1 to {DEVICE_ID_MAX} bytes")
    if len(reader_nonce) != NONCE_LEN:
        raise ValueError(f"reader nonce of {len(reader_nonce)} bytes: expected {NONCE_LEN}")
    return bytes((len(device_id),)) + device_id + reader_nonce + _U64.pack(time_ms)


@dataclasses.dataclass(frozen=True, slots=True)
class CredentialFields:
    """The decoded credential body, for the issuer tooling and the pure-Python verifier."""

    version: int
    key_id: int
    credential_id: bytes
    holder_token: bytes
    account_token: bytes
    issued_at_ms: int
    valid_from_ms: int
    valid_until_ms: int
    entitlements: Entitlements
    holder_public_key: bytes


def encode_body(fields: CredentialFields) -> bytes:
    from fastpath.entitlements import date_to_day_number

    ent = fields.entitlements
    return _BODY.pack(
        fields.version, fields.key_id, fields.credential_id, fields.holder_token, fields.account_token,
        fields.issued_at_ms, fields.valid_from_ms, fields.valid_until_ms,
        date_to_day_number(ent.birth_date, "birth_date"),
        date_to_day_number(ent.disability_until, "disability_until"),
        date_to_day_number(ent.priority_until, "priority_until"),
        date_to_day_number(ent.student_until, "student_until"),
        ent.priority_group, fields.holder_public_key)


def decode_body(body: bytes) -> CredentialFields:
    """Decode a credential body of exactly :data:`BODY_LEN` bytes (no checks beyond the length)."""
    (version, key_id, credential_id, holder_token, account_token, issued_at, valid_from, valid_until,
     birth, disability, priority, student, group, holder_key) = _BODY.unpack(body)
    return CredentialFields(version, key_id, credential_id, holder_token, account_token, issued_at,
                            valid_from, valid_until,
                            entitlements_from_numbers(birth, disability, priority, student, group), holder_key)
