# cython: language_level=3
"""libsodium bound through the dynamic loader, for calls from Cython without Python in between.

PyNaCl's wheel ships libsodium as ``nacl/_sodium.abi3.so`` and exports its
symbols, but its cffi ``lib`` object does not offer
``crypto_sign_verify_detached``. So this module opens a library with
``dlopen`` and takes the function pointers with ``dlsym`` once, at import.
The library tried first is ``TAPGATE_LIBSODIUM`` if set, then PyNaCl's (the
one the pure-Python twin uses, so both give identical verdicts), then a
system libsodium. ``pip install`` therefore needs no system package.
"""

import os

from fastpath.errors import BackendError
from fastpath.includes cimport (
    RTLD_LOCAL, RTLD_NOW, crypto_core_ed25519_is_valid_point_fn, crypto_generichash_fn,
    crypto_sign_verify_detached_fn, dlerror, dlopen, dlsym, sodium_init_fn, sodium_version_string_fn,
)

LIBRARY_ENV = "TAPGATE_LIBSODIUM"

cdef crypto_sign_verify_detached_fn _sign_verify_detached = NULL
cdef crypto_generichash_fn _generichash = NULL
cdef crypto_core_ed25519_is_valid_point_fn _is_valid_point = NULL
cdef sodium_version_string_fn _version_string = NULL

library_path = None


cdef int ed25519_verify(const unsigned char* sig, const unsigned char* m, unsigned long long mlen,
                        const unsigned char* pk) noexcept nogil:
    return _sign_verify_detached(sig, m, mlen, pk)


cdef void blake2b_256(unsigned char* out, const unsigned char* data, unsigned long long size) noexcept nogil:
    _generichash(out, 32, data, size, NULL, 0)


cdef int ed25519_is_valid_point(const unsigned char* p) noexcept nogil:
    return _is_valid_point(p)


def _candidates():
    """Yield the library paths to try, in order of preference."""
    override = os.environ.get(LIBRARY_ENV, "")
    if override:
        yield override
        return
    try:
        import nacl._sodium
    except ImportError:
        pass
    else:
        yield nacl._sodium.__file__
    import ctypes.util

    system = ctypes.util.find_library("sodium")
    if system:
        yield system


cdef void* _symbol(void* handle, bytes name, list missing):
    cdef void* address = dlsym(handle, name)
    if address == NULL:
        missing.append(name.decode())
    return address


cdef _load():
    global _sign_verify_detached, _generichash, _is_valid_point, _version_string, library_path
    cdef void* handle
    cdef sodium_init_fn init
    tried = []
    for path in _candidates():
        handle = dlopen(os.fsencode(path), RTLD_NOW | RTLD_LOCAL)
        if handle == NULL:
            error = dlerror()
            tried.append(f"{path}: {error.decode(errors='replace') if error != NULL else 'dlopen failed'}")
            continue
        missing = []
        init = <sodium_init_fn>_symbol(handle, b"sodium_init", missing)
        verify = <crypto_sign_verify_detached_fn>_symbol(handle, b"crypto_sign_verify_detached", missing)
        generichash = <crypto_generichash_fn>_symbol(handle, b"crypto_generichash", missing)
        valid_point = <crypto_core_ed25519_is_valid_point_fn>_symbol(
            handle, b"crypto_core_ed25519_is_valid_point", missing)
        if missing:
            tried.append(f"{path}: missing symbols {', '.join(missing)}")
            continue
        # sodium_init returns 0 on first use, 1 if already initialised, -1 on failure.
        if init() < 0:
            tried.append(f"{path}: sodium_init failed")
            continue
        _sign_verify_detached = verify
        _generichash = generichash
        _is_valid_point = valid_point
        # PyNaCl's bundled build does not export sodium_version_string, so the version is optional.
        _version_string = <sodium_version_string_fn>dlsym(handle, b"sodium_version_string")
        library_path = path
        return
    raise BackendError(
        "cannot load libsodium for the compiled fast path (" + ("; ".join(tried) or "no library found") + "). "
        f"Install PyNaCl (pip install PyNaCl) or point {LIBRARY_ENV} at libsodium.so",
        "无法为快速通道加载 libsodium，请安装 PyNaCl 或设置 " + LIBRARY_ENV)


_load()


def library_version():
    """Return the version string of the libsodium in use, e.g. "1.0.18", or None if it does not export one."""
    if _version_string == NULL:
        return None
    return _version_string().decode()


def verify_signature(bytes public_key not None, bytes message not None, bytes signature not None) -> bool:
    """Check one Ed25519 signature with libsodium's strict rules; a wrong length is simply invalid."""
    if len(public_key) != 32 or len(signature) != 64:
        return False
    return ed25519_verify(signature, message, len(message), public_key) == 0


def blake2b(bytes data not None) -> bytes:
    """Return the unkeyed 32-byte BLAKE2b digest of ``data``."""
    cdef unsigned char out[32]
    blake2b_256(out, data, len(data))
    return out[:32]


def is_valid_point(bytes point not None) -> bool:
    return len(point) == 32 and ed25519_is_valid_point(point) == 1
