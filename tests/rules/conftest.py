"""Fixtures for fare-rule tests: the example Yiyuan rule set, riders and local times."""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import os
import time
import tomllib
from typing import Any, Callable

import pytest

from gateway.rules import RuleBook, compile_rule_set, document_from_builtins, example_document_text
from gateway.timeutil import LOCAL_TZ, to_unix_ms


@dataclasses.dataclass(frozen=True)
class Entitlements:
    """Stand-in with the attributes of fastpath's Entitlements."""

    birth_date: dt.date | None = None
    disability_until: dt.date | None = None
    priority_until: dt.date | None = None
    student_until: dt.date | None = None
    priority_group: int = 0


ADULT = Entitlements(birth_date=dt.date(1990, 5, 17))


def local_ms(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> int:
    """Return Unix milliseconds of a local (Asia/Shanghai) wall-clock time."""
    return to_unix_ms(dt.datetime(year, month, day, hour, minute, second, tzinfo=LOCAL_TZ))


@pytest.fixture(scope="session")
def yiyuan_raw() -> dict[str, Any]:
    return tomllib.loads(example_document_text())


@pytest.fixture(scope="session")
def yiyuan(yiyuan_raw: dict[str, Any]) -> RuleBook:
    return compile_rule_set(document_from_builtins(yiyuan_raw), version=1)


@pytest.fixture
def variant(yiyuan_raw: dict[str, Any]) -> Callable[[Callable[[dict[str, Any]], None]], RuleBook]:
    """Compile a copy of the Yiyuan document after ``edit`` changed its plain values."""

    def build(edit: Callable[[dict[str, Any]], None]) -> RuleBook:
        raw = copy.deepcopy(yiyuan_raw)
        edit(raw)
        return compile_rule_set(document_from_builtins(raw), version=2)

    return build


@pytest.fixture
def utc_process():
    """Run the test with the process time zone set to UTC, then restore it."""
    saved = os.environ.get("TZ")
    os.environ["TZ"] = "UTC"
    time.tzset()
    try:
        yield
    finally:
        if saved is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = saved
        time.tzset()
