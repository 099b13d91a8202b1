"""Admin API over real HTTP: authentication, roles, rule-set versions, bilingual errors, audit."""

from __future__ import annotations

import datetime as dt
import time

from gateway.rules import example_document_text
from tests.admin.conftest import AdminServer

TEXT = example_document_text()
CHEAPER = TEXT.replace("price_fen = 100\n", "price_fen = 80\n", 1)


async def test_health_needs_no_token(admin: AdminServer) -> None:
    status, body = await admin.call("GET", "/admin/v1/healthz", role=None)
    assert (status, body) == (200, {"status": "ok"})


async def test_missing_token_is_401(admin: AdminServer) -> None:
    status, body = await admin.call("GET", "/admin/v1/rules/versions", role=None)
    assert status == 401
    assert body["error"]["code"] == "unauthorized"
    assert body["error"]["message_zh"] == "缺少访问令牌"
    assert body["error"]["message_en"] == "missing bearer token"


async def test_wrong_token_is_401(admin: AdminServer) -> None:
    status, body = await admin.call("GET", "/admin/v1/whoami", token="Bearer tgadm_" + "x" * 43)
    assert status == 401
    assert body["error"]["message_en"] == "invalid, expired or revoked token"


async def test_revoked_token_is_401(admin: AdminServer) -> None:
    from gateway.admin.auth import revoke_token

    status, body = await admin.call("GET", "/admin/v1/whoami", role="auditor")
    assert status == 200
    async with admin.pool.acquire() as conn:
        await revoke_token(conn, body["token_id"], "test")
    status, _ = await admin.call("GET", "/admin/v1/whoami", role="auditor")
    assert status == 401


async def test_tokens_are_stored_hashed(admin: AdminServer) -> None:
    async with admin.pool.acquire() as conn:
        stored = await conn.fetch("SELECT token_hash FROM admin_tokens")
    raw = {bytes(r["token_hash"]) for r in stored}
    for token in admin.tokens.values():
        assert token.encode() not in raw
        assert len(token) == len("tgadm_") + 43


async def test_editor_drafts_publishes_and_auditor_reads(admin: AdminServer) -> None:
    status, draft = await admin.call("POST", "/admin/v1/rules/versions", json={"text": TEXT, "note": "first"})
    assert status == 201, draft
    version = draft["version"]
    assert draft["status"] == "draft"

    status, body = await admin.call("POST", f"/admin/v1/rules/versions/{version}/publish", role="auditor",
                                    json={})
    assert status == 403
    assert body["error"]["message_zh"].startswith("角色 auditor 无权执行此操作")

    status, published = await admin.call("POST", f"/admin/v1/rules/versions/{version}/publish",
                                          json={"effective_from": "now"})
    assert status == 200, published
    assert published["status"] == "published"

    status, body = await admin.call("PUT", f"/admin/v1/rules/versions/{version}", json={"text": CHEAPER})
    assert status == 409
    assert body["error"]["message_zh"] == f"票价规则版本 {version} 已发布，不可修改"

    status, second = await admin.call("POST", "/admin/v1/rules/versions", json={"text": TEXT, "based_on": version})
    status, updated = await admin.call("PUT", f"/admin/v1/rules/versions/{second['version']}",
                                       json={"text": CHEAPER})
    assert status == 200
    assert updated["changes"] == [{"path": "$.products[urban-single].price_fen", "op": "changed", "old": 100,
                                   "new": 80}]

    status, diff = await admin.call("GET", f"/admin/v1/rules/versions/{second['version']}/diff?against={version}",
                                    role="auditor")
    assert status == 200
    assert diff["changes"][0]["path"] == "$.products[urban-single].price_fen"

    status, audit = await admin.call("GET", "/admin/v1/rules/audit", role="auditor")
    assert [e["action"] for e in audit["entries"]][:4] == ["update_draft", "create_draft", "publish", "create_draft"]
    assert audit["entries"][0]["actor"] == "editor-user"

    status, trail = await admin.call("GET", "/admin/v1/audit", role="auditor")
    requests = [(e["actor"], e["action"], e["status"]) for e in trail["entries"]]
    assert ("editor-user", "POST /admin/v1/rules/versions/{version}/publish", 200) in requests
    assert ("auditor-user", "POST /admin/v1/rules/versions/{version}/publish", 403) in requests


async def test_invalid_draft_is_422_with_problems(admin: AdminServer) -> None:
    bad = TEXT.replace("price_fen = 100\n", "price_fen = -1\n", 1)
    status, body = await admin.call("POST", "/admin/v1/rules/versions", json={"text": bad})
    assert status == 422
    problem = body["error"]["problems"][0]
    assert problem["path"] == "$.products[0].price_fen"
    assert problem["value"] == "-1"
    assert problem["expected_zh"] == "0 到 10000000 之间的整数"
    assert problem["expected_en"] == "an integer from 0 to 10000000"


async def test_validate_endpoint(admin: AdminServer) -> None:
    status, body = await admin.call("POST", "/admin/v1/rules/validate", json={"text": TEXT})
    assert (status, body) == (200, {"valid": True, "problems": []})
    status, body = await admin.call("POST", "/admin/v1/rules/validate", json={"text": "{", "format": "json"})
    assert body["valid"] is False
    status, body = await admin.call("POST", "/admin/v1/rules/validate", json={"text": TEXT, "format": "xml"})
    assert status == 400
    assert body["error"]["code"] == "invalid_field"


async def test_operator_reads_only_its_published_rules(admin: AdminServer) -> None:
    _, draft = await admin.call("POST", "/admin/v1/rules/versions", json={"text": TEXT})
    version = draft["version"]
    status, _ = await admin.call("GET", f"/admin/v1/rules/versions/{version}", role="operator")
    assert status == 404
    status, listing = await admin.call("GET", "/admin/v1/rules/versions", role="operator")
    assert listing["versions"] == []

    await admin.call("POST", f"/admin/v1/rules/versions/{version}/publish", json={})
    status, record = await admin.call("GET", f"/admin/v1/rules/versions/{version}", role="operator")
    assert status == 200
    document = record["document"]
    assert [o["operator_id"] for o in document["operators"]] == ["yiyuan-bus"]
    assert document["sites"] == []
    assert {p["product_id"] for p in document["products"]} == {"urban-single", "county-single"}
    assert "source_text" not in record
    status, _ = await admin.call("GET", "/admin/v1/rules/audit", role="operator")
    assert status == 403


async def test_rollback_and_simulate(admin: AdminServer) -> None:
    _, first = await admin.call("POST", "/admin/v1/rules/versions", json={"text": TEXT})
    await admin.call("POST", f"/admin/v1/rules/versions/{first['version']}/publish", json={})
    _, second = await admin.call("POST", "/admin/v1/rules/versions", json={"text": CHEAPER})
    effective = int(time.time() * 1000) + 60_000
    await admin.call("POST", f"/admin/v1/rules/versions/{second['version']}/publish",
                     json={"effective_from_ms": effective})
    status, restored = await admin.call("POST", f"/admin/v1/rules/versions/{first['version']}/rollback",
                                        json={"effective_from_ms": effective + 60_000, "note": "undo"})
    assert status == 201, restored
    assert restored["based_on"] == first["version"]
    assert restored["status"] == "published"

    today = dt.date.today().isoformat()
    status, report = await admin.call(
        "GET", f"/admin/v1/rules/versions/{second['version']}/simulate?from={today}&to={today}", role="finance")
    assert status == 200, report
    assert report["taps_read"] == 0
    status, body = await admin.call(
        "GET", f"/admin/v1/rules/versions/{second['version']}/simulate?from=2026-13-01&to={today}")
    assert status == 400
    assert "YYYY-MM-DD" in body["error"]["message_en"]


async def test_unknown_version_is_404(admin: AdminServer) -> None:
    status, body = await admin.call("GET", "/admin/v1/rules/versions/999", role="auditor")
    assert status == 404
    assert body["error"]["message_zh"] == "找不到票价规则版本 999"


async def test_extension_routes(admin: AdminServer) -> None:
    status, body = await admin.call("GET", "/admin/v1/settlement/days", role="finance")
    assert (status, body) == (200, {"days": [], "caller": "finance-user"})
    status, body = await admin.call("GET", "/admin/v1/settlement/days", role="editor")
    assert status == 403


async def test_unknown_path_is_bilingual_404(admin: AdminServer) -> None:
    status, body = await admin.call("GET", "/admin/v1/nothing-here", role="auditor")
    assert status == 404
    assert body["error"]["message_zh"] == "未找到"
