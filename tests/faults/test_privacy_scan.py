"""Privacy: after a load run, no ID number, name or bank account number in logs, metrics or the database.

The test plays the card issuer: its account export holds each rider's name,
resident ID number, bank account number and the pseudonymous tokens that the
credentials carry. The settlement import gets only the columns it needs;
the gateway never sees the export at all. Riders then tap through
``tapgate serve`` (a child process whose stderr is the log scanned here),
and the day is closed and settled through the CLI. Then the test scans:

- the gateway's stderr and the output of every CLI command run;
- the Prometheus metrics served by the gateway;
- every row of every table in the database (the journal included), as text;

for the injected names (Chinese and pinyin), the injected ID numbers and any
other well-formed 18-digit resident ID (GB 11643 check digit), and the
injected account numbers. The bank files that settlement writes for the
banks are the one place account numbers belong, so they are not scanned.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import os
import pathlib
import random
import re
import subprocess
import sys
from typing import Any

import asyncpg
import pytest

from fastpath.entitlements import Entitlements
from fastpath.issuer import Card, Phone, new_reader_nonce
from gateway.client import GatewayClient, card_presented
from gateway.pgembed import EmbeddedPostgres
from tapgate import runtime
from tests.faults.gatewayproc import GatewayProcess
from tests.faults.test_fault_gateway import provision
from tests.faults.validator import RetryingValidator, drive
from tests.gateway import conftest as gw

# Fake riders, as the card issuer's export lists them. The ID numbers carry a valid check digit.
RIDERS = [("张秀英", "Zhang Xiuying", "370323195003127726"), ("王建国", "Wang Jianguo", "370323194810011530"),
          ("李桂兰", "Li Guilan", "370323201206070027"), ("刘志强", "Liu Zhiqiang", "370323198811230311"),
          ("陈淑珍", "Chen Shuzhen", "370323193902145523"), ("赵文博", "Zhao Wenbo", "370323200509090012")]
_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_CANDIDATE = re.compile(rb"(?<![0-9A-Za-z])[0-9]{17}[0-9Xx](?![0-9A-Za-z])")
_ACCOUNT = re.compile(rb"(?<![0-9A-Za-z*])62[0-9]{14,17}(?![0-9A-Za-z])")


def check_digit(first17: str) -> str:
    return "10X98765432"[sum(int(d) * w for d, w in zip(first17, _WEIGHTS)) % 11]


def resident_ids(data: bytes) -> list[str]:
    """Well-formed 18-digit resident ID numbers in ``data``: a real birth date and a matching check digit."""
    found = []
    for match in _CANDIDATE.finditer(data):
        text = match.group().decode().upper()
        try:
            born = dt.date(int(text[6:10]), int(text[10:12]), int(text[12:14]))
        except ValueError:
            continue
        if dt.date(1900, 1, 1) <= born <= dt.date.today() and check_digit(text[:17]) == text[17]:
            found.append(text)
    return found


def test_injected_ids_are_well_formed() -> None:
    # The scan below finds an ID only if it is well formed, so the injected ones must be.
    for _, _, number in RIDERS:
        assert resident_ids(number.encode()) == [number]


def issuer_export(accounts: list[tuple[bytes, bytes, str]]) -> str:
    """The card issuer's export: one line per rider with everything the issuer knows."""
    lines = ["name_zh,name_pinyin,id_number,account_number,bank_code,holder_token,account_token"]
    for (name_zh, pinyin, id_number), (holder, account, number) in zip(RIDERS, accounts):
        lines.append(f"{name_zh},{pinyin},{id_number},{number},ICBC,{holder.hex()},{account.hex()}")
    return "\n".join(lines) + "\n"


def settlement_riders(export: str) -> str:
    """The three columns settlement imports, cut from the export as the issuer's job would."""
    rows = [line.split(",") for line in export.strip().splitlines()[1:]]
    return "account_token,bank_code,account_number\n" + "".join(f"{r[6]},{r[4]},{r[3]}\n" for r in rows)


def cli(dsn: str, key_file: pathlib.Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, TAPGATE_SETTLEMENT_ACCOUNT_KEY_FILE=str(key_file), TAPGATE_LOG_LEVEL="DEBUG")
    return subprocess.run([sys.executable, "-m", "tapgate", *args, "--dsn", dsn], env=env, capture_output=True,
                          text=True, timeout=120)


def needles(accounts: list[tuple[bytes, bytes, str]]) -> dict[str, bytes]:
    found = {}
    for name_zh, pinyin, id_number in RIDERS:
        found[f"name {pinyin}"] = name_zh.encode()
        found[f"pinyin {pinyin}"] = pinyin.encode()
        found[f"id of {pinyin}"] = id_number.encode()
    for _, _, number in accounts:
        found[f"account {number[-4:]}"] = number.encode()
    return found


def leaks(source: str, data: bytes, secrets: dict[str, bytes]) -> list[str]:
    problems = [f"{source}: {what}" for what, needle in secrets.items() if needle in data]
    problems += [f"{source}: resident ID {number[:6]}…" for number in resident_ids(data)]
    problems += [f"{source}: account-like number {m.group()[:4].decode()}…" for m in _ACCOUNT.finditer(data)]
    return problems


async def dump_database(dsn: str) -> bytes:
    """Every row of every user table, as JSON text."""
    conn = await asyncpg.connect(dsn)
    try:
        tables = await conn.fetch("SELECT schemaname, relname FROM pg_stat_user_tables ORDER BY 1, 2")
        parts = []
        for table in tables:
            name = f'"{table["schemaname"]}"."{table["relname"]}"'
            rows = await conn.fetch(f"SELECT row_to_json(t)::text AS j FROM {name} AS t")
            parts += [f"{name} {row['j']}" for row in rows]
    finally:
        await conn.close()
    return "\n".join(parts).encode()


@pytest.mark.timeout(180)
async def test_no_personal_data_after_load_run(tmp_path: pathlib.Path) -> None:
    random.seed(8)
    server = EmbeddedPostgres(tmp_path / "pgdata")
    server.start()
    gateway: GatewayProcess | None = None
    outputs: dict[str, str] = {}
    try:
        await runtime.migrate_all(server.dsn)
        fleet = await provision(server.dsn, validators=3, riders=0)
        key_file = tmp_path / "account.key"

        # The issuer issues a phone credential and a card to each rider of its export.
        start = gw.now_ms() - gw.DAY_MS
        holders = [os.urandom(16) for _ in RIDERS]
        account_tokens = [os.urandom(16) for _ in RIDERS]
        accounts = [(h, a, f"622202{random.randrange(10**12, 10**13)}") for h, a in zip(holders, account_tokens)]
        export = issuer_export(accounts)
        fleet.phones = [Phone.new(fleet.issuer, holder_token=h, account_token=a, valid_from_ms=start,
                                  entitlements=Entitlements(birth_date=dt.date(int(r[2][6:10]), 1, 1)))
                        for (h, a, _), r in zip(accounts, RIDERS)]
        fleet.cards = [Card.new(fleet.issuer, holder_token=h, account_token=a, valid_from_ms=start)
                       for h, a, _ in accounts]
        banks = tmp_path / "banks.csv"
        banks.write_text("bank_code,name_zh,name_en,agency_account\nICBC,工商银行沂源支行,ICBC Yiyuan,1602000119000012345\n")
        riders = tmp_path / "riders.csv"
        riders.write_text(settlement_riders(export), encoding="utf-8")
        for name, path, kind in (("import banks", banks, "banks"), ("import riders", riders, "riders")):
            done = cli(server.dsn, key_file, "settle", "import-accounts", str(path), "--kind", kind)
            assert done.returncode == 0, done.stderr
            outputs[name] = done.stdout + done.stderr

        gateway = GatewayProcess(server.dsn, tmp_path, workers=2)
        port = await gateway.start()
        clients = [RetryingValidator("127.0.0.1", port, creds) for creds in fleet.devices]
        result = await drive(clients, fleet.make_tap, duration_s=4.0)
        assert len(result.acknowledged) > 100
        async with GatewayClient("127.0.0.1", port, None) as client:
            metrics = (await client.request("GET", "/metrics", sign=False)).body
        assert b"tapgate_taps" in metrics
        await gateway.stop()

        for name, args in (("close day", ("settle", "close-day", dt.date.today().isoformat(), "--force")),
                           ("settle run", ("settle", "run", "", "--output-dir", str(tmp_path / "bank-files")))):
            if name == "settle run":
                conn = await asyncpg.connect(server.dsn)
                day = await conn.fetchval("SELECT max(business_day) FROM settlement_days")
                await conn.close()
                args = ("settle", "run", day.isoformat(), "--output-dir", str(tmp_path / "bank-files"))
            done = cli(server.dsn, key_file, *args)
            assert done.returncode == 0, (name, done.stderr)
            outputs[name] = done.stdout + done.stderr

        # The scanner must see what it looks for: the issuer's own export is full of it.
        assert len(leaks("export", export.encode(), needles(accounts))) >= 3 * len(RIDERS)

        database = await dump_database(server.dsn)
        assert b'"decision":1' in database.replace(b" ", b"")
        secrets = needles(accounts)
        problems = leaks("gateway stderr", gateway.stderr_text().encode(), secrets)
        problems += leaks("metrics", metrics, secrets)
        problems += leaks("database", database, secrets)
        for name, text in outputs.items():
            problems += leaks(f"output of {name}", text.encode(), secrets)
        assert not problems, problems
        print(f"\nPRIVACY-SUMMARY acknowledged={len(result.acknowledged)} log_bytes={len(gateway.stderr_text())} "
              f"metrics_bytes={len(metrics)} database_bytes={len(database)} needles={len(secrets)}")
    finally:
        if gateway is not None:
            await gateway.stop()
        server.destroy()


def test_bad_account_row_not_echoed(dsn: str, tmp_path: pathlib.Path) -> None:
    # A rider line with the holder's name appended, as an export with extra columns would give.
    key_file = tmp_path / "account.key"
    banks = tmp_path / "banks.csv"
    banks.write_text("bank_code,name_zh,name_en,agency_account\nICBC,工商银行,ICBC,1602000119000012345\n")
    assert cli(dsn, key_file, "settle", "import-accounts", str(banks), "--kind", "banks").returncode == 0
    name_zh, pinyin, id_number = RIDERS[0]
    riders = tmp_path / "riders.csv"
    riders.write_text(f"account_token,bank_code,account_number\n{'ab' * 16},ICBC,6222020200112233445,"
                      f"{name_zh},{id_number}\n", encoding="utf-8")
    done = cli(dsn, key_file, "settle", "import-accounts", str(riders), "--kind", "riders")
    output = (done.stdout + done.stderr).encode()
    assert b"line 2" in output or "第 2 行".encode() in output
    assert name_zh.encode() not in output
    assert id_number.encode() not in output
    assert b"6222020200112233445" not in output
