"""The admin API endpoint by endpoint: authentication, roles, audit, and no secret in any answer.

The application is built as ``tapgate admin serve`` builds it (with every
installed extension), and its routes are enumerated from the router. Every
route must have a line in :data:`POLICY` naming the roles allowed, so a new
endpoint added without deciding who may call it fails this suite.

For each route the test calls it without a token, with a token that does not
exist, with a revoked token, and with a token of each role. A role outside
the policy gets 403; a role inside gets anything but 401 or 403. Every
request that changes state (not GET or HEAD) by an authenticated caller
adds exactly one ``admin_audit`` row naming the caller and the route. No
answer and no log line carries an issuer private key, a device secret, the
bank account key or a full bank account number.
"""

from __future__ import annotations

import base64
import datetime as dt
import logging
import pathlib
from typing import Any, AsyncIterator

import aiohttp
import asyncpg
import pytest
from aiohttp import web

from fastpath.issuer import IssuerKey
from gateway import devices
from gateway.admin import create_admin_app
from gateway.admin.auth import create_token, create_user, revoke_token
from gateway.config import Config
from gateway.rules import example_document_text, store
from settlement import accounts
from settlement.crypto import AccountCipher, load_or_create_key
from tapgate.commands.admin import extensions
from tests.gateway import conftest as gw

ROLES = ("editor", "auditor", "finance", "operator")
ALL = frozenset(ROLES)
STAFF = frozenset({"editor", "auditor"})
SETTLEMENT = frozenset({"finance", "auditor"})

# (method, route) -> roles allowed. None: public, no token needed. HEAD follows GET.
POLICY: dict[tuple[str, str], frozenset[str] | None] = {
    ("GET", "/admin/v1/healthz"): None,
    ("GET", "/admin/v1/whoami"): ALL,
    ("GET", "/admin/v1/audit"): frozenset({"auditor"}),
    ("POST", "/admin/v1/rules/validate"): STAFF,
    ("GET", "/admin/v1/rules/versions"): ALL,
    ("POST", "/admin/v1/rules/versions"): frozenset({"editor"}),
    ("GET", "/admin/v1/rules/versions/{version}"): ALL,
    ("PUT", "/admin/v1/rules/versions/{version}"): frozenset({"editor"}),
    ("DELETE", "/admin/v1/rules/versions/{version}"): frozenset({"editor"}),
    ("POST", "/admin/v1/rules/versions/{version}/publish"): frozenset({"editor"}),
    ("POST", "/admin/v1/rules/versions/{version}/rollback"): frozenset({"editor"}),
    ("GET", "/admin/v1/rules/versions/{version}/diff"): STAFF,
    ("GET", "/admin/v1/rules/versions/{version}/simulate"): frozenset({"editor", "auditor", "finance"}),
    ("GET", "/admin/v1/rules/audit"): STAFF,
    ("GET", "/admin/v1/settlement/days"): SETTLEMENT,
    ("GET", "/admin/v1/settlement/days/{day}"): SETTLEMENT,
    ("GET", "/admin/v1/settlement/days/{day}/reconciliation"): SETTLEMENT,
    ("GET", "/admin/v1/settlement/subsidy/{month}"): SETTLEMENT,
    ("GET", "/admin/v1/settlement/arrears"): SETTLEMENT,
    ("GET", "/admin/v1/settlement/accounts/{account_token}"): SETTLEMENT,
}

ACCOUNT_NUMBER = "6222020200112233445"
ACCOUNT_TOKEN = bytes.fromhex("0f" * 16)


def app_routes(app: web.Application) -> list[tuple[str, str]]:
    """(method, route) of every route, HEAD folded into GET."""
    found = set()
    for route in app.router.routes():
        method = "GET" if route.method == "HEAD" else route.method
        found.add((method, route.resource.canonical))
    return sorted(found)


class Site:
    """The admin app on a loopback port, the database behind it, and the secrets to look for."""

    def __init__(self, url: str, pool: asyncpg.Pool, tokens: dict[str, str], revoked: str,
                 secrets: dict[str, bytes], draft_version: int, published_version: int) -> None:
        self.url = url
        self.pool = pool
        self.tokens = tokens
        self.revoked = revoked
        self.secrets = secrets
        self.draft_version = draft_version
        self.published_version = published_version
        self.bodies: list[bytes] = []

    def request_for(self, method: str, route: str) -> tuple[str, dict[str, Any] | None]:
        """A concrete path and JSON body for ``route``, valid enough to get past parsing."""
        version = self.draft_version if method in ("PUT", "DELETE") or route.endswith("publish") \
            else self.published_version
        path = (route.replace("{version}", str(version)).replace("{day}", "2026-12-01")
                .replace("{month}", "2026-12").replace("{account_token}", ACCOUNT_TOKEN.hex()))
        query = {"/diff": f"?against={self.published_version}", "/simulate": "?from=2026-12-01&to=2026-12-01"}
        for suffix, text in query.items():
            if path.endswith(suffix):
                path += text
        body = None
        if method in ("POST", "PUT"):
            body = {"text": example_document_text(), "format": "toml", "note": "roles test"}
            if route.endswith(("publish", "rollback")):
                body = {"effective_from": "now"}
        return path, body

    async def call(self, session: aiohttp.ClientSession, method: str, path: str, body: Any,
                   authorization: str | None) -> int:
        headers = {"Authorization": authorization} if authorization is not None else {}
        async with session.request(method, self.url + path, json=body, headers=headers) as response:
            self.bodies.append(await response.read())
            self.bodies.append(str(dict(response.headers)).encode())
            return response.status

    async def audit_rows(self) -> list[asyncpg.Record]:
        async with self.pool.acquire() as conn:
            return await conn.fetch("SELECT actor, action, target, status FROM admin_audit ORDER BY audit_id")


async def seed_secrets(conn: asyncpg.Connection, tmp_path: pathlib.Path) -> dict[str, bytes]:
    """Put an issuer key, device secrets and an encrypted account into the database; return the secrets."""
    issuer = IssuerKey.generate(key_id=3)
    issuer.save(tmp_path / "issuer-3.key")
    await conn.execute("INSERT INTO issuer_keys (key_id, public_key) VALUES ($1, $2)", 3, issuer.public_key)
    await devices.add_operator(conn, gw.BUS_OPERATOR, "bus", "沂源公交", "Yiyuan Bus")
    device_secret = await devices.add_device(conn, "bus-1-001", gw.BUS_OPERATOR, "validator", route_id="1")
    key = load_or_create_key(tmp_path / "account.key")
    cipher = AccountCipher(key)
    await accounts.import_accounts(conn, "bank_code,name_zh,name_en,agency_account\n"
                                         "ICBC,工商银行,ICBC,1602000119000012345\n", "banks", cipher)
    await accounts.import_accounts(conn, f"account_token,bank_code,account_number\n"
                                         f"{ACCOUNT_TOKEN.hex()},ICBC,{ACCOUNT_NUMBER}\n", "riders", cipher)
    seed = (tmp_path / "issuer-3.key").read_text()
    import json

    return {"issuer seed": bytes.fromhex(json.loads(seed)["seed"]), "device secret": device_secret,
            "account key": key, "account number": ACCOUNT_NUMBER.encode(),
            "agency account": b"1602000119000012345"}


def forms(secret: bytes) -> list[bytes]:
    """The ways a secret could appear in text: raw, hex, base64 (standard and URL-safe)."""
    if secret.isdigit():
        return [secret]
    return [secret.hex().encode(), secret.hex().upper().encode(), base64.b64encode(secret).rstrip(b"="),
            base64.urlsafe_b64encode(secret).rstrip(b"=")]


@pytest.fixture
async def site(dsn: str, tmp_path: pathlib.Path) -> AsyncIterator[Site]:
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=4)
    tokens: dict[str, str] = {}
    async with pool.acquire() as conn:
        secrets = await seed_secrets(conn, tmp_path)
        for role in ROLES:
            await create_user(conn, f"{role}-user", role, "test",
                              operator_id=gw.BUS_OPERATOR if role == "operator" else None)
            _, tokens[role] = await create_token(conn, f"{role}-user", "test")
        revoked_id, revoked = await create_token(conn, "editor-user", "test")
        await revoke_token(conn, revoked_id, "test")
        published = await store.create_draft(conn, example_document_text(), "toml", "test")
        await store.publish(conn, published, gw.now_ms() - gw.DAY_MS, "test", allow_past=True)
        draft = await store.create_draft(conn, example_document_text(), "toml", "test")
    app = create_admin_app(pool, Config(), extensions())
    runner = web.AppRunner(app)
    await runner.setup()
    tcp = web.TCPSite(runner, "127.0.0.1", 0)
    await tcp.start()
    port = tcp._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield Site(f"http://127.0.0.1:{port}", pool, tokens, revoked, secrets, draft, published)
    finally:
        await runner.cleanup()
        await pool.close()


def test_every_route_has_a_policy() -> None:
    app = create_admin_app(None, Config(), extensions())  # type: ignore[arg-type]
    routes = app_routes(app)
    missing = [route for route in routes if route not in POLICY]
    assert not missing, f"routes without a role policy in this test: {missing}"
    stale = [route for route in POLICY if route not in routes]
    assert not stale, f"policy lines for routes the app no longer has: {stale}"


async def test_each_endpoint_enforces_its_roles(site: Site, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    app = create_admin_app(site.pool, Config(), extensions())
    audited = 0
    async with aiohttp.ClientSession() as session:
        for method, route in app_routes(app):
            allowed = POLICY[(method, route)]
            path, body = site.request_for(method, route)
            if allowed is None:
                assert await site.call(session, method, path, body, None) == 200
                continue
            for header in (None, "Bearer tgadm_" + "A" * 43, f"Bearer {site.revoked}", "Basic ZWRpdG9yOng=",
                           f"Bearer {site.tokens['editor']}x"):
                status = await site.call(session, method, path, body, header)
                assert status == 401, (method, route, header, status)
            # Forbidden roles first, so the allowed call (which may change state) comes last.
            for role in sorted(ROLES, key=lambda r: r in allowed):
                before = len(await site.audit_rows())
                status = await site.call(session, method, path, body, f"Bearer {site.tokens[role]}")
                rows = await site.audit_rows()
                if role in allowed:
                    assert status not in (401, 403), (method, route, role, status, site.bodies[-2][:300])
                else:
                    assert status == 403, (method, route, role, status)
                if method in ("GET", "HEAD"):
                    assert len(rows) == before, (method, route, "a read wrote an audit row")
                else:
                    assert len(rows) == before + 1, (method, route, role, "no audit row for a change")
                    last = rows[-1]
                    assert last["actor"] == f"{role}-user"
                    assert route in last["action"] and last["action"].startswith(method)
                    assert last["status"] == status
                    audited += 1
    assert audited > 0

    logged = caplog.text.encode()
    for name, secret in site.secrets.items():
        for form in forms(secret):
            for body in site.bodies:
                assert form not in body, f"the {name} appears in an admin answer"
            assert form not in logged, f"the {name} appears in the log"


async def test_successful_changes_are_audited_with_their_result(site: Site) -> None:
    async with aiohttp.ClientSession() as session:
        editor = f"Bearer {site.tokens['editor']}"
        path, body = site.request_for("POST", "/admin/v1/rules/versions")
        assert await site.call(session, "POST", path, body, editor) == 201
        path, body = site.request_for("POST", "/admin/v1/rules/versions/{version}/publish")
        assert await site.call(session, "POST", path, body, editor) == 200
    actions = [(row["actor"], row["action"], row["status"]) for row in await site.audit_rows()]
    assert ("editor-user", "POST /admin/v1/rules/versions", 201) in actions
    assert ("editor-user", "POST /admin/v1/rules/versions/{version}/publish", 200) in actions
