"""Exception tree of the gateway and settlement.

Business outcomes (a tap rejected for a named reason) are result codes, never
exceptions. The classes below are for misuse and faults. Each also inherits
the builtin it resembles, so callers may catch either. Messages that an
operator reads carry Simplified Chinese and English side by side.
"""

from __future__ import annotations


class GatewayError(Exception):
    """Root of the package's exceptions.

    ``message_en`` and ``message_zh`` say the same thing. ``hint`` says what
    to do next, in both languages, and may be empty.
    """

    def __init__(self, message_en: str, message_zh: str = "", hint: str = "") -> None:
        self.message_en = message_en
        self.message_zh = message_zh
        self.hint = hint
        super().__init__(self.bilingual())

    def bilingual(self) -> str:
        text = f"{self.message_zh} / {self.message_en}" if self.message_zh else self.message_en
        if self.hint:
            text = f"{text} ({self.hint})"
        return text


class ConfigError(GatewayError, ValueError):
    """A configuration file or environment override is invalid."""


class DatabaseError(GatewayError, RuntimeError):
    """PostgreSQL could not be reached, started or used."""


class EmbeddedPostgresError(DatabaseError):
    """The embedded PostgreSQL failed to initialise, start or stop."""


class MigrationError(DatabaseError):
    """A schema migration failed, or the schema is not at the expected version."""
