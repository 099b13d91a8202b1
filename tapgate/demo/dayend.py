"""End of the demo day: close it, settle it, claim the subsidies and verify the journal chain."""

from __future__ import annotations

import dataclasses
import datetime as dt
import pathlib
import sys

import asyncpg
from tqdm import tqdm

from gateway.journal import ChainReport, verify_chain
from settlement import days, reconcile, run, subsidy
from settlement.crypto import AccountCipher


@dataclasses.dataclass
class DayEnd:
    settlement: run.RunResult
    operators: list[reconcile.OperatorLine]
    totals: reconcile.DayTotals
    claim: subsidy.Claim
    claim_files: list[pathlib.Path]
    chain: ChainReport
    trial_balance: dict[str, int]


async def close_and_settle(conn: asyncpg.Connection, day: dt.date, cutoff: dt.time, cipher: AccountCipher,
                           output_dir: pathlib.Path) -> DayEnd:
    """Close ``day``, run its settlement into ``output_dir``, build the month's subsidy claim, verify the chain."""
    await days.close_day(conn, day, cutoff)
    bar = tqdm(total=len(run.STEPS), desc=f"结算 settle {day}", unit="step", file=sys.stderr)

    def progress(label: str) -> None:
        if label in run.STEPS:
            bar.update(1)

    try:
        result = await run.run_day(conn, day, cipher, output_dir, progress=progress)
        bar.update(bar.total - bar.n)
    finally:
        bar.close()
    operators, totals = await reconcile.reconcile_day(conn, day)
    claim = await subsidy.build_claim(conn, day.strftime("%Y-%m"))
    claim_files = subsidy.write_claim(claim, output_dir)
    from settlement import ledger

    trial_balance = await ledger.trial_balance(conn)
    chain = await verify_chain(conn)
    return DayEnd(result, operators, totals, claim, claim_files, chain, trial_balance)
