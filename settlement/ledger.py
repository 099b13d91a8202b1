"""Double-entry ledger in PostgreSQL.

A posting is a set of lines ``(account, subject, amount_fen)``: a positive
amount is a debit, a negative one a credit. The database enforces the rules
(settlement/migrations/0001_ledger.sql): after each INSERT of lines every
posting it touched sums to zero, at commit every posting has two or more lines
summing to zero, lines join only a posting created by the same transaction,
and no row is ever updated or deleted. A correction is a reversing posting.

Each posting has a unique ``ref``, which makes posting idempotent: posting
the same ref again returns the existing posting id and changes nothing.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Iterable, Sequence

import asyncpg

from settlement.errors import SettlementError

ACCOUNTS = ("rider_receivable", "operator_payable", "fee_income", "collections_clearing",
            "payouts_clearing", "bank", "subsidy_receivable", "subsidy_payable")


class _NothingToPost(Exception):
    pass


@dataclasses.dataclass(frozen=True)
class Line:
    account: str
    subject: str
    amount_fen: int


async def _create(conn: asyncpg.Connection, ref: str, kind: str, day: dt.date | None,
                  memo: str, reverses: int | None) -> int | None:
    """Insert the posting row; return None when ``ref`` exists already."""
    return await conn.fetchval(
        """INSERT INTO ledger_postings (ref, kind, business_day, memo, reverses)
           VALUES ($1, $2, $3, $4, $5) ON CONFLICT (ref) DO NOTHING RETURNING posting_id""",
        ref, kind, day, memo, reverses)


async def existing(conn: asyncpg.Connection, ref: str) -> int | None:
    return await conn.fetchval("SELECT posting_id FROM ledger_postings WHERE ref = $1", ref)


async def post(conn: asyncpg.Connection, ref: str, kind: str, lines: Sequence[Line], *,
               day: dt.date | None = None, memo: str = "", reverses: int | None = None) -> int:
    """Post ``lines`` under ``ref`` and return the posting id (the existing one if already posted).

    Call inside a transaction together with the state change the posting
    records, so both commit or neither does.
    """
    posting_id = await _create(conn, ref, kind, day, memo, reverses)
    if posting_id is None:
        return await existing(conn, ref)
    await conn.execute(
        """INSERT INTO ledger_lines (posting_id, line_no, account, subject, amount_fen)
           SELECT $1, n, a, s, m FROM unnest($2::text[], $3::text[], $4::bigint[]) WITH ORDINALITY AS u(a, s, m, n)""",
        posting_id, [line.account for line in lines], [line.subject for line in lines],
        [line.amount_fen for line in lines])
    return posting_id


async def post_query(conn: asyncpg.Connection, ref: str, kind: str, lines_sql: str, *args: object,
                     day: dt.date | None = None, memo: str = "") -> int | None:
    """Post the lines returned by ``lines_sql`` (columns account, subject, amount_fen).

    The lines are computed and inserted by PostgreSQL in one statement, so a
    posting with hundreds of thousands of lines never passes through Python.
    Parameters of ``lines_sql`` start at ``$2``; ``$1`` is the posting id.
    Lines are numbered by (account, subject) so the result is deterministic.
    Return None, posting nothing, when the query returns no non-zero line.
    """
    found = await existing(conn, ref)
    if found is not None:
        return found
    try:
        # A savepoint, so that a query with no lines leaves no empty posting behind.
        async with conn.transaction():
            posting_id = await _create(conn, ref, kind, day, memo, None)
            status = await conn.execute(
                f"""INSERT INTO ledger_lines (posting_id, line_no, account, subject, amount_fen)
                    SELECT $1::bigint, row_number() OVER (ORDER BY q.account, q.subject), q.account, q.subject,
                           q.amount_fen
                    FROM ({lines_sql}) q WHERE q.amount_fen <> 0""",
                posting_id, *args)
            if status.split()[-1] == "0":
                raise _NothingToPost
    except _NothingToPost:
        return None
    return posting_id


async def reverse(conn: asyncpg.Connection, posting_id: int, *, memo: str = "") -> int:
    """Post the mirror image of ``posting_id`` (every amount negated) and return its id."""
    async with conn.transaction():
        original = await conn.fetchrow("SELECT * FROM ledger_postings WHERE posting_id = $1", posting_id)
        if original is None:
            raise SettlementError(f"ledger posting {posting_id} not found", f"找不到账务分录 {posting_id}")
        done = await conn.fetchval("SELECT posting_id FROM ledger_postings WHERE reverses = $1", posting_id)
        if done is not None:
            return done
        new_id = await _create(conn, f"reversal:{posting_id}", "reversal", original["business_day"],
                               memo or f"reverses {original['ref']}", posting_id)
        await conn.execute(
            """INSERT INTO ledger_lines (posting_id, line_no, account, subject, amount_fen)
               SELECT $1, line_no, account, subject, -amount_fen FROM ledger_lines WHERE posting_id = $2""",
            new_id, posting_id)
        return new_id


async def balance(conn: asyncpg.Connection, account: str, subject: str) -> int:
    return await conn.fetchval(
        "SELECT coalesce(sum(amount_fen), 0) FROM ledger_lines WHERE account = $1 AND subject = $2",
        account, subject)


async def trial_balance(conn: asyncpg.Connection) -> dict[str, int]:
    """Return the balance of each account type; they sum to zero when the ledger balances."""
    rows = await conn.fetch("SELECT account, sum(amount_fen) AS total FROM ledger_lines GROUP BY account")
    return {row["account"]: int(row["total"]) for row in rows}


def lines_total(lines: Iterable[Line]) -> int:
    return sum(line.amount_fen for line in lines)
