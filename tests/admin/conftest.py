"""A real admin API server on a free local port, with one token per role."""

from __future__ import annotations

import dataclasses
from typing import Any, AsyncIterator

import aiohttp
import asyncpg
import pytest
from aiohttp import web

from gateway.admin import create_admin_app
from gateway.admin.auth import create_token, create_user
from gateway.config import Config


@dataclasses.dataclass
class AdminServer:
    url: str
    pool: asyncpg.Pool
    tokens: dict[str, str]
    session: aiohttp.ClientSession

    async def call(self, method: str, path: str, role: str | None = "editor", token: str | None = None,
                   **kwargs: Any) -> tuple[int, Any]:
        headers = {}
        if token is not None:
            headers["Authorization"] = token
        elif role is not None:
            headers["Authorization"] = f"Bearer {self.tokens[role]}"
        async with self.session.request(method, self.url + path, headers=headers, **kwargs) as response:
            body = await response.json() if response.content_type == "application/json" else None
            return response.status, body


@pytest.fixture
async def admin(dsn: str) -> AsyncIterator[AdminServer]:
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=4)
    tokens: dict[str, str] = {}
    async with pool.acquire() as conn:
        for role, operator in (("editor", None), ("auditor", None), ("finance", None), ("operator", "yiyuan-bus")):
            await create_user(conn, f"{role}-user", role, "test", operator_id=operator)
            _, tokens[role] = await create_token(conn, f"{role}-user", "test")

    def extra_routes(app: web.Application) -> None:
        from gateway.admin import require_role, json_response

        async def settlement_days(request: web.Request) -> web.Response:
            caller = require_role(request, "finance")
            return json_response({"days": [], "caller": caller.user_name})

        app.router.add_get("/admin/v1/settlement/days", settlement_days)

    runner = web.AppRunner(create_admin_app(pool, Config(), extensions=[extra_routes]))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    session = aiohttp.ClientSession()
    try:
        yield AdminServer(f"http://127.0.0.1:{port}", pool, tokens, session)
    finally:
        await session.close()
        await runner.cleanup()
        await pool.close()
