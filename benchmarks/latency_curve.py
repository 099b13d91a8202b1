"""Latency of the gateway at fixed tap rates: p50 and p99 per rate, open loop, loopback only.

Starts an embedded PostgreSQL in a temporary directory, seeds it like
``bench_gateway.py``, runs ``tapgate serve`` and then one open-loop run per
rate (``loadgen.run_load``: latency counted from the moment each request was
due). A rate of 0 means a closed-loop run, the maximum rate at that
concurrency. Every run is bounded by ``--duration``.

    python benchmarks/latency_curve.py --rates 100,500,2000,3500,0 --connections 256 --duration 5
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pathlib
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import uvloop  # noqa: E402

import bench_gateway as bench  # noqa: E402
from fastpath.issuer import IssuerKey  # noqa: E402
from loadgen import qr_tap_requests, run_load  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", default="100,500,2000,3500,0",
                        help="comma-separated taps per second; 0 runs a closed loop (default 100,500,2000,3500,0)")
    parser.add_argument("--connections", type=int, default=256, help="keep-alive connections (default 256)")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per rate (default 5)")
    parser.add_argument("--workers", type=int, default=2, help="gateway worker processes (default 2)")
    parser.add_argument("--riders", type=int, default=3000, help="distinct riders (default 3000)")
    args = parser.parse_args()
    try:
        rates = [float(value) for value in args.rates.split(",")]
    except ValueError:
        parser.error(f"--rates {args.rates!r}: expected numbers separated by commas, such as 100,500,0")
    if any(rate < 0 for rate in rates):
        parser.error(f"--rates {args.rates!r}: a rate is 0 (closed loop) or more")

    with tempfile.TemporaryDirectory(prefix="tapgate-curve-") as folder:
        from gateway.pgembed import EmbeddedPostgres

        server = EmbeddedPostgres(pathlib.Path(folder) / "pg")
        server.start()
        try:
            admin_dsn = server.dsn.rsplit("/", 1)[0] + "/postgres"
            issuer = IssuerKey.generate(key_id=1)
            dsn = asyncio.run(bench.create_database(admin_dsn, "latency_curve"))
            devices = asyncio.run(bench.seed_gateway(dsn, issuer, 64))
            phones = bench.make_phones(issuer, args.riders)
            port = bench.free_port()
            env = {k: v for k, v in os.environ.items() if not k.startswith("TAPGATE_")}
            env.update(TAPGATE_SERVER_DEVICE_RATE_PER_S="100000", TAPGATE_SERVER_DEVICE_RATE_BURST="100000",
                       TAPGATE_LOG_LEVEL="WARNING")
            command = [sys.executable, "-m", "tapgate", "serve", "--dsn", dsn, "--port", str(port),
                       "--workers", str(args.workers)]
            with bench.running(command, env, port):
                tap_id = 1
                warm = qr_tap_requests(phones, devices, 5000, first_tap_id=tap_id)
                tap_id += len(warm)
                uvloop.run(run_load("127.0.0.1", port, warm, connections=args.connections, duration_s=4))
                print(f"load average {os.getloadavg()[0]:.2f}; {args.workers} workers, "
                      f"{args.connections} connections, {args.duration:g} s per rate", flush=True)
                for rate in rates:
                    # A closed loop gets enough requests for 12,000 taps/s.
                    count = int((rate or 12_000) * args.duration * 1.1) + 100
                    requests = qr_tap_requests(phones, devices, count, first_tap_id=tap_id,
                                               start_ms=int(time.time() * 1000) + 1000)
                    tap_id += count
                    result = uvloop.run(run_load("127.0.0.1", port, requests, connections=args.connections,
                                                 duration_s=args.duration, rate=rate or None))
                    summary = result.summary()
                    target = f"{rate:g}/s" if rate else "closed"
                    print(f"target {target:>8}: {summary['rate_per_s']:>6} taps/s  p50 {summary['p50_ms']:7.2f} ms  "
                          f"p99 {summary['p99_ms']:7.2f} ms  errors {summary['errors']}  "
                          f"accepted {summary['accepted']}/{summary['completed']}", flush=True)
        finally:
            server.destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main())
