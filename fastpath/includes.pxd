# C declarations used by the compiled fast path: the dynamic loader and the
# libsodium entry points, called through function pointers found with dlsym.
# The signatures are those of libsodium's public headers (sodium/crypto_sign.h,
# sodium/crypto_generichash.h, sodium/core.h, sodium/version.h,
# sodium/crypto_core_ed25519.h); no libsodium header is needed to build.

cdef extern from "<dlfcn.h>" nogil:
    void* dlopen(const char* filename, int flags)
    void* dlsym(void* handle, const char* symbol)
    char* dlerror()
    int RTLD_NOW
    int RTLD_LOCAL

ctypedef int (*sodium_init_fn)() noexcept nogil
ctypedef const char* (*sodium_version_string_fn)() noexcept nogil

# Returns 0 if sig is a valid signature of m[0:mlen] under pk, -1 otherwise.
ctypedef int (*crypto_sign_verify_detached_fn)(
    const unsigned char* sig, const unsigned char* m, unsigned long long mlen,
    const unsigned char* pk) noexcept nogil

# BLAKE2b; with key NULL and keylen 0 it is the unkeyed hash. Returns 0 on success.
ctypedef int (*crypto_generichash_fn)(
    unsigned char* out, size_t outlen, const unsigned char* data, unsigned long long inlen,
    const unsigned char* key, size_t keylen) noexcept nogil

# Returns 1 if p is a canonical encoding of a point in the main subgroup, not of small order.
ctypedef int (*crypto_core_ed25519_is_valid_point_fn)(const unsigned char* p) noexcept nogil
