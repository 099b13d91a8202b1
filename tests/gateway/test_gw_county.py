"""County-line tap-on and tap-off over real HTTP, through the journal and a settlement run."""

from __future__ import annotations

import asyncio
import datetime as dt

import asyncpg

from gateway import devices, timeutil
from gateway.reasons import Reason
from gateway.client import DeviceCredentials
from gateway.journal import verify_chain
from settlement import accounts, days, run
from settlement.crypto import AccountCipher, load_or_create_key
from tests.gateway.conftest import BUS_OPERATOR, GatewayEnv, now_ms

COUNTY_VALIDATOR = "bus-k101-001"
COUNTY_ROUTE = "K101"
# The example rule set: the maximum adult fare from Nanma (stop NM01) is 6.00 yuan; Nanma to Dongli
# (stop DL01) costs 4.00.
MAX_FARE_FEN = 600
TRIP_FARE_FEN = 400


async def _county_validator(env: GatewayEnv) -> DeviceCredentials:
    conn = await asyncpg.connect(env.dsn)
    try:
        secret = await devices.add_device(conn, COUNTY_VALIDATOR, BUS_OPERATOR, "validator", route_id=COUNTY_ROUTE)
    finally:
        await conn.close()
    # Wait until the worker's device registry has been refreshed from PostgreSQL.
    await asyncio.sleep(2.5 * env.worker.config.server.refresh_interval_s + 0.1)
    return DeviceCredentials(COUNTY_VALIDATOR, secret)


def _county_tap(env: GatewayEnv, phone, kind: str, stop_id: str, at_ms: int) -> dict:
    return env.qr_tap(phone, tap_time_ms=at_ms, route_id=COUNTY_ROUTE, stop_id=stop_id, tap_kind=kind)


async def _settle_today(dsn: str, tmp_path, tokens: list[bytes]) -> list[asyncpg.Record]:
    cipher = AccountCipher(load_or_create_key(tmp_path / "keys" / "account.key"))
    banks = "bank_code,name_zh,name_en,agency_account\nICBC,中国工商银行沂源支行,ICBC Yiyuan,1602000119000012345\n"
    operators = f"operator_id,bank_code,account_number,fee_bp\n{BUS_OPERATOR},ICBC,1602000119000099999,0\n"
    riders = "account_token,bank_code,account_number\n" + "".join(
        f"{account.hex()},ICBC,6222{n:012d}\n" for n, account in enumerate(tokens))
    day = timeutil.business_day(dt.datetime.now(timeutil.UTC), dt.time(0, 0))
    conn = await asyncpg.connect(dsn)
    try:
        for kind, text in (("banks", banks), ("operators", operators), ("riders", riders)):
            report = await accounts.import_accounts(conn, text, kind, cipher, source_name="test.csv")
            assert not report.problems, report.problems
        await days.close_day(conn, day, dt.time(0, 0), force=True)
        await run.run_day(conn, day, cipher, tmp_path / "out")
        return await conn.fetch("SELECT account_token, day_fen, amount_fen FROM settlement_debits")
    finally:
        await conn.close()


async def test_tap_off_journals_adjustment_and_settles_trip_fare(gateway_env: GatewayEnv, tmp_path) -> None:
    env = gateway_env
    creds = await _county_validator(env)
    rider, forgetful = env.phone(), env.phone()
    start = now_ms() - 20_000
    async with env.client(creds) as client:
        on = (await client.tap(_county_tap(env, rider, "on", "NM01", start))).decode()
        off_tap = _county_tap(env, rider, "off", "DL01", start + 15_000)
        off = (await client.tap(off_tap)).decode()
        retried = (await client.tap(off_tap)).decode()
        # The second rider taps on and never taps off.
        lone = (await client.tap(_county_tap(env, forgetful, "on", "NM01", start))).decode()

    assert (on["decision"], on["fare_fen"], on["adjustment_fen"]) == ("accepted", MAX_FARE_FEN, 0)
    assert (off["decision"], off["fare_fen"]) == ("accepted", 0)
    assert off["adjustment_fen"] == TRIP_FARE_FEN - MAX_FARE_FEN
    assert (retried["status"], retried["adjustment_fen"]) == ("retry", TRIP_FARE_FEN - MAX_FARE_FEN)
    assert lone["fare_fen"] == MAX_FARE_FEN

    rows = {row["tap_id"]: row for row in await env.journal_rows(COUNTY_VALIDATOR)}
    assert len(rows) == 3
    on_row, off_row = rows[on["journal_id"]], rows[off["journal_id"]]
    assert (on_row["tap_kind"], on_row["fare_fen"], on_row["adjustment_fen"]) == (1, MAX_FARE_FEN, 0)
    assert (off_row["tap_kind"], off_row["fare_fen"], off_row["full_fare_fen"]) == (2, 0, 0)
    assert off_row["adjustment_fen"] == TRIP_FARE_FEN - MAX_FARE_FEN
    assert off_row["full_fare_adjustment_fen"] == TRIP_FARE_FEN - MAX_FARE_FEN

    conn = await asyncpg.connect(env.dsn)
    try:
        report = await verify_chain(conn)
    finally:
        await conn.close()
    assert report.ok, report.problems

    rider_account = bytes(on_row["account_token"])
    lone_account = bytes(rows[lone["journal_id"]]["account_token"])
    debits = await _settle_today(env.dsn, tmp_path, [rider_account, lone_account])
    amounts = {bytes(d["account_token"]): (d["day_fen"], d["amount_fen"]) for d in debits}
    assert amounts == {rider_account: (TRIP_FARE_FEN, TRIP_FARE_FEN), lone_account: (MAX_FARE_FEN, MAX_FARE_FEN)}


async def test_card_tap_off_soon_after_tap_on_accepted(gateway_env: GatewayEnv) -> None:
    env = gateway_env
    creds = await _county_validator(env)
    card = env.card()
    start = now_ms() - 5_000
    on_tap = env.card_tap(card, COUNTY_VALIDATOR, tap_time_ms=start, route_id=COUNTY_ROUTE, stop_id="NM01",
                          tap_kind="on")
    off_tap = env.card_tap(card, COUNTY_VALIDATOR, tap_time_ms=start + 3_000, route_id=COUNTY_ROUTE,
                           stop_id="DL01", tap_kind="off")
    second_off = env.card_tap(card, COUNTY_VALIDATOR, tap_time_ms=start + 4_000, route_id=COUNTY_ROUTE,
                              stop_id="DL01", tap_kind="off")
    async with env.client(creds) as client:
        on = (await client.tap(on_tap)).decode()
        off = (await client.tap(off_tap)).decode()
        again = (await client.tap(second_off)).decode()

    assert on["decision"] == "accepted"
    # Tap-on and tap-off on one validator within the duplicate window are two different taps.
    assert off["decision"] == "accepted"
    assert off["adjustment_fen"] == TRIP_FARE_FEN - MAX_FARE_FEN
    # A second tap-off within the window is still a duplicate.
    assert again["reason"] == Reason.DUPLICATE_TAP
