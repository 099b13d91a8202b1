# cython: language_level=3
"""Compiled verifier of QR codes and card responses (format version 1).

The hot path decodes into a stack buffer, hashes and verifies with libsodium
through C function pointers (``fastpath._sodium``) and touches Python only
for the cache lookup and the result object. ``fastpath._verify_py`` is its
pure-Python twin: same classes, same checks in the same order, same verdicts.
"""

cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.dict cimport PyDict_GetItem
from cpython.ref cimport PyObject
from libc.stdint cimport uint64_t
from libc.string cimport memcmp, memcpy

from fastpath._sodium cimport blake2b_256, ed25519_is_valid_point, ed25519_verify

from fastpath import _sodium
from fastpath.entitlements import entitlements_from_numbers
from fastpath.reasons import Reason

IMPLEMENTATION = "compiled"
verify_signature = _sodium.verify_signature

# Largest time in milliseconds accepted as now_ms, tap_time_ms or retired_at_ms.
cdef long long TIME_MAX = 4611686018427387903  # 2**62 - 1

cdef const char* QR_CONTEXT = b"tapgate.qr.v1"
cdef Py_ssize_t QR_CONTEXT_LEN = 13
cdef const char* CARD_CONTEXT = b"tapgate.card.v1"
cdef Py_ssize_t CARD_CONTEXT_LEN = 15

_STATUSES = {"active": KEY_ACTIVE, "retired": KEY_RETIRED_STATUS, "revoked": KEY_REVOKED}
_STATUS_NAMES = {code: name for name, code in _STATUSES.items()}

# Base45 character values, -1 for characters outside the alphabet.
cdef signed char _BASE45[256]


cdef void _init_base45():
    cdef const char* alphabet = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ $%*+-./:"
    cdef int i
    for i in range(256):
        _BASE45[i] = -1
    for i in range(45):
        _BASE45[<unsigned char>alphabet[i]] = i


_init_base45()


cdef inline uint64_t _load_u64(const unsigned char* p) noexcept nogil:
    return ((<uint64_t>p[0] << 56) | (<uint64_t>p[1] << 48) | (<uint64_t>p[2] << 40) | (<uint64_t>p[3] << 32)
            | (<uint64_t>p[4] << 24) | (<uint64_t>p[5] << 16) | (<uint64_t>p[6] << 8) | <uint64_t>p[7])


cdef inline unsigned int _load_u16(const unsigned char* p) noexcept nogil:
    return (<unsigned int>p[0] << 8) | p[1]


cdef Py_ssize_t _base45_decode(const unsigned char* text, Py_ssize_t size, unsigned char* out) noexcept nogil:
    """Decode strict Base45 into ``out``; return the byte count, or -1 for any invalid input."""
    cdef Py_ssize_t i = 0, written = 0
    cdef int c, d, e
    cdef long value
    if size % 3 == 1:
        return -1
    while i + 3 <= size:
        c = _BASE45[text[i]]
        d = _BASE45[text[i + 1]]
        e = _BASE45[text[i + 2]]
        if c < 0 or d < 0 or e < 0:
            return -1
        value = c + d * 45 + e * 2025
        if value > 0xFFFF:
            return -1
        out[written] = <unsigned char>(value >> 8)
        out[written + 1] = <unsigned char>(value & 0xFF)
        written += 2
        i += 3
    if size - i == 2:
        c = _BASE45[text[i]]
        d = _BASE45[text[i + 1]]
        if c < 0 or d < 0:
            return -1
        value = c + d * 45
        if value > 0xFF:
            return -1
        out[written] = <unsigned char>value
        written += 1
    return written


def _check_time(name, value):
    if not isinstance(value, int):
        raise TypeError(f"{name} must be an int (Unix milliseconds), got {type(value).__name__}")
    if not -(1 << 63) <= value <= (1 << 63) - 1:
        raise OverflowError(f"{name} = {value} does not fit in a signed 64-bit integer")
    if not 0 <= value <= TIME_MAX:
        raise ValueError(f"{name} = {value} is outside 0 to 2**62 - 1 milliseconds")
    return value


def _check_key_id(key_id):
    if not isinstance(key_id, int):
        raise TypeError(f"key_id must be an int, got {type(key_id).__name__}")
    if not 0 <= key_id <= 0xFFFF:
        raise ValueError(f"key_id = {key_id} is outside 0 to 65535")
    return key_id


@cython.final
cdef class _IssuerKey:
    pass


@cython.final
cdef class KeyRing:
    """Issuer public keys by key id, each active, retired (with its retirement time) or revoked.

    Every change bumps :attr:`version`; verifiers that see a new version drop
    their credential cache, so a revocation takes effect on the next tap.
    """

    def __cinit__(self):
        self._keys = {}
        self.version = 0

    def add(self, key_id, public_key, status="active", retired_at_ms=None):
        """Add or replace the key ``key_id``.

        ``retired_at_ms`` is required for a retired key (credentials issued
        before it still verify) and must be None for an active one.
        """
        cdef _IssuerKey key
        _check_key_id(key_id)
        if not isinstance(public_key, bytes):
            raise TypeError(f"public_key must be bytes, got {type(public_key).__name__}")
        if len(public_key) != 32:
            raise ValueError(f"public_key of key {key_id} has {len(public_key)} bytes, expected 32")
        if ed25519_is_valid_point(<bytes>public_key) != 1:
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
        key = _IssuerKey.__new__(_IssuerKey)
        memcpy(key.public_key, <const char*>(<bytes>public_key), 32)
        key.public_key_bytes = public_key
        key.status = _STATUSES[status]
        key.retired_at_ms = retired
        self._keys[key_id] = key
        self.version += 1

    def remove(self, key_id):
        """Forget ``key_id``; credentials it signed then verify as UNKNOWN_KEY. Raise KeyError if absent."""
        _check_key_id(key_id)
        del self._keys[key_id]
        self.version += 1

    def get(self, key_id):
        """Return ``(public_key, status, retired_at_ms)`` of ``key_id``, or None."""
        cdef _IssuerKey key
        entry = self._keys.get(_check_key_id(key_id))
        if entry is None:
            return None
        key = <_IssuerKey>entry
        retired = key.retired_at_ms if key.status == KEY_RETIRED_STATUS else None
        return key.public_key_bytes, _STATUS_NAMES[key.status], retired

    def key_ids(self):
        return sorted(self._keys)

    def __len__(self):
        return len(self._keys)

    def __contains__(self, key_id):
        return key_id in self._keys


@cython.final
cdef class _Cached:
    pass


@cython.final
@cython.freelist(64)
cdef class VerifyResult:
    """Outcome of one verification.

    The credential fields (``credential_id``, tokens, ``entitlements``,
    ``key_id``) are set once the issuer signature has verified, and None
    before. ``replay_key`` and ``presented_at_ms`` are set once the holder
    signature has verified too. So a rejection for a time rule still names
    the authentic credential, and nothing unauthenticated ever leaves here.
    """

    @property
    def accepted(self):
        return self.reason == 0

    @property
    def reason_name(self):
        return Reason(self.reason).name

    def __repr__(self):
        credential = self.credential_id.hex() if self.credential_id is not None else None
        return f"<VerifyResult {self.reason_name} medium={self.medium} credential={credential}>"


cdef inline VerifyResult _result(int reason, int medium):
    cdef VerifyResult result = VerifyResult.__new__(VerifyResult)
    result.reason = reason
    result.medium = medium
    return result


cdef inline void _fill_credential(VerifyResult result, _Cached cached):
    result.key_id = cached.key_id
    result.credential_id = cached.credential_id
    result.holder_token = cached.holder_token
    result.account_token = cached.account_token
    result.entitlements = cached.entitlements


cdef _Cached _decode_credential(const unsigned char* body, const unsigned char* issuer_signature):
    cdef _Cached cached = _Cached.__new__(_Cached)
    memcpy(cached.issuer_signature, issuer_signature, SIGNATURE_LEN)
    memcpy(cached.holder_key, body + OFF_HOLDER_KEY, 32)
    cached.issued_at_ms = _load_u64(body + OFF_ISSUED_AT)
    cached.valid_from_ms = _load_u64(body + OFF_VALID_FROM)
    cached.valid_until_ms = _load_u64(body + OFF_VALID_UNTIL)
    cached.key_id = _load_u16(body + OFF_KEY_ID)
    cached.credential_id = PyBytes_FromStringAndSize(<const char*>body + OFF_CREDENTIAL_ID, TOKEN_LEN)
    cached.holder_token = PyBytes_FromStringAndSize(<const char*>body + OFF_HOLDER_TOKEN, TOKEN_LEN)
    cached.account_token = PyBytes_FromStringAndSize(<const char*>body + OFF_ACCOUNT_TOKEN, TOKEN_LEN)
    cached.entitlements = entitlements_from_numbers(
        _load_u16(body + OFF_BIRTH_DATE), _load_u16(body + OFF_DISABILITY_UNTIL),
        _load_u16(body + OFF_PRIORITY_UNTIL), _load_u16(body + OFF_STUDENT_UNTIL), body[OFF_PRIORITY_GROUP])
    return cached


@cython.final
cdef class Verifier:
    """Verify QR codes and card responses against a :class:`KeyRing`.

    A verified credential is kept in a bounded cache keyed by the BLAKE2b
    digest of its body (first in, first out), together with its issuer
    signature: a returning rider then costs one signature check, the
    holder's. The verdict never depends on the cache.
    """

    def __init__(self, ring, clock_skew_s=30, code_lifetime_s=60, offline_upload_max_s=604800,
                 cache_size=100_000):
        if not isinstance(ring, KeyRing):
            raise TypeError(f"ring must be a {__name__}.KeyRing, got {type(ring).__module__}.{type(ring).__name__}")
        for name, value, low in (("clock_skew_s", clock_skew_s, 0), ("code_lifetime_s", code_lifetime_s, 1),
                                 ("offline_upload_max_s", offline_upload_max_s, 0), ("cache_size", cache_size, 0)):
            if not isinstance(value, int):
                raise TypeError(f"{name} must be an int, got {type(value).__name__}")
            if not low <= value <= 10**12:
                raise ValueError(f"{name} = {value} is outside {low} to 10**12")
        self._ring = <KeyRing>ring
        self._ring_version = self._ring.version
        self._skew_ms = clock_skew_s * 1000
        self._lifetime_ms = code_lifetime_s * 1000
        self._offline_max_ms = offline_upload_max_s * 1000
        self._cache_size = cache_size
        self._cache = {}
        self._hits = 0
        self._misses = 0
        self._signature_checks = 0

    def stats(self):
        """Return counters: cache_hits, cache_misses, signature_checks, cache_len."""
        return {"cache_hits": self._hits, "cache_misses": self._misses,
                "signature_checks": self._signature_checks, "cache_len": len(self._cache)}

    def clear_cache(self):
        self._cache.clear()

    def verify(self, medium, presented, device_id, long long now_ms, long long tap_time_ms=0):
        """Verify one presentation; see docs/credential-format.md for every check and its order."""
        cdef unsigned char buffer[ENVELOPE_MAX]
        cdef const unsigned char* text
        cdef Py_ssize_t size
        cdef int kind

        if not isinstance(medium, int):
            raise TypeError(f"medium must be an int (1 card, 2 QR), got {type(medium).__name__}")
        if medium != 1 and medium != 2:
            raise ValueError(f"medium = {medium}: expected 1 (card) or 2 (QR)")
        kind = medium
        if type(presented) is not bytes:
            raise TypeError(f"presented must be bytes, got {type(presented).__name__}")
        if type(device_id) is not bytes:
            raise TypeError(f"device_id must be bytes, got {type(device_id).__name__}")
        if now_ms < 0 or now_ms > TIME_MAX:
            raise ValueError(f"now_ms = {now_ms} is outside 0 to 2**62 - 1 milliseconds")
        if tap_time_ms < 0 or tap_time_ms > TIME_MAX:
            raise ValueError(f"tap_time_ms = {tap_time_ms} is outside 0 to 2**62 - 1 milliseconds")

        text = <const unsigned char*>PyBytes_AS_STRING(presented)
        size = PyBytes_GET_SIZE(presented)
        if kind == MEDIUM_QR:
            if size < QR_PREFIX_LEN or text[0] != b'T' or text[1] != b'G' or text[3] != b':':
                return _result(MALFORMED, kind)
            if text[2] != b'1':
                return _result(UNSUPPORTED_VERSION, kind)
            if size - QR_PREFIX_LEN > QR_PAYLOAD_MAX:
                return _result(MALFORMED, kind)
            size = _base45_decode(text + QR_PREFIX_LEN, size - QR_PREFIX_LEN, buffer)
            if size < 0:
                return _result(MALFORMED, kind)
            return self._verify_envelope(kind, buffer, size, <bytes>device_id, now_ms, tap_time_ms)
        if size >= 2 and text[0] == b'T' and text[1] == b'G':
            return _result(WRONG_MEDIUM, kind)
        return self._verify_envelope(kind, text, size, <bytes>device_id, now_ms, tap_time_ms)

    cdef VerifyResult _verify_envelope(self, int medium, const unsigned char* data, Py_ssize_t size,
                                       bytes device_id, uint64_t now_ms, uint64_t tap_time_ms):
        cdef unsigned char body_digest[DIGEST_LEN]
        cdef unsigned char message[HOLDER_MESSAGE_MAX]
        cdef unsigned char replay_key[DIGEST_LEN]
        cdef const unsigned char* body
        cdef const unsigned char* issuer_signature
        cdef const unsigned char* dynamic
        cdef Py_ssize_t dynamic_len, message_len, id_len
        cdef PyObject* found
        cdef _Cached cached = None
        cdef VerifyResult result
        cdef uint64_t presented_at_ms
        cdef int reason = ACCEPTED

        # 1. Envelope header and length.
        if size < 3:
            return _result(MALFORMED, medium)
        if data[0] != ENVELOPE_VERSION:
            return _result(UNSUPPORTED_VERSION, medium)
        if data[1] != MEDIUM_CARD and data[1] != MEDIUM_QR:
            return _result(MALFORMED, medium)
        if data[1] != medium:
            return _result(WRONG_MEDIUM, medium)
        if data[2] != CREDENTIAL_VERSION:
            return _result(UNSUPPORTED_VERSION, medium)
        if medium == MEDIUM_QR:
            if size != QR_ENVELOPE_LEN:
                return _result(MALFORMED, medium)
        else:
            if size < OFF_DYNAMIC + 1:
                return _result(MALFORMED, medium)
            id_len = data[OFF_DYNAMIC]
            if id_len < 1 or id_len > DEVICE_ID_MAX or size != CARD_FIXED_LEN + id_len:
                return _result(MALFORMED, medium)

        body = data + OFF_CREDENTIAL
        issuer_signature = body + BODY_LEN
        blake2b_256(body_digest, body, BODY_LEN)
        digest_key = PyBytes_FromStringAndSize(<const char*>body_digest, DIGEST_LEN)

        # 2. The credential: from the cache, or through the key ring and the issuer signature.
        if self._ring_version != self._ring.version:
            self._cache.clear()
            self._ring_version = self._ring.version
        found = PyDict_GetItem(self._cache, digest_key)
        if found != NULL and memcmp((<_Cached>found).issuer_signature, issuer_signature, SIGNATURE_LEN) == 0:
            cached = <_Cached>found
            self._hits += 1
        else:
            self._misses += 1
            cached = self._admit(body, issuer_signature, digest_key, &reason)
            if reason != ACCEPTED:
                result = _result(reason, medium)
                if cached is not None:
                    _fill_credential(result, cached)
                return result
        result = _result(ACCEPTED, medium)
        _fill_credential(result, cached)

        # 3. The holder signature over context, credential digest and the dynamic part.
        dynamic = data + OFF_DYNAMIC
        dynamic_len = size - OFF_DYNAMIC - SIGNATURE_LEN
        if medium == MEDIUM_QR:
            memcpy(message, QR_CONTEXT, QR_CONTEXT_LEN)
            message_len = QR_CONTEXT_LEN
            presented_at_ms = _load_u64(dynamic)
        else:
            memcpy(message, CARD_CONTEXT, CARD_CONTEXT_LEN)
            message_len = CARD_CONTEXT_LEN
            presented_at_ms = _load_u64(dynamic + dynamic_len - 8)
        memcpy(message + message_len, body_digest, DIGEST_LEN)
        message_len += DIGEST_LEN
        memcpy(message + message_len, dynamic, dynamic_len)
        message_len += dynamic_len
        self._signature_checks += 1
        if ed25519_verify(data + size - SIGNATURE_LEN, message, message_len, cached.holder_key) != 0:
            result.reason = HOLDER_SIGNATURE_INVALID
            return result
        blake2b_256(replay_key, message, message_len)
        result.replay_key = PyBytes_FromStringAndSize(<const char*>replay_key, DIGEST_LEN)
        result.presented_at_ms = presented_at_ms

        # 4. A card must have answered this device's challenge.
        if medium == MEDIUM_CARD:
            id_len = dynamic[0]
            if PyBytes_GET_SIZE(device_id) != id_len or memcmp(PyBytes_AS_STRING(device_id), dynamic + 1, id_len) != 0:
                result.reason = CHALLENGE_MISMATCH
                return result

        result.reason = self._check_times(cached, presented_at_ms, now_ms, tap_time_ms)
        return result

    cdef _Cached _admit(self, const unsigned char* body, const unsigned char* issuer_signature,
                        bytes digest_key, int* reason):
        """Check key and issuer signature of a credential not in the cache; cache it if it passes.

        Sets ``reason[0]`` to the rejection, if any. Returns the decoded
        credential once the issuer signature has verified, else None.
        """
        cdef _IssuerKey key
        cdef _Cached cached
        entry = self._ring._keys.get(_load_u16(body + OFF_KEY_ID))
        if entry is None:
            reason[0] = UNKNOWN_KEY
            return None
        key = <_IssuerKey>entry
        if key.status == KEY_REVOKED:
            reason[0] = REVOKED_KEY
            return None
        self._signature_checks += 1
        if ed25519_verify(issuer_signature, body, BODY_LEN, key.public_key) != 0:
            reason[0] = ISSUER_SIGNATURE_INVALID
            return None
        cached = _decode_credential(body, issuer_signature)
        if key.status == KEY_RETIRED_STATUS and cached.issued_at_ms >= key.retired_at_ms:
            reason[0] = KEY_RETIRED
            return cached
        if self._cache_size > 0:
            if len(self._cache) >= self._cache_size:
                del self._cache[next(iter(self._cache))]
            self._cache[digest_key] = cached
        return cached

    cdef int _check_times(self, _Cached cached, uint64_t presented_at_ms, uint64_t now_ms,
                          uint64_t tap_time_ms) noexcept:
        # An online tap is judged at the gateway's clock, an offline upload at its recorded tap time.
        # All inputs are below 2**62 except the signed times, so no sum below can wrap.
        cdef uint64_t reference = now_ms
        if tap_time_ms != 0:
            if tap_time_ms > now_ms + self._skew_ms:
                return CODE_FROM_FUTURE
            if now_ms > tap_time_ms and now_ms - tap_time_ms > self._offline_max_ms:
                return OFFLINE_UPLOAD_TOO_LATE
            reference = tap_time_ms
        if reference < cached.valid_from_ms:
            return CREDENTIAL_NOT_YET_VALID
        if reference >= cached.valid_until_ms:
            return CREDENTIAL_EXPIRED
        if presented_at_ms > reference + self._skew_ms:
            return CODE_FROM_FUTURE
        if reference > presented_at_ms and reference - presented_at_ms > self._lifetime_ms + self._skew_ms:
            return CODE_EXPIRED
        return ACCEPTED


def wire_constants():
    """Return the layout numbers compiled into this module, for the test that compares them with wire.py."""
    return {
        "ENVELOPE_VERSION": ENVELOPE_VERSION, "CREDENTIAL_VERSION": CREDENTIAL_VERSION,
        "OFF_KEY_ID": OFF_KEY_ID, "OFF_CREDENTIAL_ID": OFF_CREDENTIAL_ID, "OFF_HOLDER_TOKEN": OFF_HOLDER_TOKEN,
        "OFF_ACCOUNT_TOKEN": OFF_ACCOUNT_TOKEN, "OFF_ISSUED_AT": OFF_ISSUED_AT, "OFF_VALID_FROM": OFF_VALID_FROM,
        "OFF_VALID_UNTIL": OFF_VALID_UNTIL, "OFF_BIRTH_DATE": OFF_BIRTH_DATE,
        "OFF_DISABILITY_UNTIL": OFF_DISABILITY_UNTIL, "OFF_PRIORITY_UNTIL": OFF_PRIORITY_UNTIL,
        "OFF_STUDENT_UNTIL": OFF_STUDENT_UNTIL, "OFF_PRIORITY_GROUP": OFF_PRIORITY_GROUP,
        "OFF_HOLDER_KEY": OFF_HOLDER_KEY, "BODY_LEN": BODY_LEN, "SIGNATURE_LEN": SIGNATURE_LEN,
        "CREDENTIAL_LEN": CREDENTIAL_LEN, "TOKEN_LEN": TOKEN_LEN, "HEADER_LEN": HEADER_LEN,
        "OFF_CREDENTIAL": OFF_CREDENTIAL, "OFF_DYNAMIC": OFF_DYNAMIC, "QR_DYNAMIC_LEN": QR_DYNAMIC_LEN,
        "QR_ENVELOPE_LEN": QR_ENVELOPE_LEN, "DEVICE_ID_MAX": DEVICE_ID_MAX, "NONCE_LEN": NONCE_LEN,
        "CARD_FIXED_LEN": CARD_FIXED_LEN, "CARD_ENVELOPE_MAX": CARD_ENVELOPE_MAX, "ENVELOPE_MAX": ENVELOPE_MAX,
        "QR_PREFIX_LEN": QR_PREFIX_LEN, "QR_PAYLOAD_MAX": QR_PAYLOAD_MAX, "DIGEST_LEN": DIGEST_LEN,
        "QR_CONTEXT": QR_CONTEXT[:QR_CONTEXT_LEN], "CARD_CONTEXT": CARD_CONTEXT[:CARD_CONTEXT_LEN],
    }
