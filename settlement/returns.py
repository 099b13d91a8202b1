"""Bank returns: the outcome of each direct debit and credit transfer we sent.

A bank reports per item either in ISO 20022 camt.054.001.08 (a debit/credit
notification; an item with ``RtrInf`` is rejected with its reason code, any
other item is settled) or in the CSV twin with the header
``end_to_end_id,outcome,amount_fen,reason_code,booked_on`` (outcome
``settled`` or ``rejected``; booked_on ``YYYY-MM-DD`` or empty).

Importing is idempotent twice over: a file already imported (same SHA-256)
changes nothing, and an item already recorded from another file is skipped.
A file with any unknown end-to-end id or wrong amount is rejected whole, with
every problem listed.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import datetime as dt
import hashlib
import io
import pathlib
import tempfile
import xml.etree.ElementTree as ET
from typing import Iterable

import asyncpg

from settlement import arrears, ledger
from settlement.errors import InputFileError
from settlement.isofiles import CAMT_054, CURRENCY, format_yuan, parse_yuan, validate_file

CSV_HEADER = ["end_to_end_id", "outcome", "amount_fen", "reason_code", "booked_on"]
_NS = f"{{urn:iso:std:iso:20022:tech:xsd:{CAMT_054}}}"


@dataclasses.dataclass(frozen=True)
class ReturnItem:
    end_to_end_id: str
    outcome: str            # "settled" | "rejected"
    amount_fen: int
    reason_code: str | None = None
    booked_on: dt.date | None = None


@dataclasses.dataclass
class ReturnReport:
    file_name: str
    sha256: str
    items: int = 0
    new_items: int = 0
    already_imported: bool = False
    settled: int = 0
    rejected: int = 0
    deny_added: int = 0
    deny_removed: int = 0


def parse_csv(text: str) -> list[ReturnItem]:
    reader = csv.reader(io.StringIO(text.lstrip("\ufeff")))
    header = next(reader, None)
    if header is None or [h.strip() for h in header] != CSV_HEADER:
        raise InputFileError(
            f"invalid header {header!r} in the returns file, expected {','.join(CSV_HEADER)}",
            f"回盘文件表头 {header!r} 无效，应为 {','.join(CSV_HEADER)}")
    items, problems = [], []
    for row in reader:
        line = reader.line_num
        if not row or all(not cell.strip() for cell in row):
            continue
        if len(row) != len(CSV_HEADER):
            problems.append((line, f"有 {len(row)} 列，应为 {len(CSV_HEADER)} 列 / {len(row)} columns, expected "
                                   f"{len(CSV_HEADER)}"))
            continue
        e2e, outcome, amount, reason, booked = (cell.strip() for cell in row)
        if outcome not in ("settled", "rejected"):
            problems.append((line, f"outcome {outcome!r} 无效，应为 settled 或 rejected / invalid outcome {outcome!r}, "
                                   "expected settled or rejected"))
            continue
        if not amount.isdigit():
            problems.append((line, f"金额 amount_fen {amount!r} 无效，应为非负整数（分）/ invalid amount_fen {amount!r}, "
                                   "expected a whole number of fen"))
            continue
        if outcome == "rejected" and not reason:
            problems.append((line, "拒绝的条目须有 reason_code / a rejected item needs a reason_code"))
            continue
        try:
            booked_on = dt.date.fromisoformat(booked) if booked else None
        except ValueError:
            problems.append((line, f"booked_on {booked!r} 无效，应为 YYYY-MM-DD / invalid booked_on {booked!r}, "
                                   "expected YYYY-MM-DD"))
            continue
        items.append(ReturnItem(e2e, outcome, int(amount), reason or None, booked_on))
    if problems:
        raise InputFileError("the returns file has invalid rows", "回盘文件中有无效的行", problems=problems)
    return items


def parse_camt054(path: pathlib.Path) -> list[ReturnItem]:
    """Validate ``path`` against camt.054.001.08 and return its items in document order."""
    validate_file(path, CAMT_054)
    items = []
    for _, entry in ET.iterparse(path):
        if entry.tag != f"{_NS}Ntry":
            continue
        booked = entry.findtext(f"{_NS}BookgDt/{_NS}Dt")
        entry_amount = entry.findtext(f"{_NS}Amt")
        for tx in entry.iter(f"{_NS}TxDtls"):
            e2e = tx.findtext(f"{_NS}Refs/{_NS}EndToEndId")
            amount = tx.findtext(f"{_NS}Amt") or entry_amount
            reason = tx.find(f"{_NS}RtrInf")
            code = None
            if reason is not None:
                code = reason.findtext(f"{_NS}Rsn/{_NS}Cd") or reason.findtext(f"{_NS}Rsn/{_NS}Prtry") or "NARR"
            items.append(ReturnItem(e2e or "", "rejected" if reason is not None else "settled", parse_yuan(amount),
                                    code, dt.date.fromisoformat(booked) if booked else None))
        entry.clear()
    return items


def build_camt054(items: Iterable[ReturnItem], *, message_id: str, created_at: dt.datetime,
                  account_number: str) -> str:
    """Return a camt.054.001.08 notification of ``items``: what a bank sends, for tests and demos."""
    from xml.sax.saxutils import escape

    parts = ['<?xml version="1.0" encoding="UTF-8"?>',
             f'<Document xmlns="urn:iso:std:iso:20022:tech:xsd:{CAMT_054}"><BkToCstmrDbtCdtNtfctn>',
             f"<GrpHdr><MsgId>{escape(message_id)}</MsgId><CreDtTm>{created_at.isoformat()}</CreDtTm></GrpHdr>",
             f"<Ntfctn><Id>{escape(message_id)}</Id>"
             f"<Acct><Id><Othr><Id>{escape(account_number)}</Id></Othr></Id></Acct>"]
    for item in items:
        amount = f'<Amt Ccy="{CURRENCY}">{format_yuan(item.amount_fen)}</Amt>'
        rejected = item.outcome == "rejected"
        booked = f"<BookgDt><Dt>{item.booked_on.isoformat()}</Dt></BookgDt>" if item.booked_on else ""
        code = "DBIT" if rejected else "CRDT"
        reason = (f"<RtrInf><Rsn><Cd>{escape(item.reason_code or 'NARR')}</Cd></Rsn></RtrInf>" if rejected else "")
        parts.append(
            f"<Ntry>{amount}<CdtDbtInd>{code}</CdtDbtInd>{'<RvslInd>true</RvslInd>' if rejected else ''}"
            f"<Sts><Cd>BOOK</Cd></Sts>{booked}<BkTxCd/>"
            f"<NtryDtls><TxDtls><Refs><EndToEndId>{escape(item.end_to_end_id)}</EndToEndId></Refs>{amount}"
            f"<CdtDbtInd>{code}</CdtDbtInd>{reason}</TxDtls></NtryDtls></Ntry>")
    parts.append("</Ntfctn></BkToCstmrDbtCdtNtfctn></Document>\n")
    return "\n".join(parts)


def items_to_csv(items: Iterable[ReturnItem]) -> str:
    out = io.StringIO()
    table = csv.writer(out, lineterminator="\n")
    table.writerow(CSV_HEADER)
    for item in items:
        table.writerow([item.end_to_end_id, item.outcome, item.amount_fen, item.reason_code or "",
                        item.booked_on.isoformat() if item.booked_on else ""])
    return out.getvalue()


def read_return_file(data: bytes, file_name: str) -> tuple[str, list[ReturnItem]]:
    """Detect the format (XML or CSV) of a return file and parse it; return (format, items)."""
    if data.lstrip().startswith(b"<"):
        with tempfile.NamedTemporaryFile(suffix=".xml") as tmp:
            tmp.write(data)
            tmp.flush()
            return "camt.054", parse_camt054(pathlib.Path(tmp.name))
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputFileError(f"{file_name} is neither XML nor UTF-8 CSV", f"{file_name} 既不是 XML 也不是 UTF-8 CSV") from exc
    return "csv", parse_csv(text)


async def import_returns(conn: asyncpg.Connection, data: bytes, file_name: str, *, grace_rides: int = 0,
                         grace_fen: int = 0) -> ReturnReport:
    """Apply a bank return file: update debits/credits, post to the ledger, update arrears."""
    sha = hashlib.sha256(data).hexdigest()
    report = ReturnReport(file_name, sha)
    if await conn.fetchval("SELECT 1 FROM settlement_return_files WHERE sha256 = $1", sha):
        report.already_imported = True
        return report
    fmt, items = read_return_file(data, file_name)
    report.items = len(items)

    async with conn.transaction():
        targets = await _targets(conn, [item.end_to_end_id for item in items])
        _check_items(items, targets)
        await conn.execute(
            "INSERT INTO settlement_return_files (sha256, file_name, format, items, new_items) VALUES ($1, $2, $3, $4, 0)",
            sha, file_name, fmt, len(items))
        lines: dict[tuple[str, str], int] = collections.defaultdict(int)
        for item in items:
            inserted = await conn.fetchval(
                """INSERT INTO settlement_returns (end_to_end_id, outcome, reason_code, amount_fen, booked_on, file_sha256)
                   VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (end_to_end_id) DO NOTHING RETURNING 1""",
                item.end_to_end_id, item.outcome, item.reason_code, item.amount_fen, item.booked_on, sha)
            if not inserted:
                continue
            report.new_items += 1
            target = targets[item.end_to_end_id]
            await _apply(conn, item, target, lines)
            if item.outcome == "settled":
                report.settled += 1
            else:
                report.rejected += 1
        await conn.execute("UPDATE settlement_return_files SET new_items = $2 WHERE sha256 = $1", sha, report.new_items)
        if lines:
            await ledger.post(conn, f"returns:{sha}", "returns",
                              [ledger.Line(account, subject, amount)
                               for (account, subject), amount in sorted(lines.items()) if amount],
                              memo=f"bank returns from {file_name}")
        report.deny_added, report.deny_removed = await arrears.refresh(conn, grace_rides=grace_rides,
                                                                       grace_fen=grace_fen)
    return report


async def _targets(conn: asyncpg.Connection, ids: list[str]) -> dict[str, asyncpg.Record]:
    rows = await conn.fetch(
        """SELECT 'debit' AS side, end_to_end_id, bank_code, amount_fen, carried_fen, status,
                  account_token, NULL::text AS operator_id, business_day
           FROM settlement_debits WHERE end_to_end_id = ANY($1::text[])
           UNION ALL
           SELECT 'credit', end_to_end_id, bank_code, amount_fen, carried_fen, status, NULL, operator_id, business_day
           FROM settlement_credits WHERE end_to_end_id = ANY($1::text[])""", ids)
    return {row["end_to_end_id"]: row for row in rows}


def _check_items(items: list[ReturnItem], targets: dict[str, asyncpg.Record]) -> None:
    problems = []
    seen: set[str] = set()
    for number, item in enumerate(items, start=1):
        target = targets.get(item.end_to_end_id)
        if item.end_to_end_id in seen:
            problems.append((number, f"端到端标识 {item.end_to_end_id!r} 重复 / duplicate end_to_end_id "
                                     f"{item.end_to_end_id!r}"))
        elif target is None:
            problems.append((number, f"未知的端到端标识 {item.end_to_end_id!r} / unknown end_to_end_id "
                                     f"{item.end_to_end_id!r}"))
        elif target["status"] == "held":
            problems.append((number, f"{item.end_to_end_id} 未曾发送银行 / {item.end_to_end_id} was never sent to a bank"))
        elif item.amount_fen != target["amount_fen"]:
            problems.append((number, f"{item.end_to_end_id} 金额为 {item.amount_fen} 分，应为 {target['amount_fen']} 分 / "
                                     f"{item.end_to_end_id} has amount {item.amount_fen} fen, expected "
                                     f"{target['amount_fen']}"))
        seen.add(item.end_to_end_id)
    if problems:
        raise InputFileError(
            f"the return file does not match the payments sent ({len(problems)} problems); nothing was imported",
            f"回盘文件与已发送的付款不符（{len(problems)} 处）；未导入任何内容",
            "ask the bank for a corrected file / 请向银行索取更正后的文件", problems=problems)


async def _apply(conn: asyncpg.Connection, item: ReturnItem, target: asyncpg.Record,
                 lines: dict[tuple[str, str], int]) -> None:
    bank, amount = target["bank_code"], item.amount_fen
    table = "settlement_debits" if target["side"] == "debit" else "settlement_credits"
    await conn.execute(
        f"UPDATE {table} SET status = $2, reason_code = $3, returned_at = now() WHERE end_to_end_id = $1",
        item.end_to_end_id, item.outcome, item.reason_code)
    if target["side"] == "debit":
        token = target["account_token"]
        lines[("collections_clearing", bank)] -= amount
        if item.outcome == "settled":
            lines[("bank", bank)] += amount
            await arrears.debit_settled(conn, token, target["carried_fen"])
        else:
            lines[("rider_receivable", token.hex())] += amount
            await arrears.debit_rejected(conn, token, amount, target["carried_fen"])
    else:
        lines[("payouts_clearing", bank)] += amount
        if item.outcome == "settled":
            lines[("bank", bank)] -= amount
        else:
            lines[("operator_payable", target["operator_id"])] -= amount
