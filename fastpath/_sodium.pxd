# Entry points of libsodium for the other compiled modules, bound at import
# time of fastpath._sodium. Each is a plain C call: no Python objects, no GIL.

# 0 if sig (64 bytes) is a valid Ed25519 signature of m under pk (32 bytes),
# with libsodium's strict rules; -1 otherwise.
cdef int ed25519_verify(const unsigned char* sig, const unsigned char* m, unsigned long long mlen,
                        const unsigned char* pk) noexcept nogil

# Unkeyed BLAKE2b with a 32-byte output into out.
cdef void blake2b_256(unsigned char* out, const unsigned char* data, unsigned long long size) noexcept nogil

# 1 if p (32 bytes) is a canonical point of the main subgroup, not of small order.
cdef int ed25519_is_valid_point(const unsigned char* p) noexcept nogil
