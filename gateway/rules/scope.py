"""The part of a rule-set document that concerns one operator, for that operator's staff."""

from __future__ import annotations

from typing import Any


def document_for_operator(plain: dict[str, Any], operator_id: str) -> dict[str, Any]:
    """Return ``plain`` (a document as plain values) cut down to ``operator_id``.

    Kept: the operator, its networks and sites, the rules, areas and products
    they use, transfer rules and caps touching its networks, and everything
    shared (rule-set header, calendar, timeframes, seasons, rider categories).
    """
    networks = [n for n in plain.get("networks", []) if n["operator_id"] == operator_id]
    network_ids = {n["network_id"] for n in networks}
    sites = [s for s in plain.get("sites", []) if s["operator_id"] == operator_id]
    site_ids = {s["site_id"] for s in sites}
    leg_rules = [r for r in plain.get("leg_rules", []) if r["network_id"] in network_ids]
    area_fares = [f for f in plain.get("area_fares", []) if f["network_id"] in network_ids]
    site_rules = [r for r in plain.get("site_rules", []) if r["site_id"] in site_ids]
    product_ids = {r["product_id"] for r in leg_rules + area_fares + site_rules}
    area_ids = {f["from_area"] for f in area_fares} | {f["to_area"] for f in area_fares}

    scoped = dict(plain)
    scoped["operators"] = [o for o in plain.get("operators", []) if o["operator_id"] == operator_id]
    scoped["networks"] = networks
    scoped["sites"] = sites
    scoped["areas"] = [a for a in plain.get("areas", []) if a["area_id"] in area_ids]
    scoped["products"] = [p for p in plain.get("products", []) if p["product_id"] in product_ids]
    scoped["leg_rules"] = leg_rules
    scoped["area_fares"] = area_fares
    scoped["site_rules"] = site_rules
    scoped["transfer_rules"] = [
        t for t in plain.get("transfer_rules", [])
        if network_ids & (set(t["from_networks"]) | set(t["to_networks"]))]
    scoped["caps"] = [c for c in plain.get("caps", []) if network_ids & set(c["networks"])]
    return scoped
