"""Fixtures for settlement tests: seeded operators, banks and accounts, and a journal writer.

The gateway's journal writer is not used here: tests insert ``taps`` and
``journal_batches`` rows directly, one batch per call, as a group commit would.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import itertools

import asyncpg
import pytest

from gateway import timeutil
from settlement import accounts
from settlement.crypto import AccountCipher, load_or_create_key

DAY = dt.date(2026, 12, 1)
BANKS_CSV = ("bank_code,name_zh,name_en,agency_account\n"
             "ICBC,中国工商银行沂源支行,ICBC Yiyuan,1602000119000012345\n"
             "RCB,沂源农商银行,Yiyuan Rural Commercial Bank,9000100020003000\n")
OPERATORS_CSV = ("operator_id,bank_code,account_number,fee_bp\n"
                 "bus1,ICBC,1602000119000099999,50\n"
                 "museum,RCB,9000100020009999,0\n")


def token(n: int) -> bytes:
    return hashlib.sha256(f"account-{n}".encode()).digest()[:16]


def rider_csv(numbers: range, bank_for=lambda n: "ICBC" if n % 2 else "RCB") -> str:
    lines = ["account_token,bank_code,account_number"]
    for n in numbers:
        lines.append(f"{token(n).hex()},{bank_for(n)},6222{n:012d}")
    return "\n".join(lines) + "\n"


@pytest.fixture
def cipher(tmp_path) -> AccountCipher:
    return AccountCipher(load_or_create_key(tmp_path / "keys" / "account.key"))


@dataclasses.dataclass
class Journal:
    """Writes taps the way the gateway's group commit does: one journal batch per call.

    A tap is a dict: account (token), and optionally tap_time or day, fare, full_fare, operator, decision,
    category, discounts, offline, received_at, kind (tap_kind, 2 for a tap-off), adjustment and
    full_fare_adjustment.
    """

    conn: asyncpg.Connection
    device_tap_ids: itertools.count = dataclasses.field(default_factory=lambda: itertools.count(1))

    async def commit(self, taps: list[dict]) -> int:
        async with self.conn.transaction():
            batch_id = await self.conn.fetchval("SELECT nextval('journal_batch_seq')")
            for tap in taps:
                await self._insert(batch_id, tap)
            await self.conn.execute(
                """INSERT INTO journal_batches (batch_id, worker, tap_count, digest, prev_hash, chain_hash)
                   VALUES ($1, 'test', $2, $3, $3, $3)""", batch_id, len(taps), b"\x00" * 32)
        return batch_id

    async def _insert(self, batch_id: int, tap: dict) -> None:
        tap_time = tap.get("tap_time") or dt.datetime.combine(tap.get("day", DAY), dt.time(9, 0),
                                                              tzinfo=timeutil.LOCAL_TZ)
        device_tap_id = next(self.device_tap_ids)
        await self.conn.execute(
            """INSERT INTO taps (tap_id, business_day, batch_id, device_id, device_tap_id, tap_time, received_at,
                   offline, operator_id, route_id, tap_kind, medium, account_token, holder_token, decision, reason,
                   rider_category, fare_fen, full_fare_fen, discount_kinds, request_digest, adjustment_fen,
                   full_fare_adjustment_fen)
               VALUES (nextval('tap_id_seq'), $1, $2, 'dev-1', $3, $4, $5, $6, $7, 'r1', $16, 1, $8, $8, $9, $10,
                       $11, $12, $13, $14, $15, $17, $18)""",
            timeutil.business_day(tap_time), batch_id, device_tap_id, tap_time, tap.get("received_at", tap_time),
            tap.get("offline", False), tap.get("operator", "bus1"), tap["account"], tap.get("decision", 1),
            0 if tap.get("decision", 1) else 44, tap.get("category", "adult"), tap.get("fare", 200),
            tap.get("full_fare", tap.get("fare", 200)), tap.get("discounts", []),
            hashlib.sha256(f"{device_tap_id}".encode()).digest(), tap.get("kind", 0), tap.get("adjustment", 0),
            tap.get("full_fare_adjustment", 0))


async def seed(conn: asyncpg.Connection, cipher: AccountCipher, riders: range = range(1, 11)) -> None:
    await conn.execute("""INSERT INTO operators (operator_id, kind, name_zh, name_en) VALUES
                          ('bus1', 'bus', '沂源公交', 'Yiyuan Bus'), ('museum', 'venue', '沂源博物馆', 'Yiyuan Museum')""")
    for kind, text in (("banks", BANKS_CSV), ("operators", OPERATORS_CSV), ("riders", rider_csv(riders))):
        report = await accounts.import_accounts(conn, text, kind, cipher, source_name="test.csv")
        assert not report.problems, report.problems


@pytest.fixture
async def conn(dsn):
    connection = await asyncpg.connect(dsn)
    try:
        yield connection
    finally:
        await connection.close()
