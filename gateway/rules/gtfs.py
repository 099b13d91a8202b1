"""Import GTFS Fares v2 files into a rule-set document, listing everything that could not be mapped.

Read: agency, routes, networks, route_networks, areas, stop_areas,
rider_categories, fare_media, fare_products, fare_leg_rules,
fare_transfer_rules, timeframes (a folder or a .zip). The result is a plain
document (dicts and lists) for an editor to review, complete and save as
TOML or YAML; it is not published by the import.

GTFS does not define some of what a rule set needs, so the import cannot
fill it in. Who belongs to a rider category is one: GTFS links to an
eligibility web page, so the import guesses the kind from the name and
reports each guess. Day types are another, because GTFS timeframes refer to
service calendars. Caps, seasons, sites and one entry per day are not in
GTFS at all.
"""

from __future__ import annotations

import csv
import decimal
import io
import math
import pathlib
import re
import zipfile
from typing import Any, Iterable

import msgspec

from gateway.rules.validate import RuleProblem, check_document

FILES = ("agency", "routes", "networks", "route_networks", "areas", "stop_areas", "rider_categories",
         "fare_media", "fare_products", "fare_leg_rules", "fare_transfer_rules", "timeframes")

_ID = re.compile(r"[^A-Za-z0-9_.-]")
_KIND_WORDS = (
    ("elderly", ("senior", "elder", "老年", "老人", "长者")),
    ("student", ("student", "学生")),
    ("child", ("child", "儿童", "kid")),
    ("disabled", ("disab", "残疾", "残障")),
    ("priority", ("veteran", "military", "优抚", "军人")),
)
_MEDIA_TYPES = {2: "card", 4: "qr"}


class Unmapped(msgspec.Struct, frozen=True, kw_only=True):
    """One row or field of the feed that the document does not represent (fully)."""

    file: str
    row: int
    field: str
    value: str
    reason_en: str
    reason_zh: str

    def describe(self) -> str:
        where = f"{self.file}.txt row {self.row}" if self.row else f"{self.file}.txt"
        return f"{where} {self.field}={self.value!r}: {self.reason_zh} / {self.reason_en}"


class GtfsImport(msgspec.Struct, kw_only=True):
    document: dict[str, Any]
    unmapped: list[Unmapped]
    # Problems of the imported document, which an editor must fix before saving it as a draft.
    problems: list[RuleProblem]


def _read_tables(source: pathlib.Path) -> dict[str, list[dict[str, str]]]:
    tables: dict[str, list[dict[str, str]]] = {}
    if source.is_dir():
        for name in FILES:
            path = source / f"{name}.txt"
            if path.exists():
                tables[name] = _rows(path.read_text(encoding="utf-8-sig"))
        return tables
    with zipfile.ZipFile(source) as archive:
        names = set(archive.namelist())
        for name in FILES:
            if f"{name}.txt" in names:
                tables[name] = _rows(archive.read(f"{name}.txt").decode("utf-8-sig"))
    return tables


def _rows(text: str) -> list[dict[str, str]]:
    return [{k.strip(): (v or "").strip() for k, v in row.items() if k} for row in csv.DictReader(io.StringIO(text))]


def _ident(value: str) -> str:
    """Return ``value`` as a document id (letters, digits, '_', '.', '-'), at most 63 characters."""
    cleaned = _ID.sub("-", value).strip("-.") or "x"
    if not cleaned[0].isalnum():
        cleaned = "x" + cleaned
    return cleaned[:63]


class _Importer:
    def __init__(self, tables: dict[str, list[dict[str, str]]]) -> None:
        self.tables = tables
        self.unmapped: list[Unmapped] = []

    def skip(self, file: str, row: int, field: str, value: str, reason_en: str, reason_zh: str) -> None:
        self.unmapped.append(Unmapped(file=file, row=row, field=field, value=value, reason_en=reason_en,
                                      reason_zh=reason_zh))

    def rows(self, name: str) -> Iterable[tuple[int, dict[str, str]]]:
        # Row numbers count the header as row 1, as a spreadsheet shows them.
        for index, row in enumerate(self.tables.get(name, []), start=2):
            yield index, row

    def fen(self, file: str, row: int, amount: str, currency: str) -> int | None:
        if currency and currency.upper() != "CNY":
            self.skip(file, row, "currency", currency, "only CNY amounts can be imported", "仅支持人民币（CNY）金额")
            return None
        try:
            value = decimal.Decimal(amount) * 100
        except decimal.InvalidOperation:
            self.skip(file, row, "amount", amount, "not a decimal amount", "不是有效的金额")
            return None
        if value != value.to_integral_value():
            self.skip(file, row, "amount", amount, "amount has fractions of a fen", "金额精度超过分")
            return None
        return int(value)

    def run(self, rule_set_id: str, name_zh: str, name_en: str) -> dict[str, Any]:
        doc: dict[str, Any] = {"rule_set": {"rule_set_id": rule_set_id, "name_zh": name_zh, "name_en": name_en,
                                            "notes_en": "Imported from GTFS Fares v2; review before use.",
                                            "notes_zh": "由 GTFS Fares v2 导入，使用前须审核。"}}
        doc["operators"] = self._operators()
        route_agency = {r["route_id"]: r.get("agency_id", "") for _, r in self.rows("routes")}
        networks, area_networks = self._networks(route_agency, doc["operators"])
        doc["areas"] = self._areas()
        doc["timeframes"] = self._timeframes()
        doc["rider_categories"], default_category = self._categories()
        media = self._media()
        doc["products"], amounts = self._products(media, default_category, doc["rider_categories"])
        doc["leg_rules"], doc["area_fares"], leg_groups = self._leg_rules(amounts, area_networks,
                                                                          {t["timeframe_id"] for t in doc["timeframes"]})
        for network in networks:
            if network["network_id"] in area_networks:
                network["fare_structure"] = "area"
        doc["networks"] = networks
        doc["transfer_rules"] = self._transfers(leg_groups, amounts)
        return doc

    def _operators(self) -> list[dict[str, Any]]:
        operators = []
        for row_number, row in self.rows("agency"):
            agency = row.get("agency_id") or row.get("agency_name", "agency")
            name = row.get("agency_name") or agency
            operators.append({"operator_id": _ident(agency).lower(), "kind": "bus", "name_zh": name, "name_en": name})
        if not operators:
            self.skip("agency", 0, "agency_id", "", "no agency.txt: one operator 'imported' was created",
                      "缺少 agency.txt：已创建运营单位 'imported'")
            operators.append({"operator_id": "imported", "kind": "bus", "name_zh": "导入的运营单位",
                              "name_en": "Imported operator"})
        return operators

    def _networks(self, route_agency: dict[str, str],
                  operators: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], set[str]]:
        routes_of: dict[str, list[str]] = {}
        for _, row in self.rows("routes"):
            if row.get("network_id"):
                routes_of.setdefault(row["network_id"], []).append(row["route_id"])
        for _, row in self.rows("route_networks"):
            routes_of.setdefault(row["network_id"], []).append(row["route_id"])
        names = {row["network_id"]: row.get("network_name") or row["network_id"] for _, row in self.rows("networks")}
        for network_id in routes_of:
            names.setdefault(network_id, network_id)
        networks = []
        default_operator = operators[0]["operator_id"]
        for network_id, name in names.items():
            routes = sorted(set(routes_of.get(network_id, [])))
            agencies = {_ident(route_agency.get(r, "")).lower() for r in routes if route_agency.get(r)}
            operator = agencies.pop() if len(agencies) == 1 else default_operator
            if len(agencies) > 0:
                self.skip("routes", 0, "agency_id", network_id, "network served by several agencies; the first "
                          "operator was assigned", "线网由多个运营单位运营，已指定第一个运营单位")
            networks.append({"network_id": _ident(network_id), "operator_id": operator, "name_zh": name,
                             "name_en": name, "routes": [_ident(r) for r in routes], "fare_structure": "flat"})
        return networks, set()

    def _areas(self) -> list[dict[str, Any]]:
        stops: dict[str, list[str]] = {}
        for _, row in self.rows("stop_areas"):
            stops.setdefault(row["area_id"], []).append(_ident(row["stop_id"]))
        names = {row["area_id"]: row.get("area_name") or row["area_id"] for _, row in self.rows("areas")}
        for area_id in stops:
            names.setdefault(area_id, area_id)
        return [{"area_id": _ident(a), "name_zh": n, "name_en": n, "stops": stops.get(a, [])} for a, n in names.items()]

    def _timeframes(self) -> list[dict[str, Any]]:
        groups: dict[str, list[str]] = {}
        for row_number, row in self.rows("timeframes"):
            start, end = row.get("start_time") or "00:00:00", row.get("end_time") or "24:00:00"
            if not start.endswith(":00") or not end.endswith(":00"):
                self.skip("timeframes", row_number, "start_time", f"{start}-{end}",
                          "seconds are not supported; times were cut to the minute", "不支持秒，已截至分钟")
            if row.get("service_id"):
                self.skip("timeframes", row_number, "service_id", row["service_id"],
                          "service calendars are not imported; the timeframe applies on every day type",
                          "未导入服务日历；该时间段适用于所有日期类型")
            groups.setdefault(row["timeframe_group_id"], []).append(f"{start[:5]}-{end[:5]}")
        return [{"timeframe_id": _ident(g), "intervals": intervals} for g, intervals in groups.items()]

    def _categories(self) -> tuple[list[dict[str, Any]], str | None]:
        categories: list[dict[str, Any]] = []
        default: str | None = None
        for row_number, row in self.rows("rider_categories"):
            category_id = _ident(row["rider_category_id"])
            name = row.get("rider_category_name") or category_id
            if row.get("is_default_fare_category") == "1" and default is None:
                default = category_id
                categories.append({"category_id": category_id, "kind": "adult", "name_zh": name, "name_en": name})
                continue
            lowered = name.lower() + " " + category_id.lower()
            kind = next((k for k, words in _KIND_WORDS if any(w in lowered for w in words)), None)
            if kind is None:
                self.skip("rider_categories", row_number, "rider_category_id", row["rider_category_id"],
                          "no category kind could be derived from the name; add it by hand",
                          "无法从名称判断乘客类别，请手工添加")
                continue
            category: dict[str, Any] = {"category_id": category_id, "kind": kind, "name_zh": name, "name_en": name}
            if kind == "elderly":
                category["min_age"] = 60
            if kind == "child":
                category["max_age"] = 5
            self.skip("rider_categories", row_number, "eligibility_url", row.get("eligibility_url", ""),
                      f"eligibility guessed as kind {kind!r}"
                      + (" with an assumed age limit" if kind in ("elderly", "child") else "") + "; check it",
                      f"资格条件按类别 {kind!r} 推测" + ("，年龄界限为假定值" if kind in ("elderly", "child") else "")
                      + "，请核对")
            categories.append(category)
        if default is None:
            categories.insert(0, {"category_id": "adult", "kind": "adult", "name_zh": "成人", "name_en": "Adult"})
            default = "adult"
        return categories, default

    def _media(self) -> dict[str, str | None]:
        media: dict[str, str | None] = {}
        for row_number, row in self.rows("fare_media"):
            kind = _MEDIA_TYPES.get(int(row.get("fare_media_type") or 0))
            media[row["fare_media_id"]] = kind
            if kind is None:
                self.skip("fare_media", row_number, "fare_media_type", row.get("fare_media_type", ""),
                          "only transit cards (2) and mobile apps (4) map to card and qr",
                          "仅交通卡（2）与手机应用（4）可对应 card 与 qr")
        return media

    def _products(self, media: dict[str, str | None], default: str | None,
                  categories: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, int]]:
        known_categories = {c["category_id"] for c in categories}
        by_product: dict[str, list[tuple[int, dict[str, str], int]]] = {}
        names: dict[str, str] = {}
        for row_number, row in self.rows("fare_products"):
            fen = self.fen("fare_products", row_number, row.get("amount", ""), row.get("currency", ""))
            if fen is None:
                continue
            by_product.setdefault(row["fare_product_id"], []).append((row_number, row, fen))
            names.setdefault(row["fare_product_id"], row.get("fare_product_name") or row["fare_product_id"])
        products: list[dict[str, Any]] = []
        amounts: dict[str, int] = {}
        for product_id, rows in by_product.items():
            full = [fen for _, r, fen in rows if _ident(r.get("rider_category_id", "")) in ("", default)
                    or not r.get("rider_category_id")]
            if not full:
                full = [max(fen for _, _, fen in rows)]
                self.skip("fare_products", rows[0][0], "rider_category_id", product_id,
                          "no amount for the default category; the highest amount was taken as the full fare",
                          "缺少默认类别的票价，已取最高金额作为全价")
            price = max(full)
            amounts[product_id] = price
            if price < 0:
                # A negative amount is a transfer discount, used by fare_transfer_rules only.
                continue
            product: dict[str, Any] = {"product_id": _ident(product_id), "kind": "single_ride", "price_fen": price,
                                       "name_zh": names[product_id], "name_en": names[product_id]}
            percents: dict[str, int] = {}
            product_media: set[str] = set()
            first_amount: dict[str, int] = {}
            for row_number, row, fen in rows:
                medium_id = row.get("fare_media_id", "")
                if medium_id and media.get(medium_id):
                    product_media.add(media[medium_id])  # type: ignore[arg-type]
                seen = first_amount.setdefault(row.get("rider_category_id", ""), fen)
                if seen != fen:
                    self.skip("fare_products", row_number, "fare_media_id", medium_id,
                              "prices that differ by medium are not supported; the first was kept",
                              "不支持按支付介质区分价格，已保留第一个价格")
                    continue
                category_id = _ident(row.get("rider_category_id", ""))
                if row.get("rider_category_id") and category_id != default:
                    if category_id not in known_categories:
                        self.skip("fare_products", row_number, "rider_category_id", row["rider_category_id"],
                                  "category not imported", "该乘客类别未导入")
                        continue
                    percent = round(fen * 100 / price) if price else 100
                    if price and (price * percent + 50) // 100 != fen:
                        self.skip("fare_products", row_number, "amount", row["amount"],
                                  f"category price is not a whole percent of the full fare; {percent}% was used",
                                  f"类别票价不是全价的整数百分比，已按 {percent}% 处理")
                    percents[category_id] = percent
            if percents:
                product["category_percent"] = percents
            if product_media and product_media != {"card", "qr"}:
                product["media"] = sorted(product_media)
            products.append(product)
        return products, amounts

    def _leg_rules(self, amounts: dict[str, int], area_networks: set[str],
                   timeframes: set[str]) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, str]]:
        leg_rules: list[dict[str, Any]] = []
        area_fares: list[dict[str, Any]] = []
        leg_groups: dict[str, str] = {}
        rows = sorted(self.rows("fare_leg_rules"), key=lambda item: -int(item[1].get("rule_priority") or 0))
        for row_number, row in rows:
            network = row.get("network_id", "")
            product = row.get("fare_product_id", "")
            if not network:
                self.skip("fare_leg_rules", row_number, "network_id", "", "leg rules without a network are not "
                          "supported", "不支持未指定线网的计价规则")
                continue
            if product not in amounts:
                self.skip("fare_leg_rules", row_number, "fare_product_id", product, "product not imported",
                          "票种未导入")
                continue
            if row.get("leg_group_id"):
                leg_groups[row["leg_group_id"]] = _ident(network)
            if row.get("to_timeframe_group_id"):
                self.skip("fare_leg_rules", row_number, "to_timeframe_group_id", row["to_timeframe_group_id"],
                          "only the boarding timeframe is used", "仅使用上车时间段")
            from_area, to_area = row.get("from_area_id", ""), row.get("to_area_id", "")
            if from_area or to_area:
                if not (from_area and to_area):
                    self.skip("fare_leg_rules", row_number, "from_area_id", from_area or to_area,
                              "area fares need both a from and a to area", "分区票价须同时指定起止区域")
                    continue
                area_networks.add(_ident(network))
                area_fares.append({"network_id": _ident(network), "from_area": _ident(from_area),
                                   "to_area": _ident(to_area), "price_fen": amounts[product],
                                   "product_id": _ident(product), "symmetric": False})
                continue
            rule: dict[str, Any] = {"network_id": _ident(network), "product_id": _ident(product)}
            timeframe = row.get("from_timeframe_group_id", "")
            if timeframe:
                if _ident(timeframe) in timeframes:
                    rule["timeframes"] = [_ident(timeframe)]
                else:
                    self.skip("fare_leg_rules", row_number, "from_timeframe_group_id", timeframe,
                              "timeframe not found", "找不到时间段")
            leg_rules.append(rule)
        return leg_rules, area_fares, leg_groups

    def _transfers(self, leg_groups: dict[str, str], amounts: dict[str, int]) -> list[dict[str, Any]]:
        transfers = []
        for row_number, row in self.rows("fare_transfer_rules"):
            source, target = leg_groups.get(row.get("from_leg_group_id", "")), leg_groups.get(
                row.get("to_leg_group_id", ""))
            if source is None or target is None:
                self.skip("fare_transfer_rules", row_number, "from_leg_group_id", row.get("from_leg_group_id", ""),
                          "leg groups must both map to networks", "起止计价组须均能对应线网")
                continue
            seconds = int(row.get("duration_limit") or 0)
            if not seconds:
                self.skip("fare_transfer_rules", row_number, "duration_limit", "",
                          "transfers without a time limit are not supported", "不支持无时限的换乘")
                continue
            if row.get("duration_limit_type", "1") not in ("1", ""):
                self.skip("fare_transfer_rules", row_number, "duration_limit_type", row["duration_limit_type"],
                          "measured from boarding to boarding instead (type 1)", "改为按两次上车时间计算（类型 1）")
            minutes = min(1440, math.ceil(seconds / 60))
            count = int(row.get("transfer_count") or 1)
            rule: dict[str, Any] = {"transfer_id": f"gtfs-{row_number}", "from_networks": [source],
                                    "to_networks": [target], "duration_limit_min": minutes,
                                    "transfers_max": 20 if count < 0 else max(1, min(20, count))}
            transfer_type = row.get("fare_transfer_type", "0")
            amount = amounts.get(row.get("fare_product_id", ""), 0)
            if transfer_type == "0":
                rule.update({"mode": "fixed", "amount_fen": amount} if amount else {"mode": "free"})
            elif transfer_type == "1" and amount < 0:
                rule.update({"mode": "discount", "amount_fen": -amount})
            else:
                self.skip("fare_transfer_rules", row_number, "fare_transfer_type", transfer_type,
                          "only type 0, and type 1 with a negative transfer amount, can be mapped",
                          "仅支持类型 0，以及换乘金额为负的类型 1")
                continue
            transfers.append(rule)
        return transfers


def import_gtfs(source: str | pathlib.Path, rule_set_id: str = "imported", name_zh: str = "导入的票价规则",
                name_en: str = "Imported fare rules") -> GtfsImport:
    """Map the GTFS Fares v2 files in ``source`` (folder or .zip) into a rule-set document."""
    path = pathlib.Path(source)
    importer = _Importer(_read_tables(path))
    document = importer.run(_ident(rule_set_id), name_zh, name_en)
    return GtfsImport(document=document, unmapped=importer.unmapped, problems=check_document(document))
