# Declarations of the compiled verifier. The layout numbers repeat those of
# fastpath/wire.py (a test checks that they agree); docs/credential-format.md
# is the specification of both.

from libc.stdint cimport uint64_t

cdef enum:
    ENVELOPE_VERSION = 1
    CREDENTIAL_VERSION = 1
    MEDIUM_CARD = 1
    MEDIUM_QR = 2

    OFF_KEY_ID = 1
    OFF_CREDENTIAL_ID = 3
    OFF_HOLDER_TOKEN = 19
    OFF_ACCOUNT_TOKEN = 35
    OFF_ISSUED_AT = 51
    OFF_VALID_FROM = 59
    OFF_VALID_UNTIL = 67
    OFF_BIRTH_DATE = 75
    OFF_DISABILITY_UNTIL = 77
    OFF_PRIORITY_UNTIL = 79
    OFF_STUDENT_UNTIL = 81
    OFF_PRIORITY_GROUP = 83
    OFF_HOLDER_KEY = 84
    BODY_LEN = 116
    SIGNATURE_LEN = 64
    CREDENTIAL_LEN = 180
    TOKEN_LEN = 16

    HEADER_LEN = 2
    OFF_CREDENTIAL = 2
    OFF_DYNAMIC = 182
    QR_DYNAMIC_LEN = 12
    QR_ENVELOPE_LEN = 258
    DEVICE_ID_MAX = 64
    NONCE_LEN = 16
    CARD_FIXED_LEN = 271
    CARD_ENVELOPE_MAX = 335
    ENVELOPE_MAX = 335
    QR_PREFIX_LEN = 4
    QR_PAYLOAD_MAX = 503
    DIGEST_LEN = 32
    # Longest message the holder signs: card context (15) + digest + the longest card dynamic part (89).
    HOLDER_MESSAGE_MAX = 136

    # Reason codes, as in fastpath/reasons.py.
    ACCEPTED = 0
    MALFORMED = 1
    UNSUPPORTED_VERSION = 2
    UNKNOWN_KEY = 3
    REVOKED_KEY = 4
    ISSUER_SIGNATURE_INVALID = 5
    HOLDER_SIGNATURE_INVALID = 6
    CREDENTIAL_EXPIRED = 7
    CREDENTIAL_NOT_YET_VALID = 8
    CODE_EXPIRED = 9
    CODE_FROM_FUTURE = 10
    KEY_RETIRED = 11
    CHALLENGE_MISMATCH = 12
    OFFLINE_UPLOAD_TOO_LATE = 13
    WRONG_MEDIUM = 14

    KEY_ACTIVE = 0
    KEY_RETIRED_STATUS = 1
    KEY_REVOKED = 2


cdef class _IssuerKey:
    cdef unsigned char public_key[32]
    cdef bytes public_key_bytes
    cdef int status
    cdef uint64_t retired_at_ms


cdef class KeyRing:
    cdef dict _keys
    cdef readonly unsigned long long version


cdef class _Cached:
    # A credential whose issuer signature and key status have been checked.
    cdef unsigned char issuer_signature[64]
    cdef unsigned char holder_key[32]
    cdef uint64_t issued_at_ms
    cdef uint64_t valid_from_ms
    cdef uint64_t valid_until_ms
    cdef object key_id
    cdef bytes credential_id
    cdef bytes holder_token
    cdef bytes account_token
    cdef object entitlements


cdef class VerifyResult:
    cdef readonly int reason
    cdef readonly int medium
    cdef readonly object key_id
    cdef readonly object credential_id
    cdef readonly object holder_token
    cdef readonly object account_token
    cdef readonly object entitlements
    cdef readonly object replay_key
    cdef readonly object presented_at_ms


cdef class Verifier:
    cdef KeyRing _ring
    cdef unsigned long long _ring_version
    cdef uint64_t _skew_ms
    cdef uint64_t _lifetime_ms
    cdef uint64_t _offline_max_ms
    cdef Py_ssize_t _cache_size
    cdef dict _cache
    cdef unsigned long long _hits
    cdef unsigned long long _misses
    cdef unsigned long long _signature_checks

    cdef VerifyResult _verify_envelope(self, int medium, const unsigned char* data, Py_ssize_t size,
                                       bytes device_id, uint64_t now_ms, uint64_t tap_time_ms)
    cdef _Cached _admit(self, const unsigned char* body, const unsigned char* issuer_signature,
                        bytes digest_key, int* reason)
    cdef int _check_times(self, _Cached cached, uint64_t presented_at_ms, uint64_t now_ms,
                          uint64_t tap_time_ms) noexcept
