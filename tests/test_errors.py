"""The Chinese wording of msgspec's messages, checked against messages msgspec itself produces."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
import pytest

from gateway.errors import msgspec_message_zh


class Sample(msgspec.Struct, forbid_unknown_fields=True):
    count: int
    floor: Annotated[int, msgspec.Meta(ge=0)] = 0
    code: Annotated[str, msgspec.Meta(max_length=3)] = ""
    kind: Literal["board", "entry"] = "board"
    items: list[int] = []


@pytest.mark.parametrize(("document", "expected"), [
    (b'{"count": "3"}', "应为 int 类型，实际为 str（位置 `$.count`）"),
    (b"{}", "缺少必填字段 `count`"),
    (b'{"count": 1, "extra": 2}', "包含未知字段 `extra`"),
    (b'{"count": 1, "floor": -1}', "应为 int 类型且 >= 0（位置 `$.floor`）"),
    (b'{"count": 1, "code": "abcd"}', "应为长度 <= 3 的 str（位置 `$.code`）"),
    (b'{"count": 1, "kind": "fly"}', "取值 'fly' 不在允许范围内（位置 `$.kind`）"),
    (b'{"count": 1, "items": [1, "x"]}', "应为 int 类型，实际为 str（位置 `$.items[1]`）"),
    (b"[1]", "应为 object 类型，实际为 array"),
    (b'{"count": 1', "输入数据不完整"),
])
def test_msgspec_messages_in_chinese(document: bytes, expected: str) -> None:
    with pytest.raises((msgspec.ValidationError, msgspec.DecodeError)) as info:
        msgspec.json.decode(document, type=Sample)
    assert msgspec_message_zh(str(info.value)) == expected


@pytest.mark.parametrize(("document", "expected"), [
    (b'{"count": 1}x', "JSON 格式错误：末尾有多余的字符（字节位置 13）"),
    (b'{"count" 1}', "JSON 格式错误：此处应为 ':'（字节位置 9）"),
    (b'{"count": 1,}', "JSON 格式错误：对象末尾多了逗号（字节位置 12）"),
    (b'{"count": 1e999}', "数值超出范围（位置 `$.count`）"),
])
def test_malformed_json_in_chinese(document: bytes, expected: str) -> None:
    with pytest.raises(msgspec.DecodeError) as info:
        msgspec.json.decode(document, type=Sample)
    assert msgspec_message_zh(str(info.value)) == expected


@pytest.mark.parametrize(("document", "expected"), [
    (b"\xc1", "MessagePack 格式错误：无效的操作码 '\\xc1'（字节位置 0）"),
    (msgspec.msgpack.encode({"count": 1}) + b"\x00", "MessagePack 格式错误：末尾有多余的字符（字节位置 8）"),
    (msgspec.msgpack.encode({1: 2}), "应为 str 类型，实际为 int（位置 `$` 的键）"),
    (b"\x82\xa5count\x01\xa4code\xa1\xff", "字符串不是有效的 UTF-8 编码"),
])
def test_malformed_msgpack_in_chinese(document: bytes, expected: str) -> None:
    with pytest.raises(msgspec.DecodeError) as info:
        msgspec.msgpack.decode(document, type=Sample)
    assert msgspec_message_zh(str(info.value)) == expected


def test_unknown_message_kept() -> None:
    assert msgspec_message_zh("Something new - at `$.x`") == "Something new（位置 `$.x`）"
