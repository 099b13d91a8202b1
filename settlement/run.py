"""The settlement run of one closed business day.

A run is a sequence of steps, each committed in its own transaction together
with the run's ``step`` marker, so a run killed at any point resumes at the
first step not committed:

1. ``accrual``: post the day's net fares, ``fare_fen + adjustment_fen``
   of its taps (rider receivables against operator payables and fees);
2. ``subsidy``: post the subsidy owed by the finance bureau for free and
   discounted rides;
3. ``debits``: one direct debit per rider account with a receivable balance
   (the day's fares plus anything earlier rejected or held, less credits
   left by tap-offs);
4. ``credits``: one credit transfer per operator with a payable balance;
5. ``files``: per cooperating bank, pain.008 + CSV for its debits and
   pain.001 + CSV for its credits.

Files are derived only from committed rows and the run's stored creation
time, so writing them again gives the same bytes. The ``files`` step always
rewrites every file and checks each digest against the one recorded before.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import logging
import os
import pathlib
import signal
from typing import Callable

import asyncpg

from gateway import timeutil
from gateway.logs import log_event
from settlement import arrears, days, ledger
from settlement.crypto import AccountCipher
from settlement.days import ClosedDay, require_closed_day
from settlement.errors import SettlementError
from settlement.isofiles import (PAIN_001, PAIN_008, CreditTransferWriter, DirectDebitWriter, atomic_file, format_yuan,
                                 commit_file, discard_file, validate_file)

log = logging.getLogger(__name__)

STEPS = ("accrual", "subsidy", "debits", "credits", "files")
# Test hook: the process SIGKILLs itself after this many committed steps
# (each written file counts as a step), to prove that a killed run resumes.
KILL_AFTER_ENV = "TAPGATE_SETTLE_KILL_AFTER_STEPS"
FETCH_ROWS = 2000
# Arbitrary base of the advisory lock keys that serialise runs of one day.
_RUN_LOCK = 0x5E77_0000_0000


@dataclasses.dataclass
class RunResult:
    business_day: dt.date
    debits: int = 0
    debit_fen: int = 0
    held_debits: int = 0
    credits: int = 0
    credit_fen: int = 0
    fee_fen: int = 0
    files: list[str] = dataclasses.field(default_factory=list)
    resumed_from: str = ""


class _StepCounter:
    def __init__(self) -> None:
        limit = os.environ.get(KILL_AFTER_ENV, "")
        self.limit = int(limit) if limit.isdigit() else None
        self.done = 0

    def tick(self) -> None:
        self.done += 1
        if self.limit is not None and self.done >= self.limit:
            os.kill(os.getpid(), signal.SIGKILL)


def _ymd(day: dt.date) -> str:
    return day.strftime("%Y%m%d")


async def _set_step(conn: asyncpg.Connection, day: dt.date, step: str) -> None:
    await conn.execute("UPDATE settlement_runs SET step = $2 WHERE business_day = $1", day, step)


async def _check_order(conn: asyncpg.Connection, day: dt.date) -> None:
    pending = await conn.fetchval(
        """SELECT min(d.business_day) FROM settlement_days d LEFT JOIN settlement_runs r USING (business_day)
           WHERE d.business_day < $1 AND (r.completed_at IS NULL)""", day)
    if pending is not None:
        raise SettlementError(
            f"business day {pending} is closed but not settled; days settle in order",
            f"营业日 {pending} 已日结但尚未结算；须按顺序结算",
            f"run `tapgate settle run {pending}` first / 请先运行 `tapgate settle run {pending}`")


async def _accrual(conn: asyncpg.Connection, day: dt.date) -> None:
    # The net charge per account and operator is read from the journal, not
    # from settlement_account_fares, because a net made negative by tap-off
    # credits has no row there. A negative receivable line is a credit that
    # stays on the rider's account and reduces a later debit. Fee per
    # operator and day on its net fares, rounded half up to the fen.
    closed = await require_closed_day(conn, day)
    await ledger.post_query(conn, f"accrual:{day}", "accrual", f"""
        WITH nets AS ({days.day_net_fares_sql(first_param=2)}),
        ops AS (
            SELECT n.operator_id, sum(n.net_fen)::bigint AS fare,
                   floor((sum(n.net_fen) * coalesce(max(a.fee_bp), 0) + 5000) / 10000.0)::bigint AS fee
            FROM nets n LEFT JOIN settlement_operator_accounts a USING (operator_id)
            GROUP BY n.operator_id)
        SELECT 'rider_receivable' AS account, encode(account_token, 'hex') AS subject, sum(net_fen) AS amount_fen
        FROM nets GROUP BY account_token
        UNION ALL SELECT 'operator_payable', operator_id, -(fare - fee) FROM ops
        UNION ALL SELECT 'fee_income', operator_id, -fee FROM ops""", *days.day_params(closed), day=day,
        memo=f"fares of business day {day}")


async def _subsidy(conn: asyncpg.Connection, day: dt.date) -> None:
    await ledger.post_query(conn, f"subsidy:{day}", "subsidy", """
        SELECT 'subsidy_receivable' AS account, operator_id AS subject, sum(subsidy_fen) AS amount_fen
        FROM settlement_category_totals WHERE business_day = $2 GROUP BY operator_id
        UNION ALL
        SELECT 'subsidy_payable', operator_id, -sum(subsidy_fen)
        FROM settlement_category_totals WHERE business_day = $2 GROUP BY operator_id""", day, day=day,
        memo=f"subsidy for free and discounted rides of business day {day}")


async def _debits(conn: asyncpg.Connection, day: dt.date) -> None:
    # Every rider account with a receivable balance gets one debit: the day's
    # net fares plus whatever an earlier debit left unpaid (rejected) or held,
    # less any credit left by tap-offs. day_fen is the day's accrual for the
    # account when positive; carried_fen is the rest of the balance (negative
    # when an earlier credit reduces the debit). An account whose balance is
    # zero or a credit gets no debit, and the credit stays receivable.
    # TODO: the balance scan reads every receivable line ever posted; keep a
    # running balance table once the ledger contains years of history.
    await conn.execute("""
        INSERT INTO settlement_debits (business_day, account_token, debit_no, end_to_end_id, bank_code,
                                       day_fen, carried_fen, amount_fen, status)
        SELECT $1, b.token, b.n, 'TG' || to_char($1::date, 'YYYYMMDD') || 'D' || lpad(b.n::text, 9, '0'),
               r.bank_code, coalesce(f.day_fen, 0), b.balance - coalesce(f.day_fen, 0), b.balance,
               CASE WHEN r.bank_code IS NULL THEN 'held' ELSE 'instructed' END
        FROM (SELECT decode(subject, 'hex') AS token, sum(amount_fen) AS balance,
                     row_number() OVER (ORDER BY subject) AS n
              FROM ledger_lines WHERE account = 'rider_receivable'
              GROUP BY subject HAVING sum(amount_fen) > 0) b
        LEFT JOIN (SELECT decode(l.subject, 'hex') AS token, greatest(sum(l.amount_fen), 0) AS day_fen
                   FROM ledger_lines l JOIN ledger_postings p USING (posting_id)
                   WHERE p.ref = 'accrual:' || $1::date::text AND l.account = 'rider_receivable'
                   GROUP BY l.subject) f ON f.token = b.token
        LEFT JOIN settlement_rider_accounts r ON r.account_token = b.token""", day)
    await ledger.post_query(conn, f"debits:{day}", "debits", """
        SELECT 'collections_clearing' AS account, bank_code AS subject, sum(amount_fen) AS amount_fen
        FROM settlement_debits WHERE business_day = $2 AND status = 'instructed' GROUP BY bank_code
        UNION ALL
        SELECT 'rider_receivable', encode(account_token, 'hex'), -amount_fen
        FROM settlement_debits WHERE business_day = $2 AND status = 'instructed'""", day, day=day,
        memo=f"direct debits of business day {day}")


async def _credits(conn: asyncpg.Connection, day: dt.date) -> None:
    await conn.execute("""
        INSERT INTO settlement_credits (business_day, operator_id, credit_no, end_to_end_id, bank_code,
                                        fare_fen, fee_fen, carried_fen, amount_fen, status)
        SELECT $1, b.operator_id, b.n, 'TG' || to_char($1::date, 'YYYYMMDD') || 'C' || lpad(b.n::text, 9, '0'),
               a.bank_code, coalesce(f.fare_fen, 0), coalesce(fee.fee_fen, 0),
               b.owed - (coalesce(f.fare_fen, 0) - coalesce(fee.fee_fen, 0)), b.owed,
               CASE WHEN a.bank_code IS NULL THEN 'held' ELSE 'instructed' END
        FROM (SELECT subject AS operator_id, -sum(amount_fen) AS owed, row_number() OVER (ORDER BY subject) AS n
              FROM ledger_lines WHERE account = 'operator_payable'
              GROUP BY subject HAVING sum(amount_fen) < 0) b
        LEFT JOIN (SELECT l.subject AS operator_id, -sum(l.amount_fen) AS fare_fen
                   FROM ledger_lines l JOIN ledger_postings p USING (posting_id)
                   WHERE p.ref = 'accrual:' || $1::date::text AND l.account IN ('operator_payable', 'fee_income')
                   GROUP BY l.subject) f USING (operator_id)
        LEFT JOIN (SELECT l.subject AS operator_id, -l.amount_fen AS fee_fen
                   FROM ledger_lines l JOIN ledger_postings p USING (posting_id)
                   WHERE p.ref = 'accrual:' || $1::date::text AND l.account = 'fee_income') fee USING (operator_id)
        LEFT JOIN settlement_operator_accounts a USING (operator_id)""", day)
    await ledger.post_query(conn, f"credits:{day}", "credits", """
        SELECT 'operator_payable' AS account, operator_id AS subject, amount_fen
        FROM settlement_credits WHERE business_day = $2 AND status = 'instructed'
        UNION ALL
        SELECT 'payouts_clearing', bank_code, -sum(amount_fen)
        FROM settlement_credits WHERE business_day = $2 AND status = 'instructed' GROUP BY bank_code""",
        day, day=day, memo=f"credit transfers of business day {day}")


async def _run_postings_step(conn: asyncpg.Connection, day: dt.date, step: str) -> None:
    async with conn.transaction():
        current = await conn.fetchval("SELECT step FROM settlement_runs WHERE business_day = $1 FOR UPDATE", day)
        if STEPS.index(step) <= _step_index(current):
            return
        await {"accrual": _accrual, "subsidy": _subsidy, "debits": _debits, "credits": _credits}[step](conn, day)
        await _set_step(conn, day, step)


def _step_index(step: str | None) -> int:
    if step in STEPS:
        return STEPS.index(step)
    if step == "complete":
        return len(STEPS)
    return -1


async def run_day(conn: asyncpg.Connection, day: dt.date, cipher: AccountCipher, output_dir: str | os.PathLike[str],
                  *, progress: Callable[[str], None] | None = None, grace_rides: int = 0,
                  grace_fen: int = 0) -> RunResult:
    """Settle closed business ``day``: post, build debits and credits, and write the bank files.

    Safe to call again at any time: a finished run only rewrites its files
    (same bytes), an interrupted one resumes.
    """
    closed = await require_closed_day(conn, day)
    await _check_order(conn, day)
    # One run per day at a time: two would write the same temporary files.
    lock_key = _RUN_LOCK + day.toordinal()
    if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", lock_key):
        raise SettlementError(f"another settlement run of business day {day} is in progress",
                              f"营业日 {day} 的另一个结算正在运行", "wait for it to finish / 请等待其完成")
    try:
        return await _run_locked(conn, closed, cipher, output_dir, progress, grace_rides, grace_fen)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", lock_key)


async def _run_locked(conn: asyncpg.Connection, closed: ClosedDay, cipher: AccountCipher,
                      output_dir: str | os.PathLike[str], progress: Callable[[str], None] | None,
                      grace_rides: int, grace_fen: int) -> RunResult:
    day = closed.business_day
    await conn.execute("INSERT INTO settlement_runs (business_day) VALUES ($1) ON CONFLICT DO NOTHING", day)
    result = RunResult(day)
    result.resumed_from = await conn.fetchval("SELECT step FROM settlement_runs WHERE business_day = $1", day)
    counter = _StepCounter()
    for step in STEPS[:-1]:
        await _run_postings_step(conn, day, step)
        counter.tick()
        if progress:
            progress(step)

    await write_files(conn, closed, cipher, pathlib.Path(output_dir), counter, result, progress)
    async with conn.transaction():
        await conn.execute("UPDATE settlement_runs SET step = 'complete', completed_at = coalesce(completed_at, now()) "
                           "WHERE business_day = $1", day)
        await arrears.refresh(conn, grace_rides=grace_rides, grace_fen=grace_fen)

    row = await conn.fetchrow("""
        SELECT count(*) FILTER (WHERE status <> 'held') AS debits,
               coalesce(sum(amount_fen) FILTER (WHERE status <> 'held'), 0)::bigint AS debit_fen,
               count(*) FILTER (WHERE status = 'held') AS held
        FROM settlement_debits WHERE business_day = $1""", day)
    result.debits, result.debit_fen, result.held_debits = row["debits"], row["debit_fen"], row["held"]
    row = await conn.fetchrow("""
        SELECT count(*) FILTER (WHERE status <> 'held') AS credits,
               coalesce(sum(amount_fen) FILTER (WHERE status <> 'held'), 0)::bigint AS credit_fen,
               coalesce(sum(fee_fen), 0)::bigint AS fee_fen
        FROM settlement_credits WHERE business_day = $1""", day)
    result.credits, result.credit_fen, result.fee_fen = row["credits"], row["credit_fen"], row["fee_fen"]
    log_event(log, logging.INFO, "settlement.run_completed", day=day, debits=result.debits,
              debit_fen=result.debit_fen, credits=result.credits, credit_fen=result.credit_fen,
              held_debits=result.held_debits, resumed_from=result.resumed_from)
    return result


def file_names(day: dt.date, bank_code: str) -> dict[str, str]:
    ymd = _ymd(day)
    return {
        "pain.008": f"{ymd}_{bank_code}_{PAIN_008}.xml",
        "debits.csv": f"{ymd}_{bank_code}_debits.csv",
        "pain.001": f"{ymd}_{bank_code}_{PAIN_001}.xml",
        "credits.csv": f"{ymd}_{bank_code}_credits.csv",
    }


def message_id(day: dt.date, bank_code: str, kind: str) -> str:
    """Return the message id of a bank file: unique per day, bank and kind, at most 35 characters."""
    return f"TG{_ymd(day)}{bank_code}{'DD' if kind == 'pain.008' else 'CT'}"


async def write_files(conn: asyncpg.Connection, closed: ClosedDay, cipher: AccountCipher, output_dir: pathlib.Path,
                      counter: _StepCounter | None, result: RunResult,
                      progress: Callable[[str], None] | None = None) -> None:
    day = closed.business_day
    created_at = await conn.fetchval("SELECT created_at FROM settlement_runs WHERE business_day = $1", day)
    execution_date = created_at.astimezone(timeutil.LOCAL_TZ).date()
    folder = output_dir / _ymd(day)
    banks = await conn.fetch("""
        SELECT b.bank_code, b.agency_account_enc,
               (SELECT count(*) FROM settlement_debits d WHERE d.business_day = $1 AND d.bank_code = b.bank_code
                  AND d.status <> 'held') AS debits,
               (SELECT coalesce(sum(amount_fen), 0)::bigint FROM settlement_debits d WHERE d.business_day = $1
                  AND d.bank_code = b.bank_code AND d.status <> 'held') AS debit_fen,
               (SELECT count(*) FROM settlement_credits c WHERE c.business_day = $1 AND c.bank_code = b.bank_code
                  AND c.status <> 'held') AS credits,
               (SELECT coalesce(sum(amount_fen), 0)::bigint FROM settlement_credits c WHERE c.business_day = $1
                  AND c.bank_code = b.bank_code AND c.status <> 'held') AS credit_fen
        FROM settlement_banks b ORDER BY b.bank_code""", day)
    for bank in banks:
        names = file_names(day, bank["bank_code"])
        agency_account = cipher.open(bank["agency_account_enc"])
        if bank["debits"]:
            await _write_debit_files(conn, cipher, day, bank, agency_account, created_at, execution_date, folder,
                                     names, result)
            _file_done(counter, progress, names["pain.008"])
        if bank["credits"]:
            await _write_credit_files(conn, cipher, day, bank, agency_account, created_at, execution_date, folder,
                                      names, result)
            _file_done(counter, progress, names["pain.001"])


def _file_done(counter: _StepCounter | None, progress: Callable[[str], None] | None, name: str) -> None:
    if counter is not None:
        counter.tick()
    if progress is not None:
        progress(name)


async def _record_file(conn: asyncpg.Connection, day: dt.date, bank_code: str, kind: str, path: pathlib.Path,
                       msg_id: str | None, tx_count: int, total_fen: int, sha256: str, size: int) -> None:
    previous = await conn.fetchval(
        "SELECT sha256 FROM settlement_files WHERE business_day = $1 AND bank_code = $2 AND kind = $3",
        day, bank_code, kind)
    if previous is not None and previous != sha256:
        raise SettlementError(
            f"rewriting {path.name} gave different bytes than the first run (sha256 {previous[:12]}… vs {sha256[:12]}…)",
            f"重新生成 {path.name} 的内容与首次不同（sha256 {previous[:12]}… 与 {sha256[:12]}…）",
            "the settlement tables were changed after the run; investigate before sending / 结算数据在运行后被修改，发送前请核查")
    if previous is None:
        await conn.execute(
            """INSERT INTO settlement_files (business_day, bank_code, kind, file_name, message_id, tx_count,
                                             total_fen, sha256, size_bytes)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)""",
            day, bank_code, kind, path.name, msg_id, tx_count, total_fen, sha256, size)


async def _write_debit_files(conn, cipher, day, bank, agency_account, created_at, execution_date, folder, names, result):
    code = bank["bank_code"]
    xml_path, csv_path = folder / names["pain.008"], folder / names["debits.csv"]
    msg_id = message_id(day, code, "pain.008")
    remittance = f"沂源公共交通及场馆费用 {day} Yiyuan transit and venue fares"
    try:
        with atomic_file(xml_path) as xml_out, atomic_file(csv_path) as csv_out:
            writer = DirectDebitWriter(xml_out, message_id=msg_id, created_at=created_at,
                                       collection_date=execution_date, tx_count=bank["debits"],
                                       total_fen=bank["debit_fen"], bank_code=code, agency_account=agency_account,
                                       remittance=remittance)
            table = csv.writer(csv_out, lineterminator="\n")
            table.writerow(["message_id", "end_to_end_id", "bank_code", "account_number", "amount_fen",
                            "amount_yuan", "currency", "collection_date", "account_token"])
            async with conn.transaction():
                query = """SELECT d.end_to_end_id, d.amount_fen, d.account_token, r.account_enc
                           FROM settlement_debits d JOIN settlement_rider_accounts r USING (account_token)
                           WHERE d.business_day = $1 AND d.bank_code = $2 AND d.status <> 'held'
                           ORDER BY d.debit_no"""
                async for row in conn.cursor(query, day, code, prefetch=FETCH_ROWS):
                    number = cipher.open(row["account_enc"])
                    writer.transaction(row["end_to_end_id"], row["amount_fen"], number,
                                       mandate_id=row["account_token"].hex())
                    table.writerow([msg_id, row["end_to_end_id"], code, number, row["amount_fen"],
                                    format_yuan(row["amount_fen"]), "CNY", execution_date.isoformat(),
                                    row["account_token"].hex()])
            writer.close()
        validate_file(xml_path.with_name(xml_path.name + ".tmp"), PAIN_008)
    except BaseException:
        discard_file(xml_path)
        discard_file(csv_path)
        raise
    async with conn.transaction():
        for path, kind, mid in ((xml_path, "pain.008", msg_id), (csv_path, "debits.csv", None)):
            sha, size = commit_file(path)
            await _record_file(conn, day, code, kind, path, mid, bank["debits"], bank["debit_fen"], sha, size)
            result.files.append(str(path))


async def _write_credit_files(conn, cipher, day, bank, agency_account, created_at, execution_date, folder, names, result):
    code = bank["bank_code"]
    xml_path, csv_path = folder / names["pain.001"], folder / names["credits.csv"]
    msg_id = message_id(day, code, "pain.001")
    remittance = f"沂源公共交通及场馆票款 {day} Yiyuan transit and venue fares, net of fees"
    try:
        with atomic_file(xml_path) as xml_out, atomic_file(csv_path) as csv_out:
            writer = CreditTransferWriter(xml_out, message_id=msg_id, created_at=created_at,
                                          execution_date=execution_date, tx_count=bank["credits"],
                                          total_fen=bank["credit_fen"], bank_code=code,
                                          agency_account=agency_account, remittance=remittance)
            table = csv.writer(csv_out, lineterminator="\n")
            table.writerow(["message_id", "end_to_end_id", "bank_code", "account_number", "amount_fen",
                            "amount_yuan", "currency", "execution_date", "operator_id", "fare_fen", "fee_fen"])
            rows = await conn.fetch(
                """SELECT c.end_to_end_id, c.amount_fen, c.operator_id, c.fare_fen, c.fee_fen, a.account_enc,
                          o.name_zh, o.name_en
                   FROM settlement_credits c JOIN settlement_operator_accounts a USING (operator_id)
                   JOIN operators o USING (operator_id)
                   WHERE c.business_day = $1 AND c.bank_code = $2 AND c.status <> 'held' ORDER BY c.credit_no""",
                day, code)
            for row in rows:
                number = cipher.open(row["account_enc"])
                writer.transaction(row["end_to_end_id"], row["amount_fen"], number,
                                   creditor_name=f"{row['name_zh']} {row['name_en']}"[:140])
                table.writerow([msg_id, row["end_to_end_id"], code, number, row["amount_fen"],
                                format_yuan(row["amount_fen"]), "CNY", execution_date.isoformat(), row["operator_id"],
                                row["fare_fen"], row["fee_fen"]])
            writer.close()
        validate_file(xml_path.with_name(xml_path.name + ".tmp"), PAIN_001)
    except BaseException:
        discard_file(xml_path)
        discard_file(csv_path)
        raise
    async with conn.transaction():
        for path, kind, mid in ((xml_path, "pain.001", msg_id), (csv_path, "credits.csv", None)):
            sha, size = commit_file(path)
            await _record_file(conn, day, code, kind, path, mid, bank["credits"], bank["credit_fen"], sha, size)
            result.files.append(str(path))
