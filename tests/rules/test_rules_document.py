"""Rule-set documents: parsing in three formats and one invalid document per kind of mistake."""

from __future__ import annotations

import copy
import json
from typing import Any, Callable

import msgspec
import pytest
import yaml

from gateway.rules import RuleSetError, compile_rule_set, document_from_builtins, load_rule_set_document
from gateway.rules.validate import document_to_builtins


def test_example_is_valid_and_illustrative(yiyuan_raw: dict[str, Any]) -> None:
    doc = document_from_builtins(yiyuan_raw)
    assert doc.rule_set.illustrative is True
    assert len(doc.sites) == 5


def test_same_document_in_yaml_and_json(yiyuan_raw: dict[str, Any]) -> None:
    plain = document_to_builtins(document_from_builtins(yiyuan_raw))
    from_yaml = load_rule_set_document(yaml.safe_dump(plain, allow_unicode=True), fmt="yaml")
    from_json = load_rule_set_document(json.dumps(plain, ensure_ascii=False).encode(), fmt="json")
    assert from_yaml == from_json == document_from_builtins(yiyuan_raw)


def test_missing_optional_sections_are_fine() -> None:
    text = """
[rule_set]
rule_set_id = "tiny"
name_zh = "最小规则"
name_en = "Tiny"
[[operators]]
operator_id = "bus"
kind = "bus"
name_zh = "公交"
name_en = "Bus"
[[rider_categories]]
category_id = "adult"
kind = "adult"
name_zh = "成人"
name_en = "Adult"
[[products]]
product_id = "single"
kind = "single_ride"
price_fen = 100
name_zh = "单程"
name_en = "Single"
"""
    book = compile_rule_set(load_rule_set_document(text), version=1)
    assert book.routes == {}


def _problems(raw: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    with pytest.raises(RuleSetError) as caught:
        document_from_builtins(raw)
    return [(p.path, p.value, p.expected_en, p.expected_zh) for p in caught.value.problems]


def _set(path: list[Any], value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(raw: dict[str, Any]) -> None:
        target = raw
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return edit


def _delete(path: list[Any]) -> Callable[[dict[str, Any]], None]:
    def edit(raw: dict[str, Any]) -> None:
        target = raw
        for key in path[:-1]:
            target = target[key]
        del target[path[-1]]

    return edit


MISTAKES = [
    # (kind of mistake, edit, path, value shown, expected English contains, expected Chinese contains)
    ("wrong type", _set(["products", 3, "price_fen"], "50.00"), "$.products[3].price_fen", '"50.00"',
     "an integer from 0 to 10000000", "0 到 10000000 之间的整数"),
    ("negative money", _set(["products", 0, "price_fen"], -100), "$.products[0].price_fen", "-100",
     "an integer from 0 to 10000000", "整数"),
    ("float money", _set(["area_fares", 1, "price_fen"], 4.5), "$.area_fares[1].price_fen", "4.5",
     "an integer", "整数"),
    ("missing required field", _delete(["operators", 0, "kind"]), "$.operators[0].kind", "(missing / 缺失)",
     'a value (required): one of "bus", "scenic", "venue"', "必填"),
    ("unknown field", _set(["networks", 0, "colour"], "red"), "$.networks[0].colour", '"red"',
     "no field named 'colour'", "无名为 'colour' 的字段"),
    ("value not in the list", _set(["rider_categories", 1, "kind"], "senior"), "$.rider_categories[1].kind",
     '"senior"', 'one of "adult", "child", "disabled", "elderly", "priority", "student"', "以下之一"),
    ("invalid id", _set(["products", 0, "product_id"], "城区单程"), "$.products[0].product_id", '"城区单程"',
     "an id of 1 to 63 letters", "标识"),
    ("percent out of range", _set(["rider_categories", 2, "fare_percent"], 150),
     "$.rider_categories[2].fare_percent", "150", "an integer from 0 to 100", "0 到 100 之间的整数"),
    ("not a list", _set(["networks", 0, "routes"], "1,2,3"), "$.networks[0].routes", '"1,2,3"',
     "a list", "列表"),
    ("empty required list", _set(["timeframes", 0, "intervals"], []), "$.timeframes[0].intervals", "[]",
     "a non-empty list", "非空列表"),
    ("bad date", _set(["calendar", "holidays"], ["2026-02-30"]), "$.calendar.holidays[0]", '"2026-02-30"',
     'a date "YYYY-MM-DD"', "日期"),
    ("unknown reference", _set(["leg_rules", 0, "network_id"], "metro"), "$.leg_rules[0].network_id",
     '"metro"', "one of the ids defined in $.networks: county, urban", "$.networks 中定义的标识之一"),
    ("duplicate id", _set(["products", 1, "product_id"], "urban-single"), "$.products[1].product_id",
     '"urban-single"', "an id not used by another item of products", "未被其他项使用"),
    ("impossible time", _set(["timeframes", 0, "intervals"], ["07:00-25:00"]), "$.timeframes[0].intervals[0]",
     '"07:00-25:00"', "two different times from 00:00 to 24:00", "00:00 到 24:00"),
    ("impossible month-day", _set(["seasons", 0, "periods"], ["02-30/10-31"]), "$.seasons[0].periods[0]",
     '"02-30/10-31"', "real month-days", "真实存在的月日"),
    ("overlapping seasons", _set(["seasons", 1, "periods"], ["10-01/03-31"]), "$.seasons[1].periods[0]",
     '"10-01/03-31"', "10-01 is already in 'peak'", "10-01 已属于 'peak'"),
    ("no adult category", _set(["rider_categories", 0, "kind"], "student"), "$.rider_categories",
     '["adult", "senior-65"', 'exactly one category of kind "adult"', "恰好一个"),
    ("elderly without age", _delete(["rider_categories", 1, "min_age"]), "$.rider_categories[1].min_age", "null",
     "the age from which the elderly category applies", "老年人类别的起始年龄"),
    ("seasons not covering the year", _set(["products", 2, "season_prices"], {"peak": 6000}),
     "$.products[2].price_fen", "null", "a price for days outside the priced seasons", "未覆盖全年"),
    ("route in two networks", _set(["networks", 1, "routes"], ["K101", "1"]), "$.networks[1].routes[1]", '"1"',
     "a route in one network only (already in network 'urban')", "只属于一个线网"),
    ("holiday also a workday", _set(["calendar", "workdays"], ["2026-10-01"]), "$.calendar.workdays[0]",
     "2026-10-01", "not also listed in holidays", "未同时列入 holidays"),
    ("transfer discount without amount", _set(["transfer_rules", 1, "amount_fen"], 0),
     "$.transfer_rules[1].amount_fen", "0", 'an amount above 0 for mode "discount"', "须大于 0"),
]


@pytest.mark.parametrize("edit, path, value, expected_en, expected_zh", [m[1:] for m in MISTAKES],
                         ids=[m[0] for m in MISTAKES])
def test_invalid_document_reports_path_value_expectation(yiyuan_raw: dict[str, Any], edit, path: str,
                                                         value: str, expected_en: str,
                                                         expected_zh: str) -> None:
    raw = copy.deepcopy(yiyuan_raw)
    edit(raw)
    problems = _problems(raw)
    matching = [p for p in problems if p[0] == path]
    assert matching, problems
    found_path, found_value, found_en, found_zh = matching[0]
    assert found_value.startswith(value)
    assert expected_en in found_en
    assert expected_zh in found_zh


def test_every_structural_problem_reported_at_once(yiyuan_raw: dict[str, Any]) -> None:
    raw = copy.deepcopy(yiyuan_raw)
    raw["products"][3]["price_fen"] = "12"
    raw["products"][0]["price_fen"] = -5
    del raw["operators"][0]["kind"]
    raw["networks"][0]["colour"] = "red"
    paths = [p[0] for p in _problems(raw)]
    assert sorted(paths) == sorted(["$.products[3].price_fen", "$.products[0].price_fen", "$.operators[0].kind",
                                    "$.networks[0].colour"])


def test_error_message_is_bilingual(yiyuan_raw: dict[str, Any]) -> None:
    raw = copy.deepcopy(yiyuan_raw)
    raw["products"][0]["price_fen"] = "1 yuan"
    with pytest.raises(RuleSetError, match=r"\$\.products\[0\]\.price_fen") as caught:
        document_from_builtins(raw)
    text = str(caught.value)
    assert "票价规则无效，共 1 处问题" in text
    assert 'found "1 yuan", expected an integer from 0 to 10000000' in text
    assert '当前值 "1 yuan"，应为0 到 10000000 之间的整数' in text


@pytest.mark.parametrize("fmt, text, expected", [
    ("toml", "rule_set = [", "a well-formed TOML document"),
    ("yaml", "rule_set: [", "a well-formed YAML document"),
    ("json", "{", "a well-formed JSON document"),
])
def test_malformed_text(fmt: str, text: str, expected: str) -> None:
    with pytest.raises(RuleSetError) as caught:
        load_rule_set_document(text, fmt=fmt)
    assert caught.value.problems[0].path == "$"
    assert caught.value.problems[0].expected_en == expected


def test_top_level_not_a_table() -> None:
    with pytest.raises(RuleSetError) as caught:
        load_rule_set_document("- 1\n- 2\n", fmt="yaml")
    assert caught.value.problems[0].expected_en.startswith("a table with the fields rule_set, operators")


def test_unknown_format_is_misuse() -> None:
    with pytest.raises(ValueError, match="unknown rule-set format 'xml'"):
        load_rule_set_document("<a/>", fmt="xml")


def test_compile_rechecks_documents_built_in_code(yiyuan_raw: dict[str, Any]) -> None:
    doc = document_from_builtins(yiyuan_raw)
    broken = msgspec.structs.replace(doc, leg_rules=[msgspec.structs.replace(doc.leg_rules[0], product_id="none")])
    with pytest.raises(RuleSetError, match=r"\$\.leg_rules\[0\]\.product_id"):
        compile_rule_set(broken)


def test_yaml_aliases_rejected() -> None:
    text = "rule_set: &info {rule_set_id: x, name_zh: x, name_en: x}\ncopy: *info\n"
    with pytest.raises(RuleSetError) as caught:
        load_rule_set_document(text, fmt="yaml")
    assert "YAML aliases (*name) are not allowed" in caught.value.problems[0].value
