"""Pure-Python twin of the compiled verifier (``fastpath._verify``).

Same classes, same checks in the same order, same verdicts: the test suite
runs against both and hypothesis compares them on random and mutated input.
Signatures are checked by libsodium through PyNaCl, which keeps libsodium's
strict rules (non-canonical encodings and small-order points rejected).
Select it with ``TAPGATE_FASTPATH=python``. It is slower: docs/benchmarks.md
has the numbers.
"""

from __future__ import annotations

import nacl.bindings
import nacl.exceptions

from fastpath import wire
from fastpath.entitlements import Entitlements
from fastpath.reasons import Medium, Reason

IMPLEMENTATION = "python"

_STATUSES = {"active": 0, "retired": 1, "revoked": 2}
_STATUS_NAMES = {code: name for name, code in _STATUSES.items()}
_TIME_MAX = (1 << 62) - 1
_INT64_MIN = -(1 << 63)
_INT64_MAX = (1 << 63) - 1


def verify_signature(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """Check one Ed25519 signature with libsodium's strict rules; a wrong length is simply invalid."""
    if len(public_key) != 32 or len(signature) != wire.SIGNATURE_LEN:
        return False
    try:
        nacl.bindings.crypto_sign_open(bytes(signature) + bytes(message), bytes(public_key))
    except nacl.exceptions.BadSignatureError:
        return False
    return True


def _check_time(name: str, value: object) -> int:
    if not isinstance(value, int):
        raise TypeError(f"{name} must be an int (Unix milliseconds), got {type(value).__name__}")
    if not _INT64_MIN <= value <= _INT64_MAX:
        raise OverflowError(f"{name} = {value} does not fit in a signed 64-bit integer")
    if not 0 <= value <= _TIME_MAX:
        raise ValueError(f"{name} = {value} is outside 0 to 2**62 - 1 milliseconds")
    return value


def _check_key_id(key_id: object) -> int:
    if not isinstance(key_id, int):
        raise TypeError(f"key_id must be an int, got {type(key_id).__name__}")
    if not 0 <= key_id <= 0xFFFF:
        raise ValueError(f"key_id = {key_id} is outside 0 to 65535")
    return key_id


class KeyRing:
    """Issuer public keys by key id, each active, retired (with its retirement time) or revoked.

    Every change bumps :attr:`version`; verifiers that see a new version drop
    their credential cache, so a revocation takes effect on the next tap.
    """

    __slots__ = ("_keys", "_version")

    def __init__(self) -> None:
        self._keys: dict[int, tuple[bytes, int, int]] = {}
        self._version = 0

    def add(self, key_id: int, public_key: bytes, status: str = "active",
            retired_at_ms: int | None = None) -> None:
        """Add or replace the key ``key_id``.

        ``retired_at_ms`` is required for a retired key (credentials issued
        before it still verify) and must be None for an active one.
        """
        _check_key_id(key_id)
        if not isinstance(public_key, bytes):
            raise TypeError(f"public_key must be bytes, got {type(public_key).__name__}")
        if len(public_key) != 32:
            raise ValueError(f"public_key of key {key_id} has {len(public_key)} bytes, expected 32")
        if not nacl.bindings.crypto_core_ed25519_is_valid_point(public_key):
            raise ValueError(f"public_key of key {key_id} is not a valid Ed25519 point "
                             "(non-canonical, small order or off the curve)")
        if status not in _STATUSES:
            raise ValueError(f"status = {status!r} of key {key_id}: expected 'active', 'retired' or 'revoked'")
        if status == "retired":
            if retired_at_ms is None:
                raise ValueError(f"key {key_id} is retired but retired_at_ms is None: give the retirement time")
            retired = _check_time("retired_at_ms", retired_at_ms)
        elif status == "active" and retired_at_ms is not None:
            raise ValueError(f"key {key_id} is active but retired_at_ms = {retired_at_ms}: pass None")
        else:
            retired = 0 if retired_at_ms is None else _check_time("retired_at_ms", retired_at_ms)
        self._keys[key_id] = (public_key, _STATUSES[status], retired)
        self._version += 1

    def remove(self, key_id: int) -> None:
        """Forget ``key_id``; credentials it signed then verify as UNKNOWN_KEY. Raise KeyError if absent."""
        _check_key_id(key_id)
        del self._keys[key_id]
        self._version += 1

    def get(self, key_id: int) -> tuple[bytes, str, int | None] | None:
        """Return ``(public_key, status, retired_at_ms)`` of ``key_id``, or None."""
        entry = self._keys.get(_check_key_id(key_id))
        if entry is None:
            return None
        public_key, status, retired = entry
        return public_key, _STATUS_NAMES[status], (retired if status == 1 else None)

    def key_ids(self) -> list[int]:
        return sorted(self._keys)

    @property
    def version(self) -> int:
        return self._version

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, key_id: object) -> bool:
        return key_id in self._keys


class VerifyResult:
    """Outcome of one verification.

    The credential fields (``credential_id``, tokens, ``entitlements``,
    ``key_id``) are set once the issuer signature has verified, and None
    before. ``replay_key`` and ``presented_at_ms`` are set once the holder
    signature has verified too. So a rejection for a time rule still names
    the authentic credential, and nothing unauthenticated ever leaves here.
    """

    __slots__ = ("reason", "medium", "key_id", "credential_id", "holder_token", "account_token",
                 "entitlements", "replay_key", "presented_at_ms")

    def __init__(self, reason: int, medium: int) -> None:
        self.reason = reason
        self.medium = medium
        self.key_id: int | None = None
        self.credential_id: bytes | None = None
        self.holder_token: bytes | None = None
        self.account_token: bytes | None = None
        self.entitlements: Entitlements | None = None
        self.replay_key: bytes | None = None
        self.presented_at_ms: int | None = None

    @property
    def accepted(self) -> bool:
        return self.reason == 0

    @property
    def reason_name(self) -> str:
        return Reason(self.reason).name

    def __repr__(self) -> str:
        credential = self.credential_id.hex() if self.credential_id is not None else None
        return f"<VerifyResult {self.reason_name} medium={self.medium} credential={credential}>"


class _Cached:
    """A credential whose issuer signature and key status have been checked."""

    __slots__ = ("issuer_signature", "fields", "holder_key")

    def __init__(self, issuer_signature: bytes, fields: wire.CredentialFields) -> None:
        self.issuer_signature = issuer_signature
        self.fields = fields
        self.holder_key = fields.holder_public_key


class Verifier:
    """Verify QR codes and card responses against a :class:`KeyRing`.

    A verified credential is kept in a bounded cache keyed by the BLAKE2b
    digest of its body (first in, first out), together with its issuer
    signature: a returning rider then costs one signature check, the
    holder's. The verdict never depends on the cache.
    """

    __slots__ = ("_ring", "_ring_version", "_skew_ms", "_lifetime_ms", "_offline_max_ms", "_cache_size",
                 "_cache", "_hits", "_misses", "_signature_checks")

    def __init__(self, ring: KeyRing, clock_skew_s: int = 30, code_lifetime_s: int = 60,
                 offline_upload_max_s: int = 604800, cache_size: int = 100_000) -> None:
        if not isinstance(ring, KeyRing):
            raise TypeError(f"ring must be a {__name__}.KeyRing, got {type(ring).__module__}.{type(ring).__name__}")
        for name, value, low in (("clock_skew_s", clock_skew_s, 0), ("code_lifetime_s", code_lifetime_s, 1),
                                 ("offline_upload_max_s", offline_upload_max_s, 0), ("cache_size", cache_size, 0)):
            if not isinstance(value, int):
                raise TypeError(f"{name} must be an int, got {type(value).__name__}")
            if not low <= value <= 10**12:
                raise ValueError(f"{name} = {value} is outside {low} to 10**12")
        self._ring = ring
        self._ring_version = ring.version
        self._skew_ms = clock_skew_s * 1000
        self._lifetime_ms = code_lifetime_s * 1000
        self._offline_max_ms = offline_upload_max_s * 1000
        self._cache_size = cache_size
        self._cache: dict[bytes, _Cached] = {}
        self._hits = 0
        self._misses = 0
        self._signature_checks = 0

    def stats(self) -> dict[str, int]:
        """Return counters: cache_hits, cache_misses, signature_checks, cache_len."""
        return {"cache_hits": self._hits, "cache_misses": self._misses,
                "signature_checks": self._signature_checks, "cache_len": len(self._cache)}

    def clear_cache(self) -> None:
        self._cache.clear()

    def verify(self, medium: int, presented: bytes, device_id: bytes, now_ms: int,
               tap_time_ms: int = 0) -> VerifyResult:
        """Verify one presentation; see docs/credential-format.md for every check and its order."""
        if not isinstance(medium, int):
            raise TypeError(f"medium must be an int (1 card, 2 QR), got {type(medium).__name__}")
        if medium != 1 and medium != 2:
            raise ValueError(f"medium = {medium}: expected 1 (card) or 2 (QR)")
        if type(presented) is not bytes:
            raise TypeError(f"presented must be bytes, got {type(presented).__name__}")
        if type(device_id) is not bytes:
            raise TypeError(f"device_id must be bytes, got {type(device_id).__name__}")
        _check_time("now_ms", now_ms)
        _check_time("tap_time_ms", tap_time_ms)

        if medium == Medium.QR:
            envelope_or_reason = self._decode_qr_text(presented)
            if isinstance(envelope_or_reason, int):
                return VerifyResult(envelope_or_reason, medium)
            envelope = envelope_or_reason
        else:
            if presented[:2] == wire.QR_PREFIX[:2]:
                return VerifyResult(Reason.WRONG_MEDIUM, medium)
            envelope = presented
        return self._verify_envelope(medium, envelope, device_id, now_ms, tap_time_ms)

    @staticmethod
    def _decode_qr_text(text: bytes) -> bytes | int:
        if len(text) < wire.QR_PREFIX_LEN or text[:2] != b"TG" or text[3:4] != b":":
            return Reason.MALFORMED
        if text[2:3] != b"1":
            return Reason.UNSUPPORTED_VERSION
        payload = text[wire.QR_PREFIX_LEN:]
        if len(payload) > wire.QR_PAYLOAD_MAX:
            return Reason.MALFORMED
        try:
            return wire.base45_decode(payload)
        except ValueError:
            return Reason.MALFORMED

    def _verify_envelope(self, medium: int, data: bytes, device_id: bytes, now_ms: int,
                         tap_time_ms: int) -> VerifyResult:
        # 1. Envelope header and length.
        size = len(data)
        if size < 3:
            return VerifyResult(Reason.MALFORMED, medium)
        if data[0] != wire.ENVELOPE_VERSION:
            return VerifyResult(Reason.UNSUPPORTED_VERSION, medium)
        if data[1] != 1 and data[1] != 2:
            return VerifyResult(Reason.MALFORMED, medium)
        if data[1] != medium:
            return VerifyResult(Reason.WRONG_MEDIUM, medium)
        if data[2] != wire.CREDENTIAL_VERSION:
            return VerifyResult(Reason.UNSUPPORTED_VERSION, medium)
        if medium == Medium.QR:
            if size != wire.QR_ENVELOPE_LEN:
                return VerifyResult(Reason.MALFORMED, medium)
        else:
            if size < wire.OFF_DYNAMIC + 1:
                return VerifyResult(Reason.MALFORMED, medium)
            id_len = data[wire.OFF_DYNAMIC]
            if id_len < 1 or id_len > wire.DEVICE_ID_MAX or size != wire.CARD_FIXED_LEN + id_len:
                return VerifyResult(Reason.MALFORMED, medium)

        body = data[wire.OFF_CREDENTIAL:wire.OFF_CREDENTIAL + wire.BODY_LEN]
        issuer_signature = data[wire.OFF_CREDENTIAL + wire.BODY_LEN:wire.OFF_DYNAMIC]
        body_digest = wire.digest(body)

        # 2. The credential: from the cache, or through the key ring and the issuer signature.
        if self._ring_version != self._ring.version:
            self._cache.clear()
            self._ring_version = self._ring.version
        cached = self._cache.get(body_digest)
        if cached is not None and cached.issuer_signature == issuer_signature:
            self._hits += 1
        else:
            self._misses += 1
            key_id = (body[wire.OFF_KEY_ID] << 8) | body[wire.OFF_KEY_ID + 1]
            key = self._ring._keys.get(key_id)
            if key is None:
                return VerifyResult(Reason.UNKNOWN_KEY, medium)
            public_key, status, retired_at_ms = key
            if status == 2:
                return VerifyResult(Reason.REVOKED_KEY, medium)
            self._signature_checks += 1
            if not verify_signature(public_key, body, issuer_signature):
                return VerifyResult(Reason.ISSUER_SIGNATURE_INVALID, medium)
            fields = wire.decode_body(body)
            if status == 1 and fields.issued_at_ms >= retired_at_ms:
                result = VerifyResult(Reason.KEY_RETIRED, medium)
                self._fill_credential(result, fields)
                return result
            cached = _Cached(issuer_signature, fields)
            if self._cache_size > 0:
                if len(self._cache) >= self._cache_size:
                    del self._cache[next(iter(self._cache))]
                self._cache[body_digest] = cached
        fields = cached.fields
        result = VerifyResult(Reason.ACCEPTED, medium)
        self._fill_credential(result, fields)

        # 3. The holder signature over the dynamic part.
        dynamic = data[wire.OFF_DYNAMIC:size - wire.SIGNATURE_LEN]
        holder_signature = data[size - wire.SIGNATURE_LEN:]
        if medium == Medium.QR:
            message = wire.QR_CONTEXT + body_digest + dynamic
            presented_at_ms = int.from_bytes(dynamic[0:8], "big")
        else:
            message = wire.CARD_CONTEXT + body_digest + dynamic
            presented_at_ms = int.from_bytes(dynamic[-8:], "big")
        self._signature_checks += 1
        if not verify_signature(cached.holder_key, message, holder_signature):
            result.reason = Reason.HOLDER_SIGNATURE_INVALID
            return result
        result.replay_key = wire.digest(message)
        result.presented_at_ms = presented_at_ms

        # 4. A card must have answered this device's challenge.
        if medium == Medium.CARD and dynamic[1:1 + dynamic[0]] != device_id:
            result.reason = Reason.CHALLENGE_MISMATCH
            return result

        result.reason = self._check_times(fields, presented_at_ms, now_ms, tap_time_ms)
        return result

    def _check_times(self, fields: wire.CredentialFields, presented_at_ms: int, now_ms: int,
                     tap_time_ms: int) -> int:
        # An online tap is judged at the gateway's clock, an offline upload at its recorded tap time.
        reference = now_ms
        if tap_time_ms != 0:
            if tap_time_ms > now_ms + self._skew_ms:
                return Reason.CODE_FROM_FUTURE
            if now_ms - tap_time_ms > self._offline_max_ms:
                return Reason.OFFLINE_UPLOAD_TOO_LATE
            reference = tap_time_ms
        if reference < fields.valid_from_ms:
            return Reason.CREDENTIAL_NOT_YET_VALID
        if reference >= fields.valid_until_ms:
            return Reason.CREDENTIAL_EXPIRED
        if presented_at_ms > reference + self._skew_ms:
            return Reason.CODE_FROM_FUTURE
        if reference - presented_at_ms > self._lifetime_ms + self._skew_ms:
            return Reason.CODE_EXPIRED
        return Reason.ACCEPTED

    @staticmethod
    def _fill_credential(result: VerifyResult, fields: wire.CredentialFields) -> None:
        result.key_id = fields.key_id
        result.credential_id = fields.credential_id
        result.holder_token = fields.holder_token
        result.account_token = fields.account_token
        result.entitlements = fields.entitlements
