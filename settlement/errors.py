"""Exceptions raised by settlement for misuse and faults (business outcomes are statuses)."""

from __future__ import annotations

from gateway.errors import GatewayError


class SettlementError(GatewayError, RuntimeError):
    """A settlement step cannot run in the current state (day not closed, run order, ...)."""


class InputFileError(GatewayError, ValueError):
    """An imported file (account export, bank return) is invalid.

    ``problems`` lists every bad row as ``(line_no, message)`` so that the
    operator can fix the whole file in one pass.
    """

    def __init__(self, message_en: str, message_zh: str = "", hint: str = "",
                 problems: list[tuple[int, str]] | None = None) -> None:
        self.problems = problems or []
        super().__init__(message_en, message_zh, hint)

    def bilingual(self) -> str:
        text = super().bilingual()
        lines = [f"  第 {line} 行 / line {line}: {message}" for line, message in self.problems[:50]]
        if len(self.problems) > 50:
            lines.append(f"  … 另有 {len(self.problems) - 50} 处 / {len(self.problems) - 50} more")
        return "\n".join([text, *lines]) if lines else text


class SchemaValidationError(GatewayError, ValueError):
    """A bank file failed validation against its ISO 20022 XSD."""
