"""Benchmark: settling a business day of one million taps, time and peak memory.

What it does, on this machine, against a fresh embedded PostgreSQL (or
``--dsn``):

1. generates N taps for one business day (default 1,000,000) spread over
   ``--accounts`` rider accounts, 12 operators and 3 banks. They are written
   with COPY in journal batches of 512, as the gateway's group commit would.
   70 % pay full fare, 20 % ride free and 10 % at a discount by rider category;
2. imports the banks, operator accounts and every rider account (CSV,
   encrypted at rest) through the library, timed;
3. runs ``tapgate settle close-day``, ``tapgate settle run``, the same run again
   (must rewrite byte-identical files), ``import-returns`` of a CSV with 2 %
   of the debits rejected, and ``reconcile``, each as a child process whose
   own peak RSS (``VmHWM`` from /proc/self/status) is reported.

The PostgreSQL server's memory is not included; the child processes stream
rows through server-side cursors and SQL aggregation, so their peak RSS
should not grow with N.

    python benchmarks/bench_settlement.py --taps 1000000 --accounts 300000

Prints a JSON summary; ``--output FILE`` also writes it. Results go to the
settlement section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import datetime as dt
import hashlib
import json
import os
import pathlib
import random
import subprocess
import sys
import tempfile
import time

import asyncpg

from gateway import timeutil
from gateway.pgembed import EmbeddedPostgres
from settlement import accounts
from settlement.crypto import AccountCipher, load_or_create_key
from tapgate import runtime

DAY = dt.date(2026, 11, 30)
BATCH_TAPS = 512
COPY_CHUNK = 50_000
OPERATORS = [f"bus{n:02d}" for n in range(1, 11)] + ["museum", "stadium"]
BANKS = ["ICBC", "ABC", "RCB"]
COLUMNS = ["tap_id", "business_day", "batch_id", "device_id", "device_tap_id", "tap_time", "received_at", "offline",
           "operator_id", "route_id", "tap_kind", "medium", "holder_token", "account_token", "decision", "reason",
           "rider_category", "fare_fen", "full_fare_fen", "discount_kinds", "request_digest"]

# The child runs the real CLI and reports its own peak RSS on its last stderr
# line. VmHWM belongs to the address space made by exec; ru_maxrss would
# instead keep the peak inherited from this (larger) parent across fork and exec.
CHILD = ("import sys\n"
         "from tapgate.cli import main\n"
         "status = main(sys.argv[1:])\n"
         "hwm = [l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM:')][0]\n"
         "print('MAXRSS_KB', hwm, file=sys.stderr)\n"
         "sys.exit(status)\n")


def account_token(n: int) -> bytes:
    return hashlib.blake2b(n.to_bytes(8, "big"), digest_size=16).digest()


def tap_rows(count: int, accounts_count: int, seed: int):
    """Yield (batch_id, rows) chunks of generated taps; rows follow COLUMNS."""
    rng = random.Random(seed)
    start, _ = timeutil.day_bounds(DAY)
    tokens = [account_token(n) for n in range(accounts_count)]
    digest = hashlib.sha256(b"bench").digest()
    rows, batch_id = [], 1
    for tap_id in range(1, count + 1):
        if tap_id % BATCH_TAPS == 1 and tap_id > 1:
            batch_id += 1
        # Riders' activity is skewed: a few ride often, most once or twice.
        token = tokens[min(int(rng.expovariate(1.0) * accounts_count / 3), accounts_count - 1)]
        moment = start + dt.timedelta(seconds=rng.randrange(86_400))
        roll = rng.random()
        if roll < 0.7:
            category, fare, kinds = "adult", 200, []
        elif roll < 0.9:
            category, fare, kinds = "senior", 0, ["category"]
        else:
            category, fare, kinds = "student", 100, ["category"]
        operator = OPERATORS[rng.randrange(len(OPERATORS))]
        rows.append((tap_id, DAY, batch_id, f"dev-{operator}", tap_id, moment, moment, False, operator, "r1", 0, 2,
                     token, token, 1, 0, category, fare, 200, kinds, digest))
        if len(rows) >= COPY_CHUNK:
            yield rows
            rows = []
    if rows:
        yield rows


async def generate(dsn: str, taps: int, accounts_count: int, seed: int) -> float:
    conn = await asyncpg.connect(dsn)
    started = time.perf_counter()
    try:
        await conn.execute("SELECT tapgate_ensure_tap_partitions($1, $1)", DAY)
        await conn.executemany("INSERT INTO operators (operator_id, kind, name_zh, name_en) VALUES ($1, $2, $3, $4)",
                               [(op, "bus" if op.startswith("bus") else "venue", f"运营单位{op}", f"Operator {op}")
                                for op in OPERATORS])
        for rows in tap_rows(taps, accounts_count, seed):
            await conn.copy_records_to_table("taps", records=rows, columns=COLUMNS)
        last_batch = (taps + BATCH_TAPS - 1) // BATCH_TAPS
        await conn.execute(
            """INSERT INTO journal_batches (batch_id, worker, tap_count, digest, prev_hash, chain_hash)
               SELECT b, 'bench', 1, '\\x00', '\\x00', '\\x00' FROM generate_series(1, $1::bigint) b""", last_batch)
        await conn.execute("SELECT setval('tap_id_seq', $1), setval('journal_batch_seq', $2)", taps, last_batch)
        await conn.execute("ANALYZE taps")
    finally:
        await conn.close()
    return time.perf_counter() - started


async def import_all(dsn: str, key_file: pathlib.Path, accounts_count: int) -> float:
    cipher = AccountCipher(load_or_create_key(key_file))
    banks = "bank_code,name_zh,name_en,agency_account\n" + "".join(
        f"{code},{code}沂源支行,{code} Yiyuan,16020001{n:010d}\n" for n, code in enumerate(BANKS))
    operators = "operator_id,bank_code,account_number,fee_bp\n" + "".join(
        f"{op},{BANKS[n % len(BANKS)]},95588{n:012d},50\n" for n, op in enumerate(OPERATORS))
    riders = "account_token,bank_code,account_number\n" + "".join(
        f"{account_token(n).hex()},{BANKS[n % len(BANKS)]},6222{n:015d}\n" for n in range(accounts_count))
    conn = await asyncpg.connect(dsn)
    started = time.perf_counter()
    try:
        for kind, text in (("banks", banks), ("operators", operators), ("riders", riders)):
            report = await accounts.import_accounts(conn, text, kind, cipher, source_name=f"bench-{kind}.csv")
            if report.problems:
                raise SystemExit(f"{kind}: {report.problems[:3]}")
    finally:
        await conn.close()
    return time.perf_counter() - started


def settle(dsn: str, key_file: pathlib.Path, *args: str) -> dict:
    env = dict(os.environ, TAPGATE_SETTLEMENT_ACCOUNT_KEY_FILE=str(key_file), TAPGATE_LOG_LEVEL="WARNING")
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", CHILD, "settle", *args, "--dsn", dsn], env=env,
                          capture_output=True, text=True, timeout=3600)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"tapgate settle {' '.join(args)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    maxrss = [line for line in done.stderr.splitlines() if line.startswith("MAXRSS_KB")]
    return {"seconds": round(seconds, 2), "peak_rss_mib": round(int(maxrss[-1].split()[1]) / 1024, 1)}


def digests(folder: pathlib.Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


async def returns_file(dsn: str, path: pathlib.Path, share: float, seed: int) -> int:
    rng = random.Random(seed)
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT end_to_end_id, amount_fen FROM settlement_debits WHERE business_day = $1 "
                                "AND status = 'instructed' ORDER BY debit_no", DAY)
    finally:
        await conn.close()
    with open(path, "w", newline="", encoding="utf-8") as out:
        table = csv.writer(out, lineterminator="\n")
        table.writerow(["end_to_end_id", "outcome", "amount_fen", "reason_code", "booked_on"])
        for row in rows:
            rejected = rng.random() < share
            table.writerow([row["end_to_end_id"], "rejected" if rejected else "settled", row["amount_fen"],
                            "AM04" if rejected else "", (DAY + dt.timedelta(days=1)).isoformat()])
    return len(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--taps", type=int, default=1_000_000, help="taps to generate (default 1000000)")
    parser.add_argument("--accounts", type=int, default=300_000, help="rider accounts (default 300000)")
    parser.add_argument("--seed", type=int, default=1, help="random seed of the generated day (default 1)")
    parser.add_argument("--dsn", help="an empty migrated database; default: a new embedded PostgreSQL")
    parser.add_argument("--output", type=pathlib.Path, help="also write the JSON summary here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-settle-") as tmp:
        work = pathlib.Path(tmp)
        server = None
        dsn = args.dsn
        if not dsn:
            server = EmbeddedPostgres(work / "pgdata")
            dsn = server.start()
        try:
            asyncio.run(runtime.migrate_all(dsn))
            key_file, out = work / "account.key", work / "out"
            summary: dict = {"taps": args.taps, "accounts": args.accounts, "seed": args.seed,
                             "cpu_count": os.cpu_count()}
            summary["generate_copy_s"] = round(asyncio.run(generate(dsn, args.taps, args.accounts, args.seed)), 2)
            summary["import_accounts_s"] = round(asyncio.run(import_all(dsn, key_file, args.accounts)), 2)
            summary["close_day"] = settle(dsn, key_file, "close-day", DAY.isoformat())
            summary["run"] = settle(dsn, key_file, "run", DAY.isoformat(), "--output-dir", str(out))
            first = digests(out)
            for path in out.rglob("*.*"):
                path.unlink()
            summary["rerun"] = settle(dsn, key_file, "run", DAY.isoformat(), "--output-dir", str(out))
            summary["rerun_byte_identical"] = digests(out) == first
            summary["bank_files_mib"] = round(sum(p.stat().st_size for p in out.rglob("*.*")) / 2**20, 1)
            returns_path = work / "returns.csv"
            summary["return_items"] = asyncio.run(returns_file(dsn, returns_path, 0.02, args.seed))
            summary["import_returns"] = settle(dsn, key_file, "import-returns", str(returns_path))
            summary["reconcile"] = settle(dsn, key_file, "reconcile", DAY.isoformat())

            async def counts() -> dict:
                conn = await asyncpg.connect(dsn)
                try:
                    row = await conn.fetchrow(
                        "SELECT (SELECT count(*) FROM settlement_debits) AS debits, "
                        "(SELECT count(*) FROM settlement_credits) AS credits, "
                        "(SELECT count(*) FROM deny_list WHERE active) AS denied, "
                        "(SELECT coalesce(sum(amount_fen), 0)::bigint FROM ledger_lines) AS ledger_sum")
                    return dict(row)
                finally:
                    await conn.close()

            summary.update(asyncio.run(counts()))
        finally:
            if server is not None:
                server.destroy()
    text = json.dumps(summary, indent=2, default=str)
    print(text)
    if args.output:
        args.output.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
