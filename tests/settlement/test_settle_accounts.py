"""Account imports, encryption at rest, masking, and subsidy claims."""

from __future__ import annotations

import datetime as dt
import os

import pytest

from gateway import timeutil
from settlement import accounts, days, subsidy
from settlement.crypto import AccountCipher, load_or_create_key, mask_account
from settlement.errors import SettlementError

from .conftest import BANKS_CSV, DAY, Journal, seed, token


def test_key_file_created_0600(tmp_path, capsys):
    path = tmp_path / "k" / "account.key"
    key = load_or_create_key(path)
    assert len(key) == 32
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert "0600" in capsys.readouterr().err
    assert load_or_create_key(path) == key


def test_key_file_readable_by_others_rejected(tmp_path):
    path = tmp_path / "account.key"
    load_or_create_key(path)
    path.chmod(0o644)
    with pytest.raises(SettlementError, match="chmod 600"):
        load_or_create_key(path)


def test_mask_account():
    assert mask_account("6222021234567891234") == "6222 **** **** 1234"


async def test_rider_import_encrypts_and_masks(conn, cipher):
    await seed(conn, cipher, riders=range(1, 4))
    row = await conn.fetchrow("SELECT * FROM settlement_rider_accounts WHERE account_token = $1", token(1))
    assert row["account_mask"] == "6222 **** **** 0001"
    assert b"6222000000000001" not in bytes(row["account_enc"])
    assert cipher.open(row["account_enc"]) == "6222000000000001"
    other = AccountCipher(b"\x01" * 32)
    with pytest.raises(SettlementError, match="cannot be decrypted"):
        other.open(row["account_enc"])


async def test_bad_rows_reported_by_line(conn, cipher):
    await accounts.import_accounts(conn, BANKS_CSV, "banks", cipher)
    text = ("account_token,bank_code,account_number\n"
            f"{token(1).hex()},ICBC,6222000000000001\n"
            "nothex,ICBC,6222000000000002\n"
            f"{token(3).hex()},NOPE,6222000000000003\n"
            f"{token(4).hex()},RCB,62-22\n"
            f"{token(1).hex()},RCB,6222000000000005\n"
            "too,few\n")
    report = await accounts.import_accounts(conn, text, "riders", cipher, source_name="issuer.csv")
    assert report.imported == 1
    lines = dict(report.problems)
    assert sorted(lines) == [3, 4, 5, 6, 7]
    assert "账户令牌 'nothex' 无效" in lines[3]
    assert "invalid account_token 'nothex'" in lines[3]
    assert "unknown bank_code 'NOPE'" in lines[4]
    assert "invalid account_number" in lines[5]
    assert "duplicate account_token" in lines[6]
    assert "first on line 2" in lines[6]
    assert "2 columns, expected 3" in lines[7]


async def test_wrong_header_rejected(conn, cipher):
    with pytest.raises(ValueError, match="expected account_token,bank_code,account_number"):
        await accounts.import_accounts(conn, "token,bank,number\n", "riders", cipher)


def test_stray_carriage_return_is_input_error(cipher):
    from settlement.errors import InputFileError

    account = "6222000011112222"
    text = "account_token,bank_code,account_number\n" + "a" * 32 + ",ICBC,\"6222\"\r" + account + "\n"
    with pytest.raises(InputFileError, match="invalid CSV in the riders file at line") as info:
        accounts.parse_accounts(text, "riders", cipher, {"ICBC"})
    assert account not in str(info.value)


async def test_subsidy_claim_by_operator_and_category(conn, cipher, tmp_path):
    await seed(conn, cipher)
    journal = Journal(conn)
    await journal.commit([
        {"account": token(1), "fare": 0, "full_fare": 200, "discounts": ["category"], "category": "senior"},
        {"account": token(2), "fare": 0, "full_fare": 200, "discounts": ["category"], "category": "senior"},
        {"account": token(3), "fare": 100, "full_fare": 200, "discounts": ["category"], "category": "student"},
        {"account": token(4), "fare": 100, "full_fare": 200, "discounts": ["transfer"], "category": "adult"},
        {"account": token(5), "fare": 0, "full_fare": 3000, "discounts": ["category"], "category": "disabled",
         "operator": "museum"},
        {"account": token(6), "fare": 0, "full_fare": 200, "discounts": ["category"], "category": "senior",
         "decision": 0},
    ])
    await days.close_day(conn, DAY, dt.time(0, 0), now=dt.datetime(2026, 12, 5, tzinfo=timeutil.UTC))
    claim = await subsidy.build_claim(conn, "2026-12")
    got = [(l.operator_id, l.rider_category, l.free_rides, l.discounted_rides, l.full_fare_fen, l.subsidy_fen)
           for l in claim.lines]
    assert got == [("bus1", "senior", 2, 0, 400, 400), ("bus1", "student", 0, 1, 200, 100),
                   ("museum", "disabled", 1, 0, 3000, 3000)]
    assert (claim.closed_days, claim.days_in_month, claim.complete) == (1, 31, False)
    csv_path, html_path = subsidy.write_claim(claim, tmp_path)
    assert csv_path.read_text().splitlines()[1] == "2026-12,bus1,沂源公交,Yiyuan Bus,senior,2,0,2,400,0,400"
    page = html_path.read_text()
    assert "优惠补贴申领表" in page
    assert "Subsidy claim" in page
    assert "申领总额 / Total claimed: 35.00" in page


def test_subsidy_month_invalid():
    with pytest.raises(SettlementError, match="expected YYYY-MM"):
        subsidy.parse_month("2026-13")
