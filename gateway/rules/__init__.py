"""Fare and discount rules: documents, validation, compilation and pricing.

Pricing is pure Python with no database access::

    doc = load_rule_set_document(text, fmt="toml")
    book = compile_rule_set(doc, version=7, effective_from_ms=...)
    price, new_state = book.price(PricingRequest(...), state)

Versions live in PostgreSQL (:mod:`gateway.rules.store`); ``load_books``
returns every published version for ``RuleBooks.for_time``.
"""

from gateway.rules.book import RuleBook
from gateway.rules.books import RuleBooks
from gateway.rules.compile import compile_rule_set
from gateway.rules.schema import RuleSetDocument
from gateway.rules.state import (EMPTY_STATE, MEDIUM_CARD, MEDIUM_QR, TAP_KIND_CODES, TAP_KINDS, Price,
                                 PricingRequest, RiderState)
from gateway.rules.validate import (RuleProblem, RuleSetError, document_from_builtins, format_for_path,
                                    load_rule_set_document)


def example_document_text(name: str = "yiyuan") -> str:
    """Return the text of a rule set shipped in ``gateway/rules/examples/`` (TOML)."""
    import importlib.resources

    return (importlib.resources.files("gateway.rules") / "examples" / f"{name}.toml").read_text(encoding="utf-8")


__all__ = [
    "EMPTY_STATE", "MEDIUM_CARD", "MEDIUM_QR", "TAP_KINDS", "TAP_KIND_CODES", "Price", "PricingRequest",
    "RiderState", "RuleBook", "RuleBooks", "RuleProblem", "RuleSetDocument", "RuleSetError", "compile_rule_set",
    "document_from_builtins", "example_document_text", "format_for_path", "load_rule_set_document",
]
