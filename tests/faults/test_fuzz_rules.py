"""Fuzzing the rule-set document loader: any input ends in a document or a RuleSetError, never a crash.

Three kinds of input: arbitrary text in each format; the shipped Yiyuan rule
set with one value replaced, removed or added somewhere in its tree; and a
few hostile shapes (deep nesting, a YAML alias bomb, huge numbers). A
document that loads must also compile, or fail to compile with RuleSetError
alone, because the admin API publishes what validates.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.rules import RuleSetError, compile_rule_set, example_document_text, load_rule_set_document
from tests.faults.conftest import examples

EXAMPLE = tomllib.loads(example_document_text())
FORMATS = ("toml", "yaml", "json")


def load_and_compile(text: str | bytes, fmt: str) -> None:
    """Load and compile; let only RuleSetError through, with problems that say where and what."""
    try:
        doc = load_rule_set_document(text, fmt)
        compile_rule_set(doc, version=1, effective_from_ms=0)
    except RuleSetError as error:
        assert error.problems, "a RuleSetError must list at least one problem"
        for problem in error.problems:
            assert problem.path.startswith("$"), problem
            assert problem.message_en and problem.message_zh, problem


def test_example_document_loads() -> None:
    # Mutations below start from this document, so it must be valid as shipped.
    compile_rule_set(load_rule_set_document(example_document_text(), "toml"))


@settings(max_examples=examples(300), deadline=None)
@given(st.sampled_from(FORMATS), st.one_of(st.text(max_size=400), st.binary(max_size=400)))
def test_arbitrary_text_only_raises_rule_set_error(fmt: str, text: str | bytes) -> None:
    load_and_compile(text, fmt)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12)


def paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path to a value in a tree of dicts and lists."""
    found = [prefix]
    if isinstance(node, dict):
        for key, value in node.items():
            found += paths(value, prefix + (key,))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += paths(value, prefix + (index,))
    return found


EXAMPLE_PATHS = paths(EXAMPLE)[1:]


def copy_tree(node: Any) -> Any:
    return json.loads(json.dumps(node, default=str))


@st.composite
def mutated_documents(draw) -> Any:
    doc = copy_tree(EXAMPLE)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(EXAMPLE_PATHS))
        parent = doc
        try:
            for step in path[:-1]:
                parent = parent[step]
            last = path[-1]
            action = draw(st.sampled_from(["replace", "replace", "delete", "add"]))
            if action == "replace":
                parent[last] = draw(json_values)
            elif action == "delete":
                del parent[last]
            elif isinstance(parent, dict):
                parent[draw(st.text(min_size=1, max_size=10))] = draw(json_values)
            elif isinstance(parent, list):
                parent.append(draw(json_values))
        except (KeyError, IndexError, TypeError):
            # An earlier mutation removed or replaced this path.
            continue
    return doc


@settings(max_examples=examples(250), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_documents())
def test_mutated_example_only_raises_rule_set_error(doc: Any) -> None:
    load_and_compile(json.dumps(doc, ensure_ascii=False), "json")


@settings(max_examples=examples(150), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_example_text_only_raises_rule_set_error(data: st.DataObject) -> None:
    text = example_document_text()
    start = data.draw(st.integers(0, len(text) - 1))
    end = start + data.draw(st.integers(0, 30))
    load_and_compile(text[:start] + data.draw(st.text(max_size=30)) + text[end:], "toml")


HOSTILE = [
    ("json", "[" * 100_000 + "]" * 100_000),
    ("json", '{"a":' * 50_000 + "1" + "}" * 50_000),
    ("yaml", "- " * 5000 + "x"),
    ("yaml", "!!python/object/apply:os.system ['true']"),
    ("toml", "x = " + "9" * 5000),
    ("json", '{"version": 1e400}'),
    ("toml", "a = [" + "[" * 5000 + "]" * 5000 + "]"),
]


@pytest.mark.timeout(30)
@pytest.mark.parametrize("fmt,text", HOSTILE, ids=[f"{fmt}-{i}" for i, (fmt, _) in enumerate(HOSTILE)])
def test_hostile_document_only_raises_rule_set_error(fmt: str, text: str) -> None:
    with pytest.raises(RuleSetError):
        load_rule_set_document(text, fmt)


# Nine levels of nine aliases each: a 400-byte text whose expanded tree has 9**9 leaves.
ALIAS_BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(8))


def test_yaml_alias_bomb_rejected_quickly() -> None:
    # Run in a child process so that the hang is bounded and killed, not left running in the suite.
    script = ("import sys\nfrom gateway.rules import RuleSetError, load_rule_set_document\n"
              "try:\n    load_rule_set_document(sys.stdin.read(), 'yaml')\n"
              "except RuleSetError:\n    sys.exit(0)\nsys.exit(1)\n")
    try:
        finished = subprocess.run([sys.executable, "-c", script], input=ALIAS_BOMB, text=True,
                                  capture_output=True, timeout=5)
    except subprocess.TimeoutExpired:
        pytest.fail("loading a 400-byte YAML alias bomb took more than 5 s")
    assert finished.returncode == 0, finished.stderr[-2000:]
