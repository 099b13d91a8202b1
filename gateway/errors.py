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
    (re.compile(r"^Invalid value (?P<value>.+)$"), "取值 {value} 无效"),
    (re.compile(r"^Number out of range$"), "数值超出范围"),
    (re.compile(r"^Invalid UTF-8 encoded string$"), "字符串不是有效的 UTF-8 编码"),
    (re.compile(r"^Input data was truncated$"), "输入数据不完整"),
]
# "JSON is malformed: DETAIL (byte N)" and its MessagePack twin; the details
# are the fixed strings of msgspec 0.23's decoders. An unknown detail is kept.
_MALFORMED = re.compile(r"^(?P<format>JSON is|MessagePack data is) malformed: (?P<detail>.+) \(byte (?P<byte>\d+)\)$")
_MALFORMED_FORMAT_ZH = {"JSON is": "JSON", "MessagePack data is": "MessagePack"}
_MALFORMED_DETAIL_ZH = {
    "trailing characters": "末尾有多余的字符",
    "invalid character": "无效的字符",
    "expected '\"'": "此处应为 '\"'",
    "expected ',' or ']'": "此处应为 ',' 或 ']'",
    "expected ',' or '}'": "此处应为 ',' 或 '}'",
    "expected ':'": "此处应为 ':'",
    "invalid number": "无效的数字",
    "invalid escape character in string": "字符串中有无效的转义字符",
    "invalid escaped character": "无效的转义字符",
    "invalid character in unicode escape": "Unicode 转义中有无效的字符",
    "invalid utf-16 surrogate pair": "无效的 UTF-16 代理对",
    "unexpected end of escaped utf-16 surrogate pair": "UTF-16 代理对的转义不完整",
    "unexpected end of hex escape": "十六进制转义不完整",
    "trailing comma in array": "数组末尾多了逗号",
    "trailing comma in object": "对象末尾多了逗号",
    "map keys must be hashable": "映射的键必须可哈希",
}
_INVALID_OPCODE = re.compile(r"^invalid opcode (?P<opcode>'.+')$")
_AT_PATH = re.compile(r"^(?P<text>.*) - at `(?P<path>[^`]+)`$", re.DOTALL)
# A wrong map key, e.g. an integer key in a MessagePack map: "... - at `key` in `$.x`".
_AT_KEY = re.compile(r"^(?P<text>.*) - at `key` in `(?P<path>[^`]+)`$", re.DOTALL)


def msgspec_message_zh(message: str) -> str:
    """Return msgspec's English validation or decode ``message`` in Chinese, with its JSON path kept."""
    malformed = _MALFORMED.match(message)
    if malformed:
        return _malformed_zh(malformed)

    location = None
    at_key = _AT_KEY.match(message)
    at = _AT_PATH.match(message)
    if at_key:
        text, location = at_key.group("text"), f"`{at_key.group('path')}` 的键"
    elif at:
        text, location = at.group("text"), f"`{at.group('path')}`"
    else:
        text = message
    text = translate_message(text, _MSGSPEC_ZH) or text
    return f"{text}（位置 {location}）" if location else text


def translate_message(message: str, table: list[tuple[re.Pattern[str], str]]) -> str | None:
    """Fill the template of the first pattern in ``table`` that matches ``message``; None if none matches."""
    for pattern, template in table:
        match = pattern.match(message)
        if match:
            return template.format(**match.groupdict())
    return None


def _malformed_zh(match: re.Match[str]) -> str:
    detail = match.group("detail")
    opcode = _INVALID_OPCODE.match(detail)
    if opcode:
        detail_zh = f"无效的操作码 {opcode.group('opcode')}"
    else:
        detail_zh = _MALFORMED_DETAIL_ZH.get(detail, detail)
    return f"{_MALFORMED_FORMAT_ZH[match.group('format')]} 格式错误：{detail_zh}（字节位置 {match.group('byte')}）"
