"""Settlement read routes on the real admin API: roles, masked accounts, reconciliation."""

from __future__ import annotations

import datetime as dt

import aiohttp
import asyncpg
import pytest
from aiohttp import web

from gateway import timeutil
from gateway.admin import create_admin_app
from gateway.admin.auth import create_token, create_user
from gateway.config import Config
from settlement import admin as settlement_admin
from settlement import days, run

from .conftest import DAY, Journal, seed, token


@pytest.fixture
async def server(dsn, cipher, tmp_path):
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    tokens = {}
    async with pool.acquire() as conn:
        for role in ("finance", "auditor", "editor"):
            await create_user(conn, f"{role}-user", role, "test")
            _, tokens[role] = await create_token(conn, f"{role}-user", "test")
        await seed(conn, cipher)
        await Journal(conn).commit([{"account": token(1), "fare": 200}, {"account": token(2), "fare": 0,
                                    "full_fare": 200, "discounts": ["category"], "category": "senior"}])
        await days.close_day(conn, DAY, dt.time(0, 0), now=dt.datetime(2026, 12, 5, tzinfo=timeutil.UTC))
        await run.run_day(conn, DAY, cipher, tmp_path)
    runner = web.AppRunner(create_admin_app(pool, Config(), extensions=[settlement_admin.register]))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    session = aiohttp.ClientSession()

    async def get(path: str, role: str = "finance"):
        async with session.get(f"http://127.0.0.1:{port}/admin/v1/settlement{path}",
                               headers={"Authorization": f"Bearer {tokens[role]}"}) as response:
            return response.status, await response.json()

    try:
        yield get
    finally:
        await session.close()
        await runner.cleanup()
        await pool.close()


async def test_days_listed_for_finance(server):
    status, body = await server("/days")
    assert status == 200
    assert body["days"][0]["business_day"] == DAY.isoformat()
    assert body["days"][0]["step"] == "complete"


async def test_editor_forbidden(server):
    status, body = await server("/days", role="editor")
    assert status == 403
    assert "finance" in body["error"]["message_en"]


async def test_day_detail_lists_files(server):
    status, body = await server(f"/days/{DAY}", role="auditor")
    assert status == 200
    assert {f["kind"] for f in body["files"]} == {"pain.008", "debits.csv", "pain.001", "credits.csv"}
    assert body["totals"]["debit_fen"] == 200


async def test_unclosed_day_404(server):
    status, body = await server("/days/2030-01-01/reconciliation")
    assert status == 404
    assert body["error"]["message_zh"] == "营业日 2030-01-01 尚未日结"


async def test_account_shown_masked(server):
    status, body = await server(f"/accounts/{token(1).hex()}")
    assert status == 200
    assert body["account_mask"] == "6222 **** **** 0001"
    assert "6222000000000001" not in str(body)


async def test_subsidy_month(server):
    status, body = await server("/subsidy/2026-12")
    assert status == 200
    assert body["subsidy_fen"] == 200
    status, body = await server("/subsidy/2026-13")
    assert status == 400
