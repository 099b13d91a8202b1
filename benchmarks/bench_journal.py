"""Benchmark: journal rows per second, one INSERT per commit against the group-commit writer.

Measured side by side in one run, against one PostgreSQL (fsync and
synchronous_commit on, as the gateway runs it):

- ``insert_per_commit``: what a plain service does, one INSERT into taps per
  tap, each its own transaction, from ``--producers`` tasks over a pool of 8
  connections. Every tap waits for its own WAL flush.
- ``raw_unnest_256``: INSERT … SELECT FROM unnest of 256 rows per commit on one
  connection, without exactly-once keys, replay keys or the hash chain: the
  ceiling of a batched insert, to show what the journal's extra work costs.
- ``journal_b<N>``: gateway.journal.Journal with ``batch_max`` N and a 2 ms
  flush interval, fed by ``--producers`` concurrent appenders in one process
  (one gateway worker). Each append carries a QR replay key and a rider
  state, as a QR tap does.
- ``journal_2proc_b256``: two processes, each its own Journal (two gateway
  workers), committing into the one global hash chain.

Each case runs for ``--duration`` seconds. Without ``--dsn`` an embedded
PostgreSQL is started in a temporary directory and removed afterwards.

    python benchmarks/bench_journal.py --duration 3
    python benchmarks/bench_journal.py --dsn postgresql://... --batch-sizes 16,64,256,512

Prints one line per case and, with ``--output FILE``, writes the results as JSON.
``tap_p50_ms``/``tap_p99_ms`` are the times from handing a tap over to its
durable commit; ``commit_mean_ms`` is the mean time of one commit call.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
import uuid

import asyncpg

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gateway.journal import Journal, JournalEntry  # noqa: E402

TAP_TIME_MS = int(time.time() * 1000)


def make_entry(device: str, n: int) -> JournalEntry:
    return JournalEntry(
        device_id=device, device_tap_id=n, tap_time_ms=TAP_TIME_MS, received_at_ms=TAP_TIME_MS, offline=False,
        operator_id="bench-bus", route_id="r1", stop_id=None, site_id=None, tap_kind=0, medium=2,
        credential_id=os.urandom(16), holder_token=os.urandom(16), account_token=os.urandom(16), decision=1,
        reason=0, rider_category="adult", product_id="single", fare_fen=200, full_fare_fen=200,
        discount_kinds=(), rule_set_version=1, request_digest=hashlib.sha256(f"{device}{n}".encode()).digest(),
        replay_key=os.urandom(32), rider_state=b"s" * 48)


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


# --- cases ---

_INSERT_ONE = """
INSERT INTO taps (tap_id, business_day, batch_id, device_id, device_tap_id, tap_time, received_at, operator_id,
                  route_id, tap_kind, medium, credential_id, holder_token, account_token, decision, reason,
                  rider_category, product_id, fare_fen, full_fare_fen, rule_set_version, request_digest)
VALUES (nextval('tap_id_seq'), current_date, 0, $1, $2, now(), now(), 'bench-bus', 'r1', 0, 2, $3, $4, $5, 1, 0,
        'adult', 'single', 200, 200, 1, $6)"""


async def insert_per_commit(dsn: str, duration_s: float, producers: int) -> dict[str, object]:
    pool = await asyncpg.create_pool(dsn, min_size=8, max_size=8)
    device = f"one-{uuid.uuid4().hex[:8]}"
    counter = iter(range(10 ** 12))
    latencies: list[float] = []
    deadline = time.monotonic() + duration_s

    async def producer() -> None:
        while time.monotonic() < deadline:
            started = time.perf_counter()
            await pool.execute(_INSERT_ONE, device, next(counter), os.urandom(16), os.urandom(16),
                               os.urandom(16), os.urandom(32))
            latencies.append(time.perf_counter() - started)

    started = time.monotonic()
    await asyncio.gather(*(producer() for _ in range(producers)))
    elapsed = time.monotonic() - started
    await pool.close()
    return {"rows": len(latencies), "rows_per_s": len(latencies) / elapsed, "commits": len(latencies),
            "tap_p50_ms": percentile(latencies, 0.5) * 1000, "tap_p99_ms": percentile(latencies, 0.99) * 1000}


_INSERT_UNNEST = """
INSERT INTO taps (tap_id, business_day, batch_id, device_id, device_tap_id, tap_time, received_at, operator_id,
                  route_id, tap_kind, medium, credential_id, holder_token, account_token, decision, reason,
                  rider_category, product_id, fare_fen, full_fare_fen, rule_set_version, request_digest)
SELECT nextval('tap_id_seq'), current_date, 0, d, n, now(), now(), 'bench-bus', 'r1', 0, 2, c, h, a, 1, 0,
       'adult', 'single', 200, 200, 1, r
FROM unnest($1::text[], $2::bigint[], $3::bytea[], $4::bytea[], $5::bytea[], $6::bytea[]) AS u(d, n, c, h, a, r)
ON CONFLICT DO NOTHING"""


async def raw_unnest(dsn: str, duration_s: float, rows_per_commit: int = 256) -> dict[str, object]:
    conn = await asyncpg.connect(dsn)
    device = f"raw-{uuid.uuid4().hex[:8]}"
    rows = commits = 0
    times: list[float] = []
    deadline = time.monotonic() + duration_s
    started = time.monotonic()
    while time.monotonic() < deadline:
        n = rows_per_commit
        args = ([device] * n, list(range(rows, rows + n)), [os.urandom(16) for _ in range(n)],
                [os.urandom(16) for _ in range(n)], [os.urandom(16) for _ in range(n)],
                [os.urandom(32) for _ in range(n)])
        begun = time.perf_counter()
        await conn.execute(_INSERT_UNNEST, *args)
        times.append(time.perf_counter() - begun)
        rows += n
        commits += 1
    elapsed = time.monotonic() - started
    await conn.close()
    return {"rows": rows, "rows_per_s": rows / elapsed, "commits": commits,
            "commit_mean_ms": statistics.mean(times) * 1000}


async def journal_case(dsn: str, duration_s: float, producers: int, batch_max: int) -> dict[str, object]:
    pool = await asyncpg.create_pool(dsn, min_size=2, max_size=4)
    device = f"j{batch_max}-{uuid.uuid4().hex[:8]}"
    counter = iter(range(10 ** 12))
    latencies: list[float] = []
    journal = Journal(pool, worker=device, flush_interval_ms=2.0, batch_max=batch_max,
                      pending_max=max(64 * batch_max, 4 * producers))
    await journal.start()
    deadline = time.monotonic() + duration_s

    async def producer() -> None:
        while time.monotonic() < deadline:
            # Built here, as the gateway builds each entry after deciding the tap.
            entry = make_entry(device, next(counter))
            started = time.perf_counter()
            await journal.append(entry)
            latencies.append(time.perf_counter() - started)

    started = time.monotonic()
    await asyncio.gather(*(producer() for _ in range(producers)))
    elapsed = time.monotonic() - started
    await journal.close()
    await pool.close()
    batches = journal.batches_committed
    return {"rows": len(latencies), "rows_per_s": len(latencies) / elapsed, "commits": batches,
            "mean_batch": len(latencies) / batches if batches else 0.0,
            "commit_mean_ms": journal.commit_seconds / batches * 1000 if batches else 0.0,
            "tap_p50_ms": percentile(latencies, 0.5) * 1000, "tap_p99_ms": percentile(latencies, 0.99) * 1000}


def _journal_process(dsn: str, duration_s: float, producers: int, batch_max: int, queue) -> None:
    queue.put(asyncio.run(journal_case(dsn, duration_s, producers, batch_max)))


def journal_processes(dsn: str, duration_s: float, producers: int, batch_max: int, processes: int) -> dict[str, object]:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    workers = [context.Process(target=_journal_process, args=(dsn, duration_s, producers, batch_max, queue))
               for _ in range(processes)]
    for worker in workers:
        worker.start()
    results = [queue.get(timeout=duration_s + 120) for _ in workers]
    for worker in workers:
        worker.join(timeout=30)
    rows = sum(r["rows"] for r in results)
    commits = sum(r["commits"] for r in results)
    return {"rows": rows, "rows_per_s": sum(r["rows_per_s"] for r in results), "commits": commits,
            "mean_batch": rows / commits if commits else 0.0,
            "commit_mean_ms": statistics.mean(r["commit_mean_ms"] for r in results),
            "tap_p50_ms": statistics.mean(r["tap_p50_ms"] for r in results),
            "tap_p99_ms": max(r["tap_p99_ms"] for r in results)}


# --- driver ---

async def _prepare(admin_dsn: str, name: str) -> str:
    from tapgate import runtime

    conn = await asyncpg.connect(admin_dsn)
    await conn.execute(f'CREATE DATABASE "{name}"')
    await conn.close()
    dsn = admin_dsn.rsplit("/", 1)[0] + "/" + name
    await runtime.migrate_all(dsn)
    from gateway.journal import ensure_partitions

    conn = await asyncpg.connect(dsn)
    await ensure_partitions(conn)
    await conn.close()
    return dsn


async def _drop(admin_dsn: str, name: str) -> None:
    conn = await asyncpg.connect(admin_dsn)
    await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await conn.close()


def run(admin_dsn: str, args: argparse.Namespace) -> list[dict[str, object]]:
    name = f"bench_journal_{os.getpid()}"
    dsn = asyncio.run(_prepare(admin_dsn, name))
    results: list[dict[str, object]] = []

    def record(case: str, result: dict[str, object]) -> None:
        result = {"case": case, **result}
        results.append(result)
        extra = "  ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}"
                          for k, v in result.items() if k not in ("case", "rows_per_s"))
        print(f"{case:<22} {result['rows_per_s']:>10,.0f} rows/s  {extra}", flush=True)

    try:
        record("insert_per_commit", asyncio.run(insert_per_commit(dsn, args.duration, args.producers)))
        record("raw_unnest_256", asyncio.run(raw_unnest(dsn, args.duration)))
        for batch_max in args.batch_sizes:
            record(f"journal_b{batch_max}", asyncio.run(journal_case(dsn, args.duration, args.producers, batch_max)))
        if not args.skip_processes:
            record("journal_2proc_b256", journal_processes(dsn, args.duration, args.producers, 256, 2))
    finally:
        asyncio.run(_drop(admin_dsn, name))
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dsn", help="maintenance DSN of a PostgreSQL server (a database is created and dropped); "
                                      "default: an embedded server in a temporary directory")
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per case (default 3)")
    parser.add_argument("--producers", type=int, default=512,
                        help="concurrent appenders (taps in flight) per process (default 512)")
    parser.add_argument("--batch-sizes", default="16,64,256,512",
                        type=lambda text: [int(part) for part in text.split(",")],
                        help="batch_max values to run, comma-separated (default 16,64,256,512)")
    parser.add_argument("--skip-processes", action="store_true", help="skip the two-process case")
    parser.add_argument("--output", help="also write the results as JSON to this file")
    args = parser.parse_args()
    if not 0 < args.duration <= 120:
        parser.error(f"--duration {args.duration}: expected more than 0 and at most 120 seconds")

    if args.dsn:
        results = run(args.dsn, args)
    else:
        from gateway.pgembed import EmbeddedPostgres

        with tempfile.TemporaryDirectory(prefix="bench-journal-") as folder:
            server = EmbeddedPostgres(os.path.join(folder, "data"))
            server.start()
            try:
                results = run(server.dsn.rsplit("/", 1)[0] + "/postgres", args)
            finally:
                server.destroy()
    if args.output:
        with open(args.output, "w", encoding="utf-8") as out:
            json.dump(results, out, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
