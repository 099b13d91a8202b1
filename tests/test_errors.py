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


def test_malformed_json_in_chinese() -> None:
    with pytest.raises(msgspec.DecodeError) as info:
        msgspec.json.decode(b'{"count": 1}x', type=Sample)
    assert msgspec_message_zh(str(info.value)).startswith("JSON 格式错误（")


def test_unknown_message_kept() -> None:
    assert msgspec_message_zh("Something new - at `$.x`") == "Something new（位置 `$.x`）"
