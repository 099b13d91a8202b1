"""Benchmark: taps per second and latency of the gateway, against raw verification and a common baseline.

Measured side by side in one run, on this machine, loopback only:

1. raw libsodium verification of one Ed25519 signature on one core (the
   compiled fast path's ``verify_signature``, a direct libsodium call): the
   ceiling for a tap whose credential is cached, since such a tap needs one
   signature check;
2. the gateway (``tapgate serve``, N workers) with every tap journaled
   durably in PostgreSQL (fsync on), fare rules, deny lists and replay checks;
3. a baseline written the way most teams would (``bench_gateway_baseline.py``:
   FastAPI on uvicorn, PyNaCl verification of the same QR code, one INSERT per
   tap through an asyncpg pool).

For 2 and 3: a closed-loop run finds the maximum rate, then an open-loop run
at 70 % of that rate measures p50 and p99 latency. Requests are built and
signed before each run (``loadgen.py``). PostgreSQL, the servers and the
load generator share the machine.

    python benchmarks/bench_gateway.py --duration 8 --connections 64 --workers 2

Prints a JSON summary; ``--output FILE`` also writes it to a file.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import pathlib
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Iterator

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import asyncpg  # noqa: E402
import uvloop  # noqa: E402

from fastpath.entitlements import Entitlements  # noqa: E402
from fastpath.issuer import IssuerKey, Phone  # noqa: E402
from gateway import devices  # noqa: E402
from gateway.client import DeviceCredentials  # noqa: E402
from loadgen import qr_tap_requests, run_load  # noqa: E402

ROUTES = ("1", "2", "3", "5", "8")
OPERATOR = "yiyuan-bus"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def measure_raw_verify(seconds: float = 2.0) -> float:
    """Signatures per second of the compiled fast path's direct libsodium call, one core."""
    import nacl.signing

    import fastpath

    key = nacl.signing.SigningKey.generate()
    messages = [os.urandom(64) for _ in range(256)]
    signed = [(bytes(key.verify_key), m, key.sign(m).signature) for m in messages]
    verify = fastpath.verify_signature
    count = 0
    started = time.perf_counter()
    deadline = started + seconds
    while time.perf_counter() < deadline:
        for public_key, message, signature in signed:
            if not verify(public_key, message, signature):
                raise AssertionError("a valid signature failed to verify")
        count += len(signed)
    return count / (time.perf_counter() - started)


async def create_database(admin_dsn: str, name: str) -> str:
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return admin_dsn.rsplit("/", 1)[0] + "/" + name


async def seed_gateway(dsn: str, issuer: IssuerKey, device_count: int) -> list[tuple[DeviceCredentials, str]]:
    from gateway.rules import example_document_text, store
    from tapgate import runtime

    await runtime.migrate_all(dsn)
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("INSERT INTO issuer_keys (key_id, public_key) VALUES ($1, $2)", issuer.key_id,
                           issuer.public_key)
        await devices.add_operator(conn, OPERATOR, "bus", "沂源公交", "Yiyuan Bus")
        found = []
        for i in range(device_count):
            route = ROUTES[i % len(ROUTES)]
            device_id = f"bench-{route}-{i:04d}"
            secret = await devices.add_device(conn, device_id, OPERATOR, "validator", route_id=route)
            found.append((DeviceCredentials(device_id, secret), route))
        version = await store.create_draft(conn, example_document_text(), "toml", "bench")
        await store.publish(conn, version, int(time.time() * 1000) - 86_400_000, "bench", allow_past=True)
    finally:
        await conn.close()
    return found


def make_phones(issuer: IssuerKey, count: int) -> list[Phone]:
    start = int(time.time() * 1000) - 86_400_000
    # A mix of adults and elderly riders, so pricing takes more than one branch.
    return [Phone.new(issuer, entitlements=Entitlements(birth_date=dt.date(1990 if i % 4 else 1950, 1, 1)),
                      valid_from_ms=start) for i in range(count)]


@contextlib.contextmanager
def running(command: list[str], env: dict[str, str], ready_port: int, timeout_s: float = 60.0) -> Iterator[None]:
    """Run a server command until the block ends; wait until it accepts connections on ``ready_port``."""
    log = tempfile.TemporaryFile()
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if process.poll() is not None:
                log.seek(0)
                raise RuntimeError(f"{command[2]} exited with {process.returncode}: {log.read()[-2000:].decode()}")
            with contextlib.suppress(OSError):
                socket.create_connection(("127.0.0.1", ready_port), timeout=0.5).close()
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{command} did not listen on port {ready_port} within {timeout_s:.0f} s")
            time.sleep(0.2)
        time.sleep(1.0)  # let every worker finish starting
        try:
            yield
        except BaseException:
            # Print the server's output, so a failed measurement shows why the server stopped responding.
            log.seek(0)
            print(f"output of {shlex.join(command)}:\n{log.read()[-4000:].decode(errors='replace')}", file=sys.stderr)
            raise
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


async def measure_server(port: int, phones: list[Phone], device_list: list[tuple[DeviceCredentials, str]], *,
                         connections: int, duration_s: float, supply_per_s: int, first_tap_id: int) -> dict:
    """Warm up, find the maximum rate (closed loop), then measure latency at 70 % of it (open loop)."""
    tap_id = first_tap_id
    warm = qr_tap_requests(phones, device_list, min(len(phones), 5000), first_tap_id=tap_id)
    tap_id += len(warm)
    await run_load("127.0.0.1", port, warm, connections=connections, duration_s=duration_s)

    supply = int(supply_per_s * duration_s)
    closed_requests = qr_tap_requests(phones, device_list, supply, start_ms=int(time.time() * 1000) + 2000,
                                      first_tap_id=tap_id)
    tap_id += supply
    closed = await run_load("127.0.0.1", port, closed_requests, connections=connections, duration_s=duration_s)

    rate = 0.7 * closed.rate
    open_requests = qr_tap_requests(phones, device_list, int(rate * duration_s * 1.1) + 100,
                                    start_ms=int(time.time() * 1000) + 2000, first_tap_id=tap_id)
    opened = await run_load("127.0.0.1", port, open_requests, connections=connections, duration_s=duration_s,
                            rate=rate)
    return {"max": closed.summary(), "at_70_percent": opened.summary()}


def measure_repeated(repeat: int, port: int, phones: list[Phone], device_list: list[tuple[DeviceCredentials, str]],
                     connections: int, duration_s: float, supply_per_s: int) -> dict:
    """Run :func:`measure_server` ``repeat`` times; return every run and the medians of the headline figures."""
    runs = []
    for index in range(repeat):
        # Tap ids continue across runs, so no run retries an earlier run's tap.
        runs.append(uvloop.run(measure_server(port, phones, device_list, connections=connections,
                                              duration_s=duration_s, supply_per_s=supply_per_s,
                                              first_tap_id=1 + index * 10_000_000)))

    def median(phase: str, key: str) -> float:
        return statistics.median(run[phase][key] for run in runs)

    return {"median": {"max_rate_per_s": median("max", "rate_per_s"), "max_p50_ms": median("max", "p50_ms"),
                       "max_p99_ms": median("max", "p99_ms"),
                       "rate_at_70_percent_per_s": median("at_70_percent", "rate_per_s"),
                       "p50_ms_at_70_percent": median("at_70_percent", "p50_ms"),
                       "p99_ms_at_70_percent": median("at_70_percent", "p99_ms")},
            "runs": runs}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per measured run (default 8)")
    parser.add_argument("--connections", type=int, default=64, help="keep-alive connections (default 64)")
    parser.add_argument("--workers", type=int, default=2, help="gateway and uvicorn worker processes (default 2)")
    parser.add_argument("--riders", type=int, default=4000, help="distinct riders (default 4000)")
    parser.add_argument("--devices", type=int, default=64, help="validators (default 64)")
    parser.add_argument("--supply-per-s", type=int, default=16000,
                        help="requests built per second of closed-loop run, an upper bound on the rate measured "
                             "(default 16000)")
    parser.add_argument("--dsn", help="PostgreSQL maintenance DSN (a role that may create databases); "
                                      "default: an embedded server in a temporary directory")
    parser.add_argument("--skip-baseline", action="store_true", help="measure only raw verification and the gateway")
    parser.add_argument("--repeat", type=int, default=1,
                        help="measurements per server; the summary gives the median of each figure (default 1)")
    parser.add_argument("--output", help="also write the JSON summary to this file")
    args = parser.parse_args()

    results: dict = {"machine": {"cores": os.cpu_count(), "when": dt.datetime.now(dt.timezone.utc).isoformat(),
                                 "load_average_before": os.getloadavg()},
                     "settings": vars(args)}
    print("measuring raw libsodium verification on one core ...", file=sys.stderr, flush=True)
    results["raw_verify_per_s"] = round(measure_raw_verify())

    with contextlib.ExitStack() as stack:
        admin_dsn = args.dsn
        if not admin_dsn:
            from gateway.pgembed import EmbeddedPostgres

            folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="tapgate-bench-"))
            server = EmbeddedPostgres(pathlib.Path(folder) / "pg")
            server.start()
            stack.callback(server.destroy)
            admin_dsn = server.dsn.rsplit("/", 1)[0] + "/postgres"

        issuer = IssuerKey.generate(key_id=1)
        gateway_dsn = asyncio.run(create_database(admin_dsn, "bench_gateway"))
        device_list = asyncio.run(seed_gateway(gateway_dsn, issuer, args.devices))
        print(f"issuing {args.riders} credentials ...", file=sys.stderr, flush=True)
        phones = make_phones(issuer, args.riders)
        env = {k: v for k, v in os.environ.items() if not k.startswith("TAPGATE_")}

        port = free_port()
        gateway_env = dict(env, TAPGATE_SERVER_DEVICE_RATE_PER_S="100000", TAPGATE_SERVER_DEVICE_RATE_BURST="100000",
                           TAPGATE_LOG_LEVEL="WARNING")
        command = [sys.executable, "-m", "tapgate", "serve", "--dsn", gateway_dsn, "--port", str(port),
                   "--workers", str(args.workers)]
        print("measuring the gateway ...", file=sys.stderr, flush=True)
        with running(command, gateway_env, port):
            results["gateway"] = measure_repeated(args.repeat, port, phones, device_list, args.connections,
                                                  args.duration, args.supply_per_s)
            results["gateway"]["journal"] = journal_figures(port)
        results["gateway"]["journal_rows"] = asyncio.run(_count(gateway_dsn, "SELECT count(*) FROM taps"))

        if not args.skip_baseline:
            baseline_dsn = asyncio.run(create_database(admin_dsn, "bench_baseline"))
            port = free_port()
            baseline_env = dict(env, BASELINE_DSN=baseline_dsn,
                                BASELINE_ISSUER=f"{issuer.key_id}:{issuer.public_key.hex()}",
                                BASELINE_DEVICES=json.dumps({c.device_id: c.secret.hex() for c, _ in device_list}),
                                PYTHONPATH=f"{ROOT}:{ROOT / 'benchmarks'}")
            command = [sys.executable, "-m", "uvicorn", "bench_gateway_baseline:app", "--port", str(port),
                       "--workers", str(args.workers), "--log-level", "warning", "--no-access-log"]
            print("measuring the FastAPI baseline ...", file=sys.stderr, flush=True)
            with running(command, baseline_env, port):
                results["baseline"] = measure_repeated(args.repeat, port, phones, device_list, args.connections,
                                                       args.duration, args.supply_per_s)
            results["baseline"]["rows"] = asyncio.run(_count(baseline_dsn, "SELECT count(*) FROM baseline_taps"))

    # Other work on the machine skews every number; the load average shows how much there was.
    results["machine"]["load_average_after"] = os.getloadavg()
    gateway_rate = results["gateway"]["median"]["max_rate_per_s"]
    results["ratios"] = {"gateway_to_raw_verify": round(gateway_rate / results["raw_verify_per_s"], 3)}
    if "baseline" in results:
        results["ratios"]["gateway_to_baseline"] = round(gateway_rate / max(1, results["baseline"]["median"]["max_rate_per_s"]), 2)
    text = json.dumps(results, indent=2)
    print(text)
    if args.output:
        pathlib.Path(args.output).write_text(text + "\n", encoding="utf-8")
    return 0


def journal_figures(port: int) -> dict:
    """Mean group-commit size and time over the whole run, from the gateway's /metrics."""
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    values: dict[str, float] = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in ("tapgate_journal_batch_taps_sum", "tapgate_journal_batch_taps_count",
                    "tapgate_journal_commit_seconds_sum"):
            values[name] = values.get(name, 0.0) + float(value)
    commits = values.get("tapgate_journal_batch_taps_count", 0.0)
    return {"commits": int(commits),
            "mean_batch_taps": round(values.get("tapgate_journal_batch_taps_sum", 0.0) / commits, 1) if commits else None,
            "mean_commit_ms": round(values.get("tapgate_journal_commit_seconds_sum", 0.0) / commits * 1000, 2)
            if commits else None}


async def _count(dsn: str, sql: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval(sql)
    finally:
        await conn.close()


if __name__ == "__main__":
    sys.exit(main())
