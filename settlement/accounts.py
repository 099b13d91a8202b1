"""Import bank accounts: cooperating banks, rider accounts and operator accounts.

All three files are UTF-8 CSV with a header row (a UTF-8 BOM is accepted):

* banks: ``bank_code,name_zh,name_en,agency_account`` (the settlement
  agency's own account at that bank);
* riders (the card issuer's export): ``account_token,bank_code,account_number``
  where ``account_token`` is the 32-hex-digit token the journal carries;
* operators: ``operator_id,bank_code,account_number,fee_bp``.

Good rows are upserted, bad rows are reported by line number and value and
skipped. Account numbers are sealed before they reach PostgreSQL.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import re
from typing import Any, Callable, Iterable

import asyncpg

from settlement.crypto import AccountCipher, mask_account, valid_account_number
from settlement.errors import InputFileError

KINDS = ("banks", "riders", "operators")
HEADERS = {
    "banks": ["bank_code", "name_zh", "name_en", "agency_account"],
    "riders": ["account_token", "bank_code", "account_number"],
    "operators": ["operator_id", "bank_code", "account_number", "fee_bp"],
}
_BANK_CODE = re.compile(r"^[A-Z0-9]{2,11}$")
_TOKEN = re.compile(r"^[0-9a-fA-F]{32}$")


@dataclasses.dataclass
class ImportReport:
    kind: str
    rows: int = 0
    imported: int = 0
    problems: list[tuple[int, str]] = dataclasses.field(default_factory=list)


def _problem(report: ImportReport, line: int, en: str, zh: str) -> None:
    report.problems.append((line, f"{zh} / {en}"))


def _read_rows(text: str, kind: str, report: ImportReport) -> Iterable[tuple[int, dict[str, str]]]:
    reader = csv.reader(io.StringIO(text.lstrip("\ufeff")))
    try:
        yield from _parse_rows(reader, kind, report)
    except csv.Error as exc:
        # A stray CR or NUL byte inside a line; the line is named, its content is not echoed.
        raise InputFileError(
            f"invalid CSV in the {kind} file at line {reader.line_num}: {exc}",
            f"{kind} 文件第 {reader.line_num} 行不是有效的 CSV：{exc}",
            "save the file as plain UTF-8 CSV with one record per line / 请将文件另存为每行一条记录的 UTF-8 CSV") from exc


def _parse_rows(reader: Any, kind: str, report: ImportReport) -> Iterable[tuple[int, dict[str, str]]]:
    header = next(reader, None)
    expected = HEADERS[kind]
    if header is None or [h.strip() for h in header] != expected:
        raise InputFileError(
            f"invalid header {header!r} in the {kind} file, expected {','.join(expected)}",
            f"{kind} 文件的表头 {header!r} 无效，应为 {','.join(expected)}",
            "put the expected header on the first line / 请在第一行写入正确的表头")
    for row in reader:
        line = reader.line_num
        if not row or all(not cell.strip() for cell in row):
            continue
        report.rows += 1
        if len(row) != len(expected):
            # The row is not echoed: a misaligned row may put an account number in any column.
            _problem(report, line, f"{len(row)} columns, expected {len(expected)} ({','.join(expected)})",
                     f"有 {len(row)} 列，应为 {len(expected)} 列（{','.join(expected)}）")
            continue
        yield line, {name: cell.strip() for name, cell in zip(expected, row)}


def _check_bank_code(report: ImportReport, line: int, code: str, known: set[str] | None) -> bool:
    if not _BANK_CODE.match(code):
        _problem(report, line, f"invalid bank_code {code!r}: expected 2-11 capital letters or digits",
                 f"银行代码 {code!r} 无效：应为 2 到 11 位大写字母或数字")
        return False
    if known is not None and code not in known:
        _problem(report, line, f"unknown bank_code {code!r}: import it in the banks file first",
                 f"未知的银行代码 {code!r}：请先在银行文件中导入")
        return False
    return True


def _check_account(report: ImportReport, line: int, column: str, number: str) -> bool:
    if valid_account_number(number):
        return True
    # Never echo a full account number: show its mask.
    shown = mask_account(number) if number.isdigit() and len(number) > 4 else repr(number[:6] + "…")
    _problem(report, line, f"invalid {column} {shown}: expected 8 to 32 digits",
             f"{column} {shown} 无效：应为 8 到 32 位数字")
    return False


def parse_accounts(text: str, kind: str, cipher: AccountCipher, known_banks: set[str] | None,
                   known_operators: set[str] | None = None) -> tuple[list[tuple], ImportReport]:
    """Parse and check an account file; return the rows to upsert and the report."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    report = ImportReport(kind)
    records: list[tuple] = []
    seen: dict[str, int] = {}
    key_column = HEADERS[kind][0]
    for line, row in _read_rows(text, kind, report):
        key = row[key_column]
        if key in seen:
            _problem(report, line, f"duplicate {key_column} {key!r}, first on line {seen[key]}",
                     f"{key_column} {key!r} 重复，首次出现在第 {seen[key]} 行")
            continue
        if kind == "banks":
            ok = _check_bank_code(report, line, row["bank_code"], None)
            if not row["name_zh"] or not row["name_en"]:
                _problem(report, line, "name_zh and name_en must not be empty", "name_zh 与 name_en 不能为空")
                ok = False
            ok = _check_account(report, line, "agency_account", row["agency_account"]) and ok
            if ok:
                number = row["agency_account"]
                records.append((row["bank_code"], row["name_zh"], row["name_en"], cipher.seal(number),
                                mask_account(number)))
        elif kind == "riders":
            token = row["account_token"]
            ok = bool(_TOKEN.match(token))
            if not ok:
                _problem(report, line, f"invalid account_token {token!r}: expected 32 hexadecimal digits",
                         f"账户令牌 {token!r} 无效：应为 32 位十六进制数字")
            ok = _check_bank_code(report, line, row["bank_code"], known_banks) and ok
            ok = _check_account(report, line, "account_number", row["account_number"]) and ok
            if ok:
                number = row["account_number"]
                records.append((bytes.fromhex(token), row["bank_code"], cipher.seal(number), mask_account(number)))
        else:
            operator = row["operator_id"]
            ok = True
            if known_operators is not None and operator not in known_operators:
                _problem(report, line, f"unknown operator_id {operator!r}: register the operator first",
                         f"未知的运营单位 {operator!r}：请先登记该运营单位")
                ok = False
            ok = _check_bank_code(report, line, row["bank_code"], known_banks) and ok
            ok = _check_account(report, line, "account_number", row["account_number"]) and ok
            fee = row["fee_bp"]
            if not (fee.isdigit() and int(fee) <= 10000):
                _problem(report, line, f"invalid fee_bp {fee!r}: expected an integer from 0 to 10000 basis points",
                         f"手续费 fee_bp {fee!r} 无效：应为 0 到 10000 的整数（万分之一）")
                ok = False
            if ok:
                number = row["account_number"]
                records.append((operator, row["bank_code"], cipher.seal(number), mask_account(number), int(fee)))
        if ok:
            seen[key] = line
    return records, report


_UPSERT = {
    "banks": """
        INSERT INTO settlement_banks (bank_code, name_zh, name_en, agency_account_enc, agency_account_mask)
        SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bytea[], $5::text[])
        ON CONFLICT (bank_code) DO UPDATE SET name_zh = EXCLUDED.name_zh, name_en = EXCLUDED.name_en,
            agency_account_enc = EXCLUDED.agency_account_enc,
            agency_account_mask = EXCLUDED.agency_account_mask, updated_at = now()""",
    "riders": """
        INSERT INTO settlement_rider_accounts (account_token, bank_code, account_enc, account_mask, source_file)
        SELECT t, b, e, m, $5 FROM unnest($1::bytea[], $2::text[], $3::bytea[], $4::text[]) AS u(t, b, e, m)
        ON CONFLICT (account_token) DO UPDATE SET bank_code = EXCLUDED.bank_code,
            account_enc = EXCLUDED.account_enc, account_mask = EXCLUDED.account_mask,
            source_file = EXCLUDED.source_file, updated_at = now()""",
    "operators": """
        INSERT INTO settlement_operator_accounts (operator_id, bank_code, account_enc, account_mask, fee_bp)
        SELECT * FROM unnest($1::text[], $2::text[], $3::bytea[], $4::text[], $5::int[])
        ON CONFLICT (operator_id) DO UPDATE SET bank_code = EXCLUDED.bank_code,
            account_enc = EXCLUDED.account_enc, account_mask = EXCLUDED.account_mask,
            fee_bp = EXCLUDED.fee_bp, updated_at = now()""",
}

CHUNK_ROWS = 5000


async def import_accounts(conn: asyncpg.Connection, text: str, kind: str, cipher: AccountCipher,
                          source_name: str = "", progress: Callable[[int], None] | None = None) -> ImportReport:
    """Upsert the good rows of an account file in one transaction and return the report."""
    banks = {r["bank_code"] for r in await conn.fetch("SELECT bank_code FROM settlement_banks")}
    operators = {r["operator_id"] for r in await conn.fetch("SELECT operator_id FROM operators")}
    records, report = parse_accounts(text, kind, cipher, banks, operators)
    async with conn.transaction():
        for start in range(0, len(records), CHUNK_ROWS):
            chunk = records[start:start + CHUNK_ROWS]
            columns = [list(column) for column in zip(*chunk)]
            if kind == "riders":
                columns.append(source_name)
            await conn.execute(_UPSERT[kind], *columns)
            report.imported += len(chunk)
            if progress:
                progress(len(chunk))
    return report
