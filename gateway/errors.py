"""Exception tree of the gateway and settlement.

Business outcomes (a tap rejected for a named reason) are result codes, never
exceptions. The classes below are for misuse and faults. Each also inherits
the builtin it resembles, so callers may catch either. Messages that an
operator reads carry Simplified Chinese and English side by side.
"""

from __future__ import annotations

import re


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


# msgspec's validation and decode messages, for the Chinese half of a
# bilingual message. The patterns follow the wording of msgspec 0.23; a
# message that matches none is kept in English.
_MSGSPEC_ZH = [
    (re.compile(r"^Expected `(?P<want>[^`]+)`, got `(?P<got>[^`]+)`$"), "应为 {want} 类型，实际为 {got}"),
    (re.compile(r"^Expected `(?P<want>[^`]+)` (?P<op>>=|<=|>|<) (?P<n>\S+)$"), "应为 {want} 类型且 {op} {n}"),
    (re.compile(r"^Expected `(?P<want>[^`]+)` of length (?P<op>>=|<=) (?P<n>\d+)$"), "应为长度 {op} {n} 的 {want}"),
    (re.compile(r"^Expected `(?P<want>[^`]+)` matching regex (?P<regex>.+)$"), "应为符合正则 {regex} 的 {want}"),
    (re.compile(r"^Object missing required field `(?P<name>[^`]+)`$"), "缺少必填字段 `{name}`"),
    (re.compile(r"^Object contains unknown field `(?P<name>[^`]+)`$"), "包含未知字段 `{name}`"),
    (re.compile(r"^Invalid enum value (?P<value>.+)$"), "取值 {value} 不在允许范围内"),
    (re.compile(r"^JSON is malformed: (?P<detail>.+)$"), "JSON 格式错误（{detail}）"),
    (re.compile(r"^MessagePack data is malformed: (?P<detail>.+)$"), "MessagePack 格式错误（{detail}）"),
    (re.compile(r"^Input data was truncated$"), "输入数据不完整"),
]
_AT_PATH = re.compile(r"^(?P<text>.*) - at `(?P<path>[^`]+)`$", re.DOTALL)


def msgspec_message_zh(message: str) -> str:
    """Return msgspec's English validation or decode ``message`` in Chinese, with its JSON path kept."""
    at = _AT_PATH.match(message)
    text, path = (at.group("text"), at.group("path")) if at else (message, None)
    for pattern, template in _MSGSPEC_ZH:
        match = pattern.match(text)
        if match:
            text = template.format(**match.groupdict())
            break
    return f"{text}（位置 `{path}`）" if path else text
