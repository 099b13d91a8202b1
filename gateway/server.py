"""One gateway worker: its PostgreSQL pool, its in-memory views, its listening socket.

A :class:`Worker` loads devices, issuer keys, deny lists and rule books from
PostgreSQL, starts the journal writer and serves HTTP on a socket bound with
``SO_REUSEPORT``, so several worker processes share one port. A refresh loop
polls every ``server.refresh_interval_s`` and swaps in whatever changed, so a
disabled device, a deny-list entry, a key rotation or a new rule set reaches
every worker within one interval plus one query.

:meth:`Worker.drain` is the orderly stop: stop accepting, respond to the
requests in flight, close idle connections, flush the journal, close the pool.
Tests run a worker in their own event loop; ``gateway.workers`` runs one per
process under a supervisor.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import ssl
import time
from typing import Any

import asyncpg

from gateway import db, http_metrics
from gateway.app import GatewayApp, plain_error_response
from gateway.auth import NonceGuard, delete_old_nonces
from gateway.config import Config
from gateway.denylist import DenyList
from gateway.errors import DatabaseError
from gateway.devices import DeviceRegistry
from gateway.http import ConnectionSet, HttpProtocol
from gateway.journal import Journal
from gateway.journal.retention import prune_replay_keys, replay_key_horizon_s
from gateway.keyring_store import build_key_ring, load_issuer_keys_if_changed
from gateway.logs import log_event
from gateway.pipeline import TapPipeline
from gateway.rules import store
from gateway.timeutil import parse_cutoff

log = logging.getLogger(__name__)

# Seconds between two deletions of expired request nonces.
NONCE_PRUNE_INTERVAL_S = 30.0
# Seconds between two deletions of QR replay keys that can no longer match (gateway.journal.retention).
REPLAY_PRUNE_INTERVAL_S = 3600.0
# Seconds a readiness probe waits for PostgreSQL.
READY_PROBE_TIMEOUT_S = 1.0


def bind_socket(host: str, port: int, *, listen: bool = True, backlog: int = 2048) -> socket.socket:
    """Return a TCP socket bound to (host, port) with SO_REUSEPORT, so several processes share the port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    if listen:
        sock.listen(backlog)
    sock.setblocking(False)
    return sock


def tls_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    """Server TLS context from PEM files: TLS 1.2 or newer, the library's default ciphers."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_file, key_file)
    return context


async def _keep_session(_conn: asyncpg.Connection) -> None:
    """Skip asyncpg's reset round trip on release: workers set no session state, LISTEN or session locks."""


async def create_pool(dsn: str, *, min_size: int, max_size: int, timeout_s: float) -> asyncpg.Pool:
    """Create the worker's pool; like ``gateway.db.create_pool`` but without a reset query per release."""
    try:
        return await asyncpg.create_pool(dsn, min_size=min_size, max_size=max_size, timeout=timeout_s,
                                         reset=_keep_session)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        raise DatabaseError(
            f"cannot connect to PostgreSQL at {db.redact_dsn(dsn)}: {exc}",
            f"无法连接 PostgreSQL（{db.redact_dsn(dsn)}）：{exc}",
            "check --dsn or TAPGATE_DATABASE_DSN, or leave both empty to use the embedded server",
        ) from exc


class Components:
    """The views that the refresh loop replaces as a whole: verifier, deny list, rule books."""

    def __init__(self) -> None:
        self.verifier: Any = None
        self.deny: Any = None
        self.books: Any = None
        self.keys_marker: Any = None
        self.rules_marker: Any = None


class Worker:
    """Serve the gateway on one event loop; see the module docstring."""

    def __init__(self, config: Config, dsn: str, *, name: str | None = None,
                 sock: socket.socket | None = None, maintenance: bool = True) -> None:
        self.config = config
        self.dsn = dsn
        self.name = name or f"w-{os.getpid()}"
        self._sock = sock
        self._maintenance = maintenance
        self.pool: asyncpg.Pool | None = None
        self.registry = DeviceRegistry()
        self.components = Components()
        self.journal: Any = None
        self.pipeline: TapPipeline | None = None
        self.nonces: NonceGuard | None = None
        self.connections = ConnectionSet()
        self.server: asyncio.AbstractServer | None = None
        self.port: int | None = None
        self._refresher: asyncio.Task[None] | None = None
        self._replay_pruner: asyncio.Task[None] | None = None
        self._last_refresh_ok = 0.0
        self._last_nonce_prune = 0.0
        self._cache_seen = (0, 0)
        self._stopped = asyncio.Event()

    # -- start ------------------------------------------------------------------

    async def start(self) -> None:
        """Connect, load everything, start the journal and listen; raise if any of it fails."""
        database = self.config.database
        self.pool = await create_pool(self.dsn, min_size=database.pool_min, max_size=database.pool_max,
                                      timeout_s=database.connect_timeout_s)
        async with self.pool.acquire() as conn:
            await self._refresh(conn)
        self._last_refresh_ok = time.monotonic()

        journal_config = self.config.journal
        self.journal = Journal(self.pool, worker=self.name, flush_interval_ms=journal_config.flush_interval_ms,
                               batch_max=journal_config.batch_max, day_cutoff=parse_cutoff(journal_config.day_cutoff),
                               maintain_partitions=self._maintenance)
        await self.journal.start()
        self.nonces = NonceGuard(self.pool, self.config.server.device_clock_skew_s, database.connect_timeout_s)
        self.nonces.start()
        self.pipeline = TapPipeline(self.components, self.journal, self.config.server.card_duplicate_window_s,
                                    tap_time_tolerance_s=self.config.server.tap_time_tolerance_s)
        app = GatewayApp(self)

        server_config = self.config.server
        sock = self._sock or bind_socket(server_config.host, server_config.port)
        context = tls_context(server_config.tls_cert, server_config.tls_key) if server_config.tls_cert else None

        def protocol() -> HttpProtocol:
            return HttpProtocol(app.handle, plain_error_response, self.connections,
                                body_max_bytes=server_config.body_max_bytes,
                                request_timeout_s=server_config.request_timeout_s)

        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(protocol, sock=sock, ssl=context, backlog=2048)
        self.port = sock.getsockname()[1]
        self._refresher = loop.create_task(self._refresh_loop())
        if self._maintenance:
            self._replay_pruner = loop.create_task(self._prune_replay_keys_loop())
        log_event(log, logging.INFO, "worker.started", worker=self.name, port=self.port, tls=context is not None,
                  devices=len(self.registry))

    # -- refresh --------------------------------------------------------------

    async def _refresh(self, conn: asyncpg.Connection) -> None:
        await self.registry.refresh(conn)
        await self._refresh_keys(conn)
        await self._refresh_deny(conn)
        await self._refresh_rules(conn)

    async def _refresh_keys(self, conn: asyncpg.Connection) -> None:
        import fastpath

        keyset = await load_issuer_keys_if_changed(conn, self.components.keys_marker)
        if keyset is None:
            return
        self.update_cache_metrics()
        fp = self.config.fastpath
        # A new verifier starts with an empty credential cache, so a revoked key verifies nothing from now on.
        self.components.verifier = fastpath.Verifier(
            build_key_ring(keyset), clock_skew_s=fp.clock_skew_s, code_lifetime_s=fp.code_lifetime_s,
            offline_upload_max_s=fp.offline_upload_max_s, cache_size=fp.credential_cache_size)
        self.components.keys_marker = keyset.marker
        self._cache_seen = (0, 0)
        if self.pipeline is not None:
            log_event(log, logging.INFO, "worker.keys_reloaded", worker=self.name, keys=len(keyset.keys))

    async def _refresh_deny(self, conn: asyncpg.Connection) -> None:
        if self.components.deny is None:
            self.components.deny = DenyList()
        await self.components.deny.refresh(conn)

    async def _refresh_rules(self, conn: asyncpg.Connection) -> None:
        marker = self.components.rules_marker
        if marker is not None and not await store.rules_changed_since(conn, marker):
            return
        books = await store.load_books(conn)
        self.components.books = books
        self.components.rules_marker = books.marker
        if self.pipeline is not None:
            log_event(log, logging.INFO, "worker.rules_reloaded", worker=self.name)

    async def _refresh_loop(self) -> None:
        interval = self.config.server.refresh_interval_s
        timeout = self.config.database.connect_timeout_s
        failures = 0
        while True:
            await asyncio.sleep(interval)
            try:
                assert self.pool is not None
                async with self.pool.acquire(timeout=timeout) as conn:
                    await self._refresh(conn)
                    if self._maintenance and time.monotonic() - self._last_nonce_prune > NONCE_PRUNE_INTERVAL_S:
                        await delete_old_nonces(conn, self.config.server.device_clock_skew_s)
                        self._last_nonce_prune = time.monotonic()
            except db.CONNECTION_ERRORS as exc:
                failures += 1
                # One line per outage, then one every 60 failures, so an outage does not flood the log.
                if failures == 1 or failures % 60 == 0:
                    log_event(log, logging.WARNING, "worker.refresh_failed", worker=self.name, failures=failures,
                              error=f"{type(exc).__name__}: {exc}")
                continue
            except Exception as exc:  # a bug in a loader must not stop future refreshes
                failures += 1
                log_event(log, logging.ERROR, "worker.refresh_error", worker=self.name,
                          error=f"{type(exc).__name__}: {exc}")
                continue
            # Every worker publishes its cache counters, not only the one that a scrape reaches.
            self.update_cache_metrics()
            if failures:
                log_event(log, logging.INFO, "worker.refresh_recovered", worker=self.name, failures=failures)
            failures = 0
            self._last_refresh_ok = time.monotonic()

    async def _prune_replay_keys_loop(self) -> None:
        # A task of its own, not a step of the refresh loop: devices, keys and deny lists must keep
        # refreshing while it runs. The first run after an upgrade can take minutes (10 million old
        # keys took 100 s on the embedded PostgreSQL with 2 cores).
        horizon_s = replay_key_horizon_s(self.config)
        timeout = self.config.database.connect_timeout_s
        while True:
            try:
                assert self.pool is not None
                async with self.pool.acquire(timeout=timeout) as conn:
                    await prune_replay_keys(conn, horizon_s)
            except db.CONNECTION_ERRORS as exc:
                log_event(log, logging.WARNING, "worker.replay_prune_failed", worker=self.name,
                          error=f"{type(exc).__name__}: {exc}")
            except Exception as exc:  # a bug here must not stop later runs
                log_event(log, logging.ERROR, "worker.replay_prune_error", worker=self.name,
                          error=f"{type(exc).__name__}: {exc}")
            await asyncio.sleep(REPLAY_PRUNE_INTERVAL_S)

    def note_database_error(self, exc: BaseException) -> None:
        """Count a request that failed on PostgreSQL; logged by the journal and refresh loop, not per tap."""
        http_metrics.count_request("database_error", 503)

    async def readiness_problem(self) -> tuple[str, str] | None:
        """Return (English, Chinese) of why this worker is not ready, or None if it is."""
        if self.connections.draining:
            return "the worker is shutting down", "工作进程正在停止"
        try:
            assert self.pool is not None
            async with self.pool.acquire(timeout=READY_PROBE_TIMEOUT_S) as conn:
                await conn.fetchval("SELECT 1", timeout=READY_PROBE_TIMEOUT_S)
        except db.CONNECTION_ERRORS as exc:
            return (f"PostgreSQL is unreachable: {type(exc).__name__}: {exc}",
                    f"无法连接 PostgreSQL：{type(exc).__name__}")
        stale_s = time.monotonic() - self._last_refresh_ok
        if stale_s > 10 * self.config.server.refresh_interval_s + 5:
            return (f"devices, keys and deny lists were last refreshed {stale_s:.0f} s ago",
                    f"设备、密钥与黑名单已 {stale_s:.0f} 秒未刷新")
        return None

    def update_cache_metrics(self) -> None:
        """Move the verifier's cache counters into Prometheus (the verifier counts, the metric accumulates)."""
        verifier = self.components.verifier
        if verifier is None:
            return
        stats = verifier.stats()
        hits, misses = stats["cache_hits"], stats["cache_misses"]
        seen_hits, seen_misses = self._cache_seen
        if hits >= seen_hits and misses >= seen_misses:
            http_metrics.CREDENTIAL_CACHE.labels("hit").inc(hits - seen_hits)
            http_metrics.CREDENTIAL_CACHE.labels("miss").inc(misses - seen_misses)
        self._cache_seen = (hits, misses)

    # -- stop -----------------------------------------------------------------

    async def drain(self, timeout_s: float | None = None) -> bool:
        """Stop accepting, finish requests in flight, flush the journal; return False if it timed out."""
        timeout_s = self.config.server.shutdown_timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout_s
        log_event(log, logging.INFO, "worker.draining", worker=self.name, connections=len(self.connections.connections))

        # Leave a fifth of the time for the journal flush and the pool.
        clean = await self._close_connections(max(0.1, 0.8 * timeout_s))
        for task in (self._refresher, self._replay_pruner):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

        # Taps whose connection is gone are still in the journal's queue: flush them.
        try:
            if self.journal is not None:
                await asyncio.wait_for(self.journal.close(), max(0.1, deadline - time.monotonic()))
        except TimeoutError:
            clean = False
            log_event(log, logging.ERROR, "worker.journal_flush_timeout", worker=self.name)

        if self.nonces is not None:
            await self.nonces.close()
        if self.pool is not None:
            try:
                await asyncio.wait_for(self.pool.close(), max(0.1, deadline - time.monotonic()))
            except TimeoutError:
                self.pool.terminate()
        log_event(log, logging.INFO, "worker.stopped", worker=self.name, clean=clean)
        self._stopped.set()
        return clean

    async def _close_connections(self, timeout_s: float) -> bool:
        """Stop listening and wait for connections to finish; abort the rest after ``timeout_s``."""
        if self.server is not None:
            self.server.close()
        self.connections.begin_drain()
        try:
            await asyncio.wait_for(self.connections.wait_closed(), timeout_s)
        except TimeoutError:
            log_event(log, logging.WARNING, "worker.drain_timeout", worker=self.name,
                      connections=len(self.connections.connections))
            self.connections.abort_all()
            return False
        return True
