"""Verification of credentials, dynamic QR codes and card taps.

Two implementations with the same classes and verdicts:

- ``compiled`` (default): ``fastpath._verify``, Cython calling libsodium
  through C function pointers;
- ``python``: ``fastpath._verify_py``, the pure-Python twin, using PyNaCl.

``TAPGATE_FASTPATH`` selects one when this package is first imported.
If the compiled module is missing, the import fails with the command that
builds it. Layout and checks: docs/credential-format.md.
"""

from __future__ import annotations

import importlib
import os

from fastpath.entitlements import Entitlements, PriorityGroup
from fastpath.errors import BackendError, FastpathError, KeyFileError
from fastpath.reasons import Medium, Reason

ENV = "TAPGATE_FASTPATH"
MODULES = {"compiled": "fastpath._verify", "python": "fastpath._verify_py"}


def _load_backend():
    choice = os.environ.get(ENV, "compiled").strip().lower() or "compiled"
    if choice not in MODULES:
        raise BackendError(f"{ENV}={choice!r} is not a fast path implementation: use 'compiled' or 'python'",
                           f"{ENV}={choice!r} 不是有效的快速通道实现，请使用 'compiled' 或 'python'")
    try:
        return importlib.import_module(MODULES[choice])
    except ImportError as exc:
        if choice != "compiled" or isinstance(exc, BackendError):
            raise
        raise BackendError(
            f"the compiled fast path (fastpath._verify) is not built: {exc}. Build it with "
            "`pip install -e . --no-build-isolation` (needs a C compiler and Cython), "
            f"or run the pure-Python twin with {ENV}=python",
            f"快速通道编译模块未构建：{exc}。请运行 `pip install -e . --no-build-isolation` 构建，"
            f"或设置 {ENV}=python 使用纯 Python 实现") from exc


backend = _load_backend()
IMPLEMENTATION: str = backend.IMPLEMENTATION
KeyRing = backend.KeyRing
Verifier = backend.Verifier
VerifyResult = backend.VerifyResult
verify_signature = backend.verify_signature

__all__ = [
    "BackendError", "Entitlements", "FastpathError", "IMPLEMENTATION", "KeyFileError", "KeyRing", "Medium",
    "PriorityGroup", "Reason", "Verifier", "VerifyResult", "backend", "verify_signature",
]
