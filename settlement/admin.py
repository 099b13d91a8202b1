"""Read-only settlement routes for the admin API (roles finance and auditor).

Add them with ``create_admin_app(pool, config, extensions=[settlement.admin.register])``.
Bank account numbers never appear here: accounts are shown masked.

Routes (all GET, under ``/admin/v1/settlement``):

- ``/days?limit=N``: closed days, newest first, with run state.
- ``/days/{day}``: one day's close record, run totals and bank files.
- ``/days/{day}/reconciliation``: per operator and day totals.
- ``/subsidy/{month}``: the month's subsidy claim lines.
- ``/arrears?limit=N``: accounts in arrears.
- ``/accounts/{account_token}``: bank and masked number of one rider account.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re

from aiohttp import web

from gateway.admin import POOL, PREFIX, AdminError, json_response, require_role
from settlement import reconcile, subsidy
from settlement.errors import SettlementError

ROLES = ("finance", "auditor")
_TOKEN = re.compile(r"^[0-9a-f]{32}$")


def register(app: web.Application) -> None:
    base = f"{PREFIX}/settlement"
    app.router.add_get(f"{base}/days", list_days)
    app.router.add_get(f"{base}/days/{{day}}", get_day)
    app.router.add_get(f"{base}/days/{{day}}/reconciliation", get_reconciliation)
    app.router.add_get(f"{base}/subsidy/{{month}}", get_subsidy)
    app.router.add_get(f"{base}/arrears", list_arrears)
    app.router.add_get(f"{base}/accounts/{{account_token}}", get_account)


def _limit(request: web.Request) -> int:
    text = request.query.get("limit", "31")
    if not text.isdigit() or not 1 <= int(text) <= 1000:
        raise AdminError(400, "invalid_query", f"limit {text!r} must be 1 to 1000", f"limit {text!r} 应为 1 到 1000")
    return int(text)


def _day(request: web.Request) -> dt.date:
    text = request.match_info["day"]
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise AdminError(400, "invalid_path", f"day {text!r} must be a date YYYY-MM-DD",
                         f"营业日 {text!r} 应为日期 YYYY-MM-DD") from None


def _not_closed(day: dt.date) -> AdminError:
    return AdminError(404, "not_found", f"business day {day} is not closed", f"营业日 {day} 尚未日结")


async def list_days(request: web.Request) -> web.Response:
    require_role(request, *ROLES)
    async with request.app[POOL].acquire() as conn:
        rows = await conn.fetch("""
            SELECT d.business_day, d.closed_at, d.high_water_batch, r.step, r.completed_at
            FROM settlement_days d LEFT JOIN settlement_runs r USING (business_day)
            ORDER BY d.business_day DESC LIMIT $1""", _limit(request))
    return json_response({"days": [dict(r) for r in rows]})


async def get_day(request: web.Request) -> web.Response:
    require_role(request, *ROLES)
    day = _day(request)
    async with request.app[POOL].acquire() as conn:
        closed = await conn.fetchrow("SELECT * FROM settlement_days WHERE business_day = $1", day)
        if closed is None:
            raise _not_closed(day)
        run = await conn.fetchrow("SELECT step, created_at, completed_at FROM settlement_runs WHERE business_day = $1",
                                  day)
        files = await conn.fetch("""
            SELECT bank_code, kind, file_name, message_id, tx_count, total_fen, sha256, size_bytes, written_at
            FROM settlement_files WHERE business_day = $1 ORDER BY bank_code, kind""", day)
        _, totals = await reconcile.reconcile_day(conn, day)
    return json_response({"day": dict(closed), "run": dict(run) if run else None,
                          "totals": dataclasses.asdict(totals), "files": [dict(f) for f in files]})


async def get_reconciliation(request: web.Request) -> web.Response:
    require_role(request, *ROLES)
    day = _day(request)
    async with request.app[POOL].acquire() as conn:
        if not await conn.fetchval("SELECT 1 FROM settlement_days WHERE business_day = $1", day):
            raise _not_closed(day)
        lines, totals = await reconcile.reconcile_day(conn, day)
    operators = [dataclasses.asdict(line) | {"outstanding_fen": line.outstanding_fen} for line in lines]
    return json_response({"business_day": day, "operators": operators, "totals": dataclasses.asdict(totals)})


async def get_subsidy(request: web.Request) -> web.Response:
    require_role(request, *ROLES)
    month = request.match_info["month"]
    try:
        async with request.app[POOL].acquire() as conn:
            claim = await subsidy.build_claim(conn, month)
    except SettlementError as error:
        raise AdminError(400, "invalid_path", error.message_en, error.message_zh) from None
    lines = [dataclasses.asdict(line) | {"rides": line.rides, "paid_fen": line.paid_fen} for line in claim.lines]
    return json_response({"month": claim.month, "closed_days": claim.closed_days,
                          "days_in_month": claim.days_in_month, "complete": claim.complete, "lines": lines,
                          "subsidy_fen": sum(line.subsidy_fen for line in claim.lines)})


async def list_arrears(request: web.Request) -> web.Response:
    require_role(request, *ROLES)
    async with request.app[POOL].acquire() as conn:
        rows = await conn.fetch("""
            SELECT encode(account_token, 'hex') AS account_token, since, outstanding_fen, denied
            FROM settlement_arrears ORDER BY outstanding_fen DESC, account_token LIMIT $1""", _limit(request))
        total = await conn.fetchrow("SELECT count(*) AS accounts, coalesce(sum(outstanding_fen), 0)::bigint AS fen "
                                    "FROM settlement_arrears")
    return json_response({"accounts": total["accounts"], "outstanding_fen": total["fen"],
                          "arrears": [dict(r) for r in rows]})


async def get_account(request: web.Request) -> web.Response:
    require_role(request, *ROLES)
    text = request.match_info["account_token"].lower()
    if not _TOKEN.match(text):
        raise AdminError(400, "invalid_path", f"account token {text!r} must be 32 hexadecimal digits",
                         f"账户令牌 {text!r} 应为 32 位十六进制数字")
    async with request.app[POOL].acquire() as conn:
        row = await conn.fetchrow("""
            SELECT a.bank_code, b.name_zh AS bank_name_zh, b.name_en AS bank_name_en, a.account_mask, a.updated_at
            FROM settlement_rider_accounts a JOIN settlement_banks b USING (bank_code)
            WHERE a.account_token = $1""", bytes.fromhex(text))
        arrears = await conn.fetchrow(
            "SELECT since, outstanding_fen, denied FROM settlement_arrears WHERE account_token = $1", bytes.fromhex(text))
    if row is None:
        raise AdminError(404, "not_found", f"no bank account imported for account token {text}",
                         f"账户令牌 {text} 尚未导入银行账户")
    return json_response({"account_token": text, **dict(row), "arrears": dict(arrears) if arrears else None})
