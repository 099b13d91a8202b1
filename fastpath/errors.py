"""Exceptions of the fast path and its tooling, for misuse and faults only.

A code or card response that fails a check is not an exception: the
verifier returns a result with a reason code. Messages that an operator may
read carry Simplified Chinese beside the English.
"""

from __future__ import annotations


class FastpathError(Exception):
    """Root of the fast path's own exceptions; ``message_en`` and ``message_zh`` carry the same message."""

    def __init__(self, message_en: str, message_zh: str = "") -> None:
        self.message_en = message_en
        self.message_zh = message_zh
        super().__init__(f"{message_zh} / {message_en}" if message_zh else message_en)


class KeyFileError(FastpathError, ValueError):
    """An issuer key file is missing, unreadable, too widely readable or not a key file."""


class BackendError(FastpathError, ImportError):
    """The compiled fast path cannot be used: not built, or libsodium could not be loaded."""
