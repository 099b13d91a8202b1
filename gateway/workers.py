"""The supervisor: several worker processes sharing one port, restarted when they die.

Each worker is a fresh interpreter (``multiprocessing`` spawn) running one
uvloop event loop with its own :class:`gateway.server.Worker`: its own
PostgreSQL pool, journal writer and in-memory views. Workers share nothing
but PostgreSQL. Each binds its own listening socket with ``SO_REUSEPORT``,
and the kernel spreads new connections over them.

The supervisor keeps a bound, non-listening socket on the port for its whole
life, so the port (also a port 0 chosen by the kernel) stays reserved while
a worker restarts. On SIGTERM or SIGINT it forwards SIGTERM to every worker;
each stops accepting, answers the requests in flight, flushes its journal
and exits. Workers still running after ``server.shutdown_timeout_s`` plus a
grace second are killed.

NOTE: a worker that closes its listening socket drops connections still in
its accept queue (the kernel does not move them to the other sockets unless
``net.ipv4.tcp_migrate_req`` is 1, Linux 5.14+). Clients reconnect.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import multiprocessing.connection
import os
import queue
import signal
import tempfile
import time
from typing import Any

import msgspec

from gateway import db, logs
from gateway.config import Config
from gateway.errors import GatewayError
from gateway.logs import log_event

log = logging.getLogger(__name__)

# A worker that dies sooner than this after its start counts as a crash loop.
RESTART_WINDOW_S = 10.0
RESTART_DELAY_MAX_S = 30.0
# Seconds the supervisor waits for every worker to report that it listens.
STARTUP_TIMEOUT_S = 60.0


def worker_count(config: Config) -> int:
    return config.server.workers or os.cpu_count() or 1


def _worker_main(config_json: bytes, dsn: str, index: int, port: int, events: Any) -> None:
    """Entry point of a worker process."""
    import uvloop

    logs.configure()
    config = msgspec.json.decode(config_json, type=Config)
    # The supervisor handles Ctrl-C for the whole group; workers wait for its SIGTERM.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    code = uvloop.run(_serve(config, dsn, index, port, events))
    os._exit(code)


async def _serve(config: Config, dsn: str, index: int, port: int, events: Any) -> int:
    from gateway.server import Worker, bind_socket

    name = f"w{index}-{os.getpid()}"
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    try:
        sock = bind_socket(config.server.host, port)
        worker = Worker(config, dsn, name=name, sock=sock, maintenance=index == 0)
        await worker.start()
    except (GatewayError, OSError) as exc:
        events.put(("failed", index, os.getpid(), str(exc)))
        log_event(log, logging.ERROR, "worker.start_failed", worker=name, error=exc)
        return 2
    events.put(("ready", index, os.getpid(), ""))
    orphan_watch = loop.create_task(_watch_parent(os.getppid(), stop))
    await stop.wait()
    orphan_watch.cancel()
    clean = await worker.drain()
    return 0 if clean else 3


async def _watch_parent(parent_pid: int, stop: asyncio.Event) -> None:
    """Stop the worker when its supervisor is gone (killed with SIGKILL, say), so no orphan keeps the port."""
    while os.getppid() == parent_pid:
        await asyncio.sleep(1.0)
    log_event(log, logging.ERROR, "worker.supervisor_gone", parent_pid=parent_pid)
    stop.set()


class Supervisor:
    """Start, watch and stop the worker processes; see the module docstring."""

    def __init__(self, config: Config, dsn: str) -> None:
        self.config = config
        self.dsn = dsn
        self.count = worker_count(config)
        self._context = multiprocessing.get_context("spawn")
        self._events = self._context.Queue()
        self._processes: dict[int, Any] = {}
        self._started_at: dict[int, float] = {}
        self._restarts: dict[int, int] = {}
        self._stopping = False
        self._reservation = None
        self.port: int | None = None

    def _spawn(self, index: int) -> None:
        assert self.port is not None
        process = self._context.Process(
            target=_worker_main, name=f"tapgate-worker-{index}",
            args=(msgspec.json.encode(self.config), self.dsn, index, self.port, self._events))
        process.start()
        self._processes[index] = process
        self._started_at[index] = time.monotonic()

    def run(self) -> int:
        from gateway.server import bind_socket

        server = self.config.server
        self._reservation = bind_socket(server.host, server.port, listen=False)
        self.port = self._reservation.getsockname()[1]
        # Every worker writes its metrics to files here, so /metrics on any worker shows the sum.
        # NOTE: a PROMETHEUS_MULTIPROC_DIR set by the operator is used as it is, and files left
        # there by an earlier run are added to the sums; clear it before starting.
        metrics_dir = tempfile.TemporaryDirectory(prefix="tapgate-metrics-")
        os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", metrics_dir.name)

        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        try:
            for index in range(self.count):
                self._spawn(index)
            if not self._await_ready():
                self._stop_all()
                return 1
            scheme = "https" if server.tls_cert else "http"
            print(f"tapgate 网关已启动 / gateway serving on {scheme}://{server.host}:{self.port} "
                  f"with {self.count} workers", flush=True)
            log_event(log, logging.INFO, "supervisor.ready", port=self.port, workers=self.count)
            self._watch()
            return self._stop_all()
        finally:
            self._reservation.close()
            metrics_dir.cleanup()

    def _on_signal(self, signum: int, _frame: object) -> None:
        if not self._stopping:
            log_event(log, logging.INFO, "supervisor.stopping", signal=signal.Signals(signum).name)
        self._stopping = True

    def _await_ready(self) -> bool:
        ready: set[int] = set()
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while len(ready) < self.count:
            if self._stopping:
                return False
            try:
                kind, index, pid, detail = self._events.get(timeout=0.2)
            except queue.Empty:
                if time.monotonic() > deadline:
                    log_event(log, logging.ERROR, "supervisor.startup_timeout", ready=len(ready), workers=self.count)
                    return False
                continue
            if kind == "failed":
                print(f"错误 / error: worker {index} failed to start: {detail}", flush=True)
                log_event(log, logging.ERROR, "supervisor.worker_start_failed", index=index, error=detail)
                return False
            ready.add(index)
        return True

    def _watch(self) -> None:
        while not self._stopping:
            sentinels = {p.sentinel: i for i, p in self._processes.items()}
            done = multiprocessing.connection.wait(list(sentinels), timeout=0.5)
            self._drain_events()
            for sentinel in done:
                if self._stopping:
                    break
                self._restart(sentinels[sentinel])

    def _drain_events(self) -> None:
        # Restarted workers report "ready" or "failed" here; only failures matter now.
        while True:
            try:
                kind, index, pid, detail = self._events.get_nowait()
            except queue.Empty:
                return
            if kind == "failed":
                log_event(log, logging.ERROR, "supervisor.worker_start_failed", index=index, pid=pid, error=detail)

    def _restart(self, index: int) -> None:
        process = self._processes[index]
        process.join(0)
        lived_s = time.monotonic() - self._started_at[index]
        self._mark_dead(process.pid)
        self._restarts[index] = self._restarts.get(index, 0) + 1 if lived_s < RESTART_WINDOW_S else 0
        delay = min(RESTART_DELAY_MAX_S, 0.5 * 2 ** self._restarts[index]) if self._restarts[index] else 0.0
        log_event(log, logging.ERROR, "supervisor.worker_died", index=index, pid=process.pid,
                  exitcode=process.exitcode, lived_s=f"{lived_s:.1f}", restart_in_s=delay)
        deadline = time.monotonic() + delay
        while time.monotonic() < deadline and not self._stopping:
            time.sleep(0.1)
        if not self._stopping:
            self._spawn(index)

    @staticmethod
    def _mark_dead(pid: int | None) -> None:
        if pid is not None and os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(pid)

    def _stop_all(self) -> int:
        for process in self._processes.values():
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.config.server.shutdown_timeout_s + 1.0
        status = 0
        for index, process in self._processes.items():
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                log_event(log, logging.ERROR, "supervisor.worker_killed", index=index, pid=process.pid)
                process.kill()
                process.join()
                status = 1
            elif process.exitcode not in (0, None):
                status = 1
        log_event(log, logging.INFO, "supervisor.stopped", status=status)
        return status


async def check_schema(dsn: str, timeout_s: float) -> None:
    """Raise MigrationError unless the gateway's migrations are all applied."""
    async with db.connection(dsn, timeout_s) as conn:
        await db.check_current(conn, db.gateway_migrations())


def supervise(config: Config, dsn: str) -> int:
    """Check the schema, then run the workers until SIGTERM or SIGINT; return the exit status."""
    asyncio.run(check_schema(dsn, config.database.connect_timeout_s))
    return Supervisor(config, dsn).run()
