"""Profile a gateway worker under load with py-spy: where does a worker's CPU go per tap?

Starts an embedded PostgreSQL, seeds it like ``bench_gateway.py``, runs
``tapgate serve`` and a closed-loop load (loopback only, bounded by
``--duration``), and meanwhile records one worker with ``py-spy record``
(``pip install py-spy``). Writes the collapsed stacks to ``--output`` and
prints the functions with the most samples (self and inclusive). It also
prints CPU seconds per completed tap of the workers, the PostgreSQL backends
and the load generator (from ``/proc``), and PostgreSQL transactions per tap.

When the machine is busy, py-spy counts a worker that waits for the CPU as
running, mostly in the call that woke PostgreSQL or the client (a socket
write). ``--pin`` puts the gateway on core 0 and PostgreSQL and the load
generator on core 1, which removes most of that.

    python benchmarks/profile_gateway.py --pin --duration 12 --workers 1 --connections 128
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import os
import pathlib
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_gateway as bench  # noqa: E402
import uvloop  # noqa: E402
from fastpath.issuer import IssuerKey  # noqa: E402
from loadgen import qr_tap_requests, run_load  # noqa: E402


def cpu_seconds(pid: int) -> float:
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def commits(dsn: str) -> int:
    """Return the transactions committed in the database so far (pg_stat_database)."""
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("SELECT pg_stat_clear_snapshot()")
        return await conn.fetchval("SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()")
    finally:
        await conn.close()


def machine_busy() -> tuple[float, float]:
    """Return (busy, total) clock ticks of all cores from /proc/stat."""
    values = [int(v) for v in pathlib.Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


def cmdline(pid: int) -> bytes:
    with contextlib.suppress(OSError):
        return pathlib.Path(f"/proc/{pid}/cmdline").read_bytes()
    return b""


def children(pid: int) -> list[int]:
    found = []
    for entry in pathlib.Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
    return sorted(found)


def summarise(collapsed: pathlib.Path, top: int) -> str:
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        total += n
        frames = [f.split(" (")[0] + " (" + f.split(" (")[1].split(":")[0].rsplit("/", 1)[-1] + ")"
                  if " (" in f else f for f in stack.split(";")]
        own[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    lines = [f"samples: {total}", "", "self:"]
    lines += [f"{n / total * 100:6.1f} %  {name}" for name, n in own.most_common(top)]
    lines += ["", "inclusive:"]
    lines += [f"{n / total * 100:6.1f} %  {name}" for name, n in inclusive.most_common(top)]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of load and of recording")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--connections", type=int, default=256)
    parser.add_argument("--riders", type=int, default=3000)
    parser.add_argument("--supply", type=int, default=120_000, help="requests built before the run")
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--output", default="/tmp/prof.txt", help="collapsed stacks (py-spy raw format)")
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--pin", action="store_true",
                        help="run the gateway on core 0 and PostgreSQL and the load generator on core 1, so "
                             "samples of a worker preempted by PostgreSQL do not count as the worker's work")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="tapgate-prof-") as folder:
        from gateway.pgembed import EmbeddedPostgres

        server = EmbeddedPostgres(pathlib.Path(folder) / "pg")
        server.start()
        try:
            admin_dsn = server.dsn.rsplit("/", 1)[0] + "/postgres"
            issuer = IssuerKey.generate(key_id=1)
            dsn = asyncio.run(bench.create_database(admin_dsn, "prof_gateway"))
            device_list = asyncio.run(bench.seed_gateway(dsn, issuer, 64))
            phones = bench.make_phones(issuer, args.riders)
            port = bench.free_port()
            env = {k: v for k, v in os.environ.items() if not k.startswith("TAPGATE_")}
            env.update(TAPGATE_SERVER_DEVICE_RATE_PER_S="100000", TAPGATE_SERVER_DEVICE_RATE_BURST="100000",
                       TAPGATE_LOG_LEVEL="WARNING")
            if args.pin:
                postmaster = int((server.data_dir / "postmaster.pid").read_text().split()[0])
                for pid in [postmaster, *children(postmaster), os.getpid()]:
                    with contextlib.suppress(OSError):
                        os.sched_setaffinity(pid, {1})
            command = (["taskset", "-c", "0"] if args.pin else []) + [sys.executable, "-m", "tapgate", "serve", "--dsn", dsn, "--port", str(port),
                       "--workers", str(args.workers)]
            with bench.running(command, env, port):
                supervisor = [p for p in children(os.getpid()) if b"serve" in cmdline(p)][0]
                workers = [p for p in children(supervisor) if b"spawn_main" in cmdline(p)]
                worker = workers[0]
                warm = qr_tap_requests(phones, device_list, 5000, first_tap_id=1)
                uvloop.run(run_load("127.0.0.1", port, warm, connections=args.connections, duration_s=5))
                requests = qr_tap_requests(phones, device_list, args.supply, first_tap_id=100_000,
                                           start_ms=int(time.time() * 1000) + 1000)
                postmaster = int((server.data_dir / "postmaster.pid").read_text().split()[0])
                pg_before = {p: cpu_seconds(p) for p in children(postmaster)}
                machine_before = machine_busy()
                commits_before = asyncio.run(commits(dsn))
                own_before = os.times()
                cpu_before = {p: cpu_seconds(p) for p in workers}
                spy = subprocess.Popen(["py-spy", "record", "--pid", str(worker), "--duration",
                                        str(int(args.duration)), "--rate", str(args.rate), "--format", "raw",
                                        "--output", args.output, "--nonblocking"],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                result = uvloop.run(run_load("127.0.0.1", port, requests, connections=args.connections,
                                             duration_s=args.duration))
                cpu = {p: cpu_seconds(p) - cpu_before[p] for p in workers}
                own_after = os.times()
                commits_after = asyncio.run(commits(dsn))
                machine_after = machine_busy()
                pg_cpu = 0.0
                for p in children(postmaster):
                    with contextlib.suppress(OSError):
                        pg_cpu += cpu_seconds(p) - pg_before.get(p, 0.0)
                _, err = spy.communicate(timeout=60)
                print(f"load: {result.summary()}")
                load = os.getloadavg()
                print(f"load average now: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
                taps = max(1, result.completed)
                for pid, seconds in cpu.items():
                    print(f"worker {pid}: {seconds:.2f} s CPU")
                print(f"worker CPU per completed tap (all workers): {sum(cpu.values()) / taps * 1e6:.0f} µs")
                print(f"PostgreSQL backends: {pg_cpu:.2f} s CPU, {pg_cpu / taps * 1e6:.0f} µs per tap")
                print(f"PostgreSQL transactions: {(commits_after - commits_before) / taps:.2f} per tap")
                own = own_after.user + own_after.system - own_before.user - own_before.system
                print(f"load generator: {own:.2f} s CPU, {own / taps * 1e6:.0f} µs per tap")
                busy = machine_after[0] - machine_before[0]
                print(f"machine: {busy / (machine_after[1] - machine_before[1]) * 100:.0f} % of all cores busy")
                if spy.returncode != 0:
                    print(err.decode()[-2000:], file=sys.stderr)
                    return 1
        finally:
            server.destroy()
    print(summarise(pathlib.Path(args.output), args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
