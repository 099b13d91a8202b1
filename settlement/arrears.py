"""Arrears: a rider account whose direct debit was rejected and is not yet paid.

An account counts as in arrears while its unpaid rejected amount exceeds
``settlement.arrears_grace_fen``. It reaches the gateway's deny list (kind
``arrears``, subject = account token) once it has also taken
``settlement.arrears_grace_rides`` accepted rides since the first rejection.
A settled debit that carries the unpaid amount clears the account: the deny
list row turns inactive with a new version, so validators pick up the change
in their next delta.
"""

from __future__ import annotations

import logging

import asyncpg

from gateway.logs import log_event

log = logging.getLogger(__name__)
SOURCE = "settlement"


async def apply_returns(conn: asyncpg.Connection) -> None:
    """Apply the debit outcomes staged in ``return_new`` (see :mod:`settlement.returns`) to the arrears.

    A rejected debit adds its amount to the account's outstanding amount,
    except the part it carried from earlier debits, which was outstanding
    already. A settled debit pays what it carried.
    """
    await conn.execute("""
        INSERT INTO settlement_arrears (account_token, since, outstanding_fen)
        SELECT account_token, now(), sum(target_fen) FROM return_new
        WHERE side = 'debit' AND outcome = 'rejected' GROUP BY account_token
        ON CONFLICT (account_token) DO UPDATE
        SET outstanding_fen = settlement_arrears.outstanding_fen + (
                SELECT sum(n.target_fen - greatest(n.carried_fen, 0)) FROM return_new n
                WHERE n.side = 'debit' AND n.outcome = 'rejected' AND n.account_token = EXCLUDED.account_token),
            updated_at = now()""")
    await conn.execute("""
        UPDATE settlement_arrears a SET outstanding_fen = greatest(a.outstanding_fen - s.paid_fen, 0), updated_at = now()
        FROM (SELECT account_token, sum(greatest(carried_fen, 0)) AS paid_fen FROM return_new
              WHERE side = 'debit' AND outcome = 'settled' GROUP BY account_token) s
        WHERE a.account_token = s.account_token""")


async def refresh(conn: asyncpg.Connection, *, grace_rides: int, grace_fen: int) -> tuple[int, int]:
    """Add accounts past both graces to the deny list and remove paid ones; return (added, removed).

    Call inside a transaction. Rides are counted from the journal, so this
    must run again for rides taken after the last call to count: every
    settlement command that changes money calls it.
    """
    # TODO: rides taken after the last settlement command are counted only at
    # the next one; a periodic `tapgate settle status --refresh` closes that gap.
    added = await conn.fetch(
        """WITH due AS (
               SELECT a.account_token FROM settlement_arrears a
               WHERE NOT a.denied AND a.outstanding_fen > $1
                 AND ($2 = 0 OR (SELECT count(*) FROM taps t WHERE t.account_token = a.account_token
                                 AND t.decision = 1 AND t.received_at > a.since) >= $2)),
           listed AS (
               INSERT INTO deny_list (kind, subject, active, source)
               SELECT 'arrears', account_token, true, $3 FROM due
               ON CONFLICT (kind, subject) DO UPDATE
               SET active = true, version = nextval('deny_list_version'), changed_at = now(), source = EXCLUDED.source
               RETURNING subject)
           UPDATE settlement_arrears SET denied = true, updated_at = now()
           WHERE account_token IN (SELECT subject FROM listed) RETURNING account_token""",
        grace_fen, grace_rides, SOURCE)
    removed = await conn.fetch(
        """WITH paid AS (
               DELETE FROM settlement_arrears WHERE outstanding_fen <= $1 RETURNING account_token, denied)
           UPDATE deny_list SET active = false, version = nextval('deny_list_version'), changed_at = now()
           WHERE kind = 'arrears' AND active AND subject IN (SELECT account_token FROM paid WHERE denied)
           RETURNING subject""", grace_fen)
    if added or removed:
        log_event(log, logging.INFO, "settlement.arrears_refreshed", added=len(added), removed=len(removed))
    return len(added), len(removed)
