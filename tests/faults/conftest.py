"""Fixtures of the fault and hostile-input tests.

``hostile_env`` is the in-process gateway of the gateway tests (a real
worker, issuer key, devices and the example rule set on a fresh database),
reused here so that every rejection can be checked against the journal.
Tests that stop PostgreSQL start their own embedded server (``own_postgres``)
and never touch the session's shared one.
"""

from __future__ import annotations

import asyncio
import os
import pathlib
from typing import Any, AsyncIterator, Iterator

import asyncpg
import msgspec
import pytest

from gateway.config import Config
from gateway.pgembed import EmbeddedPostgres
from gateway.server import Worker
from tapgate import runtime
from tests.gateway import conftest as gw


def fault_config(**server: Any) -> Config:
    """Configuration of a test worker: loopback, a free port, quick refresh, generous rate limit."""
    settings = {"host": "127.0.0.1", "port": 0, "refresh_interval_s": 0.2, "request_timeout_s": 2.0,
                "shutdown_timeout_s": 5.0, "device_rate_per_s": 1000.0, "device_rate_burst": 1000}
    settings.update(server)
    return msgspec.convert({"server": settings, "journal": {"flush_interval_ms": 1.0},
                            "database": {"pool_min": 1, "pool_max": 4, "connect_timeout_s": 2.0}}, Config)


LONG_RUNS_ENV = "TAPGATE_FAULTS_LONG"
FUZZ_SCALE_ENV = "TAPGATE_FUZZ_SCALE"


def examples(count: int) -> int:
    """Hypothesis example count of a fuzz test, multiplied by TAPGATE_FUZZ_SCALE for longer runs."""
    scale = os.environ.get(FUZZ_SCALE_ENV, "1")
    return count * (int(scale) if scale.isdigit() and int(scale) > 0 else 1)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip the long fault runs of this folder unless asked for with ``-m slow`` or TAPGATE_FAULTS_LONG=1.

    Their short variants stay in the default suite.
    """
    if "slow" in (config.option.markexpr or "") or os.environ.get(LONG_RUNS_ENV) == "1":
        return
    skip = pytest.mark.skip(reason=f"long fault run: select it with -m slow or {LONG_RUNS_ENV}=1")
    here = pathlib.Path(__file__).parent
    for item in items:
        if item.get_closest_marker("slow") and here in pathlib.Path(str(item.fspath)).parents:
            item.add_marker(skip)


async def journal_counts(dsn: str) -> tuple[int, int]:
    """Return (rows in taps, rows in journal_batches)."""
    conn = await asyncpg.connect(dsn)
    try:
        taps = await conn.fetchval("SELECT count(*) FROM taps")
        batches = await conn.fetchval("SELECT count(*) FROM journal_batches")
    finally:
        await conn.close()
    return taps, batches


async def start_env(dsn: str, **server: Any) -> gw.GatewayEnv:
    """Seed ``dsn`` like the gateway tests do and start one worker with ``server`` settings."""
    issuer, validator, gate = await gw.seed(dsn)
    worker = Worker(fault_config(**server), dsn, name="hostile-worker")
    await worker.start()
    return gw.GatewayEnv(dsn, worker, issuer, validator, gate)


@pytest.fixture
async def hostile_env(dsn: str) -> AsyncIterator[gw.GatewayEnv]:
    env = await start_env(dsn)
    try:
        yield env
    finally:
        await env.worker.drain(5.0)


@pytest.fixture
def own_postgres(tmp_path: pathlib.Path) -> Iterator[EmbeddedPostgres]:
    """An embedded PostgreSQL started for this test alone, migrated, destroyed afterwards."""
    server = EmbeddedPostgres(tmp_path / "pgdata")
    server.start()
    try:
        asyncio.run(runtime.migrate_all(server.dsn))
        yield server
    finally:
        server.destroy()
