"""Parse a rule-set document and report every problem in it, in Chinese and English.

msgspec stops at the first invalid field, so the structure is first walked
field by field with the schema's type information (``msgspec.inspect``); each
problem names its path (``$.products[3].price_fen``), the value found and what
is expected. When the structure is valid, the cross-references and business
checks run (unknown ids, duplicate ids, overlapping seasons, ...). Only then
is the document converted into :class:`~gateway.rules.schema.RuleSetDocument`.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import tomllib
from typing import Any, Iterable

import msgspec
import msgspec.inspect as mi
import yaml

from gateway.errors import GatewayError
from gateway.rules.schema import RuleSetDocument

FORMATS = ("toml", "yaml", "json")


class _NoAliasLoader(yaml.SafeLoader):
    """YAML SafeLoader that rejects aliases (``*name``).

    A rule set never needs them, and a few hundred bytes of nested aliases
    expand into billions of values for the field-by-field walk.
    """

    def compose_node(self, parent, index):  # type: ignore[no-untyped-def]
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(None, None, "YAML aliases (*name) are not allowed in rule sets",
                                              event.start_mark)
        return super().compose_node(parent, index)


class RuleProblem(msgspec.Struct, frozen=True, kw_only=True):
    """One invalid field: where it is, what was found and what is expected."""

    path: str
    value: str
    expected_en: str
    expected_zh: str

    @property
    def message_en(self) -> str:
        return f"{self.path}: found {self.value}, expected {self.expected_en}"

    @property
    def message_zh(self) -> str:
        return f"{self.path}：当前值 {self.value}，应为{self.expected_zh}"


class RuleSetError(GatewayError, ValueError):
    """A rule-set document is invalid; ``problems`` lists every problem found."""

    def __init__(self, problems: list[RuleProblem]) -> None:
        self.problems = problems
        count = len(problems)
        super().__init__(
            f"invalid rule set, {count} problem(s):\n" + "\n".join(p.message_en for p in problems),
            f"票价规则无效，共 {count} 处问题：\n" + "\n".join(p.message_zh for p in problems),
            "fix each field at the path shown and validate again / 请逐一修改所示路径上的字段后重新校验",
        )


_MISSING = object()


def show(value: Any) -> str:
    """Render a found value for a message, short and unambiguous."""
    if value is _MISSING:
        return "(missing / 缺失)"
    if isinstance(value, (dt.date, dt.time)):
        text = value.isoformat()
    else:
        try:
            text = json.dumps(value, ensure_ascii=False, default=str)
        except (TypeError, ValueError):
            text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# ---------------------------------------------------------------------------
# Descriptions of what a type expects.

_PATTERN_TEXT = {
    r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$": (
        "an id of 1 to 63 letters, digits, '_', '.' or '-', starting with a letter or digit",
        "由字母、数字、'_'、'.'、'-' 组成、以字母或数字开头、不超过 63 个字符的标识",
    ),
    r"^\d{2}:\d{2}-\d{2}:\d{2}$": (
        'a local time interval "HH:MM-HH:MM" such as "07:00-09:00"',
        '本地时间段 "HH:MM-HH:MM"，例如 "07:00-09:00"',
    ),
    r"^\d{2}-\d{2}/\d{2}-\d{2}$": (
        'a yearly range of month-days "MM-DD/MM-DD" such as "04-01/10-31"',
        '每年的月日区间 "MM-DD/MM-DD"，例如 "04-01/10-31"',
    ),
}


def describe(info: mi.Type) -> tuple[str, str]:
    """Return (English, Chinese) descriptions of what ``info`` accepts."""
    if isinstance(info, mi.IntType):
        low = info.ge
        if low is None and info.gt is not None:
            low = info.gt + 1
        high = info.le
        if high is None and info.lt is not None:
            high = info.lt - 1
        if low is not None and high is not None:
            return f"an integer from {low} to {high}", f"{low} 到 {high} 之间的整数"
        if low is not None:
            return f"an integer of at least {low}", f"不小于 {low} 的整数"
        return "an integer", "整数"
    if isinstance(info, mi.StrType):
        if info.pattern in _PATTERN_TEXT:
            return _PATTERN_TEXT[info.pattern]
        if info.min_length:
            return (f"non-empty text of at most {info.max_length} characters",
                    f"不超过 {info.max_length} 个字符的非空文本")
        return "text", "文本"
    if isinstance(info, mi.BoolType):
        return "true or false", "true 或 false"
    if isinstance(info, mi.LiteralType):
        values = ", ".join(f'"{v}"' for v in info.values)
        return f"one of {values}", f"以下之一：{values}"
    if isinstance(info, mi.DateType):
        return 'a date "YYYY-MM-DD"', '日期 "YYYY-MM-DD"'
    if isinstance(info, mi.UnionType):
        inner = [t for t in info.types if not isinstance(t, mi.NoneType)]
        en, zh = describe(inner[0])
        return f"{en} (optional)", f"{zh}（可省略）"
    if isinstance(info, mi.ListType):
        en, zh = describe(info.item_type)
        if info.min_length:
            return f"a non-empty list, each item {en}", f"非空列表，每项为{zh}"
        return f"a list, each item {en}", f"列表，每项为{zh}"
    if isinstance(info, mi.DictType):
        en, zh = describe(info.value_type)
        return f"a table from ids to {en}", f"以标识为键、值为{zh}的表"
    if isinstance(info, mi.StructType):
        names = ", ".join(f.encode_name for f in info.fields)
        return f"a table with the fields {names}", f"包含字段 {names} 的表"
    return "a valid value", "有效的值"


# ---------------------------------------------------------------------------
# Structural walk.

class _Collector:
    def __init__(self) -> None:
        self.problems: list[RuleProblem] = []

    def add(self, path: str, value: Any, expected_en: str, expected_zh: str) -> None:
        self.problems.append(RuleProblem(path=path, value=show(value), expected_en=expected_en,
                                         expected_zh=expected_zh))

    def add_type(self, path: str, value: Any, info: mi.Type) -> None:
        en, zh = describe(info)
        self.add(path, value, en, zh)


def _leaf_ok(value: Any, info: mi.Type) -> bool:
    if isinstance(info, mi.IntType):
        if not isinstance(value, int) or isinstance(value, bool):
            return False
        return not ((info.ge is not None and value < info.ge) or (info.le is not None and value > info.le)
                    or (info.gt is not None and value <= info.gt) or (info.lt is not None and value >= info.lt))
    if isinstance(info, mi.StrType):
        if not isinstance(value, str):
            return False
        if info.min_length is not None and len(value) < info.min_length:
            return False
        if info.max_length is not None and len(value) > info.max_length:
            return False
        return info.pattern is None or re.search(info.pattern, value) is not None
    if isinstance(info, mi.BoolType):
        return isinstance(value, bool)
    if isinstance(info, mi.LiteralType):
        return isinstance(value, (str, int)) and value in info.values
    if isinstance(info, mi.DateType):
        if isinstance(value, dt.datetime):
            return False
        if isinstance(value, dt.date):
            return True
        if isinstance(value, str):
            try:
                dt.date.fromisoformat(value)
            except ValueError:
                return False
            return len(value) == 10
        return False
    if isinstance(info, mi.NoneType):
        return value is None
    return True


def _walk(value: Any, info: mi.Type, path: str, out: _Collector) -> None:
    if isinstance(info, mi.UnionType):
        if value is None and any(isinstance(t, mi.NoneType) for t in info.types):
            return
        inner = [t for t in info.types if not isinstance(t, mi.NoneType)]
        _walk(value, inner[0], path, out)
        return
    if isinstance(info, mi.StructType):
        if not isinstance(value, dict):
            out.add_type(path, value, info)
            return
        known = {f.encode_name: f for f in info.fields}
        for key in value:
            if key not in known:
                out.add(f"{path}.{key}", value[key], f"no field named {key!r}; known fields: {', '.join(known)}",
                        f"无名为 {key!r} 的字段；可用字段：{', '.join(known)}")
        for name, field in known.items():
            if name in value:
                _walk(value[name], field.type, f"{path}.{name}", out)
            elif field.required:
                en, zh = describe(field.type)
                out.add(f"{path}.{name}", _MISSING, f"a value (required): {en}", f"必填：{zh}")
        return
    if isinstance(info, mi.ListType):
        if not isinstance(value, list):
            out.add_type(path, value, info)
            return
        if info.min_length and len(value) < info.min_length:
            out.add_type(path, value, info)
        for index, item in enumerate(value):
            _walk(item, info.item_type, f"{path}[{index}]", out)
        return
    if isinstance(info, mi.DictType):
        if not isinstance(value, dict):
            out.add_type(path, value, info)
            return
        for key, item in value.items():
            if not _leaf_ok(key, info.key_type):
                out.add_type(f"{path}.{key}", key, info.key_type)
            _walk(item, info.value_type, f"{path}.{key}", out)
        return
    if not _leaf_ok(value, info):
        out.add_type(path, value, info)


# ---------------------------------------------------------------------------
# Parsing.

def parse_text(text: str | bytes, fmt: str) -> Any:
    """Parse ``text`` as TOML, YAML or JSON into plain Python values."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown rule-set format {fmt!r}: use one of {', '.join(FORMATS)}")
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise RuleSetError([RuleProblem(path="$", value=f"byte {exc.start}",
                                            expected_en="text encoded as UTF-8",
                                            expected_zh="UTF-8 编码的文本")]) from exc
    try:
        if fmt == "toml":
            return tomllib.loads(text)
        if fmt == "yaml":
            return yaml.load(text, Loader=_NoAliasLoader)
        return msgspec.json.decode(text)
    # RecursionError: nesting deeper than the parser's stack (all three parsers recurse).
    # ValueError: tomllib's integers longer than Python's int conversion limit.
    except (tomllib.TOMLDecodeError, yaml.YAMLError, msgspec.DecodeError, RecursionError, ValueError) as exc:
        detail = " ".join(str(exc).split())
        raise RuleSetError([RuleProblem(path="$", value=show(detail[:200]),
                                        expected_en=f"a well-formed {fmt.upper()} document",
                                        expected_zh=f"格式正确的 {fmt.upper()} 文档")]) from exc


def format_for_path(name: str) -> str:
    """Guess the format from a file name: .toml, .yaml/.yml or .json."""
    lower = name.lower()
    if lower.endswith(".toml"):
        return "toml"
    if lower.endswith((".yaml", ".yml")):
        return "yaml"
    if lower.endswith(".json"):
        return "json"
    raise ValueError(f"cannot tell the format of {name!r}: name it .toml, .yaml, .yml or .json")


def check_document(raw: Any) -> list[RuleProblem]:
    """Return every problem of a parsed document; an empty list means it is valid."""
    out = _Collector()
    _walk(raw, mi.type_info(RuleSetDocument), "$", out)
    if out.problems:
        return out.problems
    doc = msgspec.convert(raw, RuleSetDocument)
    from gateway.rules.checks import check_semantics

    return check_semantics(doc)


def load_rule_set_document(text: str | bytes, fmt: str = "toml") -> RuleSetDocument:
    """Parse and validate a rule-set document; raise :class:`RuleSetError` listing every problem."""
    raw = parse_text(text, fmt)
    return document_from_builtins(raw)


def document_from_builtins(raw: Any) -> RuleSetDocument:
    """Validate already-parsed values (from TOML, YAML, JSON or the database) into a document."""
    problems = check_document(raw)
    if problems:
        raise RuleSetError(problems)
    try:
        return msgspec.convert(raw, RuleSetDocument)
    except msgspec.ValidationError as exc:  # pragma: no cover - the walk should have caught it
        raise RuleSetError([RuleProblem(path="$", value=show(str(exc)), expected_en="a valid rule set",
                                        expected_zh="有效的票价规则")]) from exc


def document_to_builtins(doc: RuleSetDocument) -> dict[str, Any]:
    """Return the document as JSON-ready values (dates as ISO strings)."""
    return msgspec.to_builtins(doc)


def document_to_json(doc: RuleSetDocument) -> bytes:
    return msgspec.json.format(msgspec.json.encode(doc), indent=2)


def first_problems(problems: Iterable[RuleProblem], count: int = 20) -> list[RuleProblem]:
    return list(problems)[:count]
