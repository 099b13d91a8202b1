"""Field-level differences between two rule-set documents, for review and the audit trail.

Lists whose items carry an id (products, networks, ...) are matched by that
id, so inserting a product shows one added item instead of every later item
changed. Paths read like ``$.products[urban-single].price_fen``; lists without
ids (leg rules, area fares, site rules) are compared by index.
"""

from __future__ import annotations

from typing import Any

import msgspec

_ID_FIELDS = {
    "operators": "operator_id", "networks": "network_id", "areas": "area_id", "sites": "site_id",
    "timeframes": "timeframe_id", "seasons": "season_id", "rider_categories": "category_id",
    "products": "product_id", "transfer_rules": "transfer_id", "caps": "cap_id",
}


class Change(msgspec.Struct, frozen=True, kw_only=True):
    """One difference: ``op`` is "added", "removed" or "changed"."""

    path: str
    op: str
    old: Any = None
    new: Any = None

    def describe(self) -> str:
        if self.op == "added":
            return f"+ {self.path} = {_short(self.new)}"
        if self.op == "removed":
            return f"- {self.path} (was {_short(self.old)})"
        return f"~ {self.path}: {_short(self.old)} -> {_short(self.new)}"


def _short(value: Any) -> str:
    text = msgspec.json.encode(value).decode()
    return text if len(text) <= 100 else text[:97] + "..."


def diff_documents(old: dict[str, Any] | None, new: dict[str, Any]) -> list[Change]:
    """Return the changes from ``old`` to ``new`` (plain values, as from ``document_to_builtins``)."""
    changes: list[Change] = []
    _diff(old if old is not None else {}, new, "$", changes, None)
    return changes


def _diff(old: Any, new: Any, path: str, out: list[Change], section: str | None) -> None:
    if isinstance(old, dict) and isinstance(new, dict):
        for key in old:
            if key not in new:
                out.append(Change(path=f"{path}.{key}", op="removed", old=old[key]))
        for key in new:
            child = f"{path}.{key}"
            if key not in old:
                out.append(Change(path=child, op="added", new=new[key]))
            else:
                _diff(old[key], new[key], child, out, key if path == "$" else None)
        return
    if isinstance(old, list) and isinstance(new, list):
        id_field = _ID_FIELDS.get(section or "")
        if id_field and _keyed(old, id_field) and _keyed(new, id_field):
            old_items = {item[id_field]: item for item in old}
            new_items = {item[id_field]: item for item in new}
            for key, item in old_items.items():
                if key not in new_items:
                    out.append(Change(path=f"{path}[{key}]", op="removed", old=item))
            for key, item in new_items.items():
                if key not in old_items:
                    out.append(Change(path=f"{path}[{key}]", op="added", new=item))
                else:
                    _diff(old_items[key], item, f"{path}[{key}]", out, None)
            return
        if all(isinstance(item, dict) for item in old + new):
            for index in range(max(len(old), len(new))):
                child = f"{path}[{index}]"
                if index >= len(new):
                    out.append(Change(path=child, op="removed", old=old[index]))
                elif index >= len(old):
                    out.append(Change(path=child, op="added", new=new[index]))
                else:
                    _diff(old[index], new[index], child, out, None)
            return
    if old != new:
        out.append(Change(path=path, op="changed", old=old, new=new))


def _keyed(items: list[Any], id_field: str) -> bool:
    keys = [item.get(id_field) for item in items if isinstance(item, dict)]
    return len(keys) == len(items) and len(set(keys)) == len(keys)
