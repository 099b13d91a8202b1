"""Operations: health, readiness, metrics, TLS, PostgreSQL outages, and the OpenAPI file."""

from __future__ import annotations

import asyncio
import json
import pathlib
import re
import ssl
import subprocess
import time

import asyncpg
import msgspec
import pytest

from gateway import devices
from gateway.app import GatewayApp
from gateway.client import GatewayClient
from gateway.http_openapi import render
from gateway.pgembed import EmbeddedPostgres
from gateway.server import Worker
from tapgate import runtime
from tests.gateway.conftest import BUS_OPERATOR, ROUTE, GatewayEnv, seed, worker_config


def metric_value(text: str, name: str, **labels: str) -> float:
    """Return the value of one sample in Prometheus text, 0 if absent."""
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = re.escape(name) + (r"\{" + re.escape(wanted) + r"\}" if labels else "") + r" ([0-9.e+-]+)$"
    match = re.search(pattern, text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


async def test_healthz_and_readyz(gateway_env: GatewayEnv) -> None:
    async with gateway_env.client() as client:
        health = await client.request("GET", "/healthz", sign=False)
        ready = await client.request("GET", "/readyz", sign=False)
    assert health.status == 200
    assert ready.status == 200
    assert ready.decode() == {"status": "ready"}


async def test_metrics_count_taps_and_journal(gateway_env: GatewayEnv) -> None:
    env = gateway_env
    async with env.client() as client:
        before = (await client.request("GET", "/metrics", sign=False)).body.decode()
        await client.tap(env.qr_tap(env.phone()))
        await client.tap(env.qr_tap(env.phone(), tap_time_ms=int(time.time() * 1000) - 600_000))
        response = await client.request("GET", "/metrics", sign=False)
    after = response.body.decode()
    assert response.status == 200
    assert response.headers["content-type"].startswith("text/plain")
    accepted = ("tapgate_taps_total", {"decision": "accepted", "reason": "accepted"})
    expired = ("tapgate_taps_total", {"decision": "rejected", "reason": "code_expired"})
    assert metric_value(after, accepted[0], **accepted[1]) == metric_value(before, accepted[0], **accepted[1]) + 1
    assert metric_value(after, expired[0], **expired[1]) >= 1
    assert metric_value(after, "tapgate_tap_seconds_count") >= 2
    assert "tapgate_journal_batch_taps_bucket" in after
    assert 'tapgate_credential_cache_total{result="miss"}' in after


def test_openapi_file_matches_code(repo_root: pathlib.Path) -> None:
    on_disk = (repo_root / "docs" / "openapi.json").read_bytes()
    assert on_disk == render(), "docs/openapi.json is stale: run python -m gateway.http_openapi > docs/openapi.json"


def test_openapi_paths_are_the_server_routes(repo_root: pathlib.Path) -> None:
    document = json.loads((repo_root / "docs" / "openapi.json").read_text(encoding="utf-8"))
    documented = {(path, method.upper()) for path, item in document["paths"].items() for method in item}

    class FakeWorker:
        config = worker_config()
        pipeline = None

    routes = GatewayApp(FakeWorker()).routes
    served = {(path, method) for path, methods in routes.items() for method in methods}
    assert documented == served


def test_api_doc_names_every_route(repo_root: pathlib.Path) -> None:
    text = (repo_root / "docs" / "api.md").read_text(encoding="utf-8")
    for path in ("POST /v1/taps", "POST /v1/taps/batch", "GET /v1/deny-list", "/healthz", "/readyz", "/metrics"):
        assert path in text


async def test_tls_serves_taps(dsn: str, tmp_path: pathlib.Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1", "-days", "1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    issuer, validator, gate = await seed(dsn)
    worker = Worker(worker_config(tls_cert=str(cert), tls_key=str(key)), dsn)
    await worker.start()
    env = GatewayEnv(dsn, worker, issuer, validator, gate)
    context = ssl.create_default_context(cafile=str(cert))
    try:
        async with env.client(ssl=context) as client:
            response = await client.tap(env.qr_tap(env.phone()))
        # A plain-HTTP client gets no response from a TLS port.
        plain = GatewayClient("127.0.0.1", env.port, validator, timeout_s=2.0)
        with pytest.raises((ConnectionError, TimeoutError)):
            await plain.request("GET", "/healthz", sign=False)
        await plain.close()
    finally:
        await worker.drain(5.0)
    assert response.status == 200
    assert response.decode()["decision"] == "accepted"


async def _stop_postgres(server: EmbeddedPostgres) -> None:
    await asyncio.to_thread(server._run, "pg_ctl", "-D", str(server.data_dir), "-w", "-m", "fast", "stop")


async def _start_postgres(server: EmbeddedPostgres) -> None:
    await asyncio.to_thread(server._run, "pg_ctl", "-D", str(server.data_dir), "-l", str(server.log_file), "-w",
                            "-o", f"-p {server.port}", "start")


@pytest.mark.slow
async def test_postgres_down_gets_503_then_recovers(embedded_server: EmbeddedPostgres) -> None:
    admin = embedded_server.dsn.rsplit("/", 1)[0] + "/postgres"
    conn = await asyncpg.connect(admin)
    await conn.execute('DROP DATABASE IF EXISTS "gw_outage" WITH (FORCE)')
    await conn.execute('CREATE DATABASE "gw_outage"')
    await conn.close()
    dsn = admin.rsplit("/", 1)[0] + "/gw_outage"
    await runtime.migrate_all(dsn)
    issuer, validator, gate = await seed(dsn)
    config = worker_config()
    config = msgspec.structs.replace(config, database=msgspec.structs.replace(config.database, connect_timeout_s=2.0))
    worker = Worker(config, dsn)
    await worker.start()
    env = GatewayEnv(dsn, worker, issuer, validator, gate)
    try:
        async with env.client(timeout_s=15.0) as client:
            assert (await client.tap(env.qr_tap(env.phone()))).status == 200
            await _stop_postgres(embedded_server)
            try:
                tap = env.qr_tap(env.phone())
                started = time.monotonic()
                down = await client.tap(tap)
                waited = time.monotonic() - started
                ready = await client.request("GET", "/readyz", sign=False)
            finally:
                await _start_postgres(embedded_server)
            assert down.status == 503
            assert down.headers["retry-after"] == "1"
            assert down.decode()["error"]["code"] == "database_unavailable"
            assert waited < config.database.connect_timeout_s + 2
            assert ready.status == 503

            # The device retries the same tap until the gateway has reconnected.
            deadline = time.monotonic() + 20
            while True:
                again = await client.tap(tap)
                if again.status == 200 or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.5)
            assert again.status == 200
            assert again.decode()["decision"] == "accepted"
            assert (await client.request("GET", "/readyz", sign=False)).status == 200
        rows = await env.journal_rows()
        assert len(rows) == 2
    finally:
        await worker.drain(5.0)


async def test_slow_replay_prune_keeps_refreshing(dsn: str) -> None:
    # Pruning replay keys may take minutes after an upgrade. Meanwhile the
    # worker must still learn of new devices, keys and deny-list entries.
    await seed(dsn)
    blocker = await asyncpg.connect(dsn)
    observer = await asyncpg.connect(dsn)
    worker = Worker(worker_config(), dsn, name="prune-worker")
    try:
        await blocker.execute("INSERT INTO replay_keys VALUES ($1, 1, '2020-01-01', '2020-01-01T00:00:00Z')",
                              b"k" * 32)
        # Hold the old key's row lock, so the pruning DELETE waits until the lock is released.
        transaction = blocker.transaction()
        await transaction.start()
        await blocker.execute("SELECT 1 FROM replay_keys FOR UPDATE")
        await worker.start()

        # The observer is outside any transaction, so each read of pg_stat_activity is current.
        waiting = 0
        for _ in range(50):
            waiting = await observer.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND query LIKE '%DELETE FROM replay_keys%'")
            if waiting:
                break
            await asyncio.sleep(0.1)
        assert waiting == 1

        await devices.add_device(observer, "bus-late", BUS_OPERATOR, "validator", route_id=ROUTE)
        for _ in range(50):
            if worker.registry.get("bus-late") is not None:
                break
            await asyncio.sleep(0.1)
        assert worker.registry.get("bus-late") is not None

        await transaction.rollback()
        for _ in range(50):
            if not await observer.fetchval("SELECT count(*) FROM replay_keys"):
                break
            await asyncio.sleep(0.1)
        assert await observer.fetchval("SELECT count(*) FROM replay_keys") == 0
    finally:
        await worker.drain(5.0)
        await observer.close()
        await blocker.close()
