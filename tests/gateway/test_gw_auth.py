"""Device authentication and request validation: 401, 403, 409-free replays, 415, 422, 429."""

from __future__ import annotations

import asyncio

import asyncpg
import msgspec
import pytest

from gateway import devices
from gateway.client import DeviceCredentials, sign_headers
from tests.gateway.conftest import GATE, VALIDATOR, GatewayEnv, now_ms


async def raw_exchange(env: GatewayEnv, data: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send bytes as they are, and read one response."""
    reader, writer = await asyncio.open_connection("127.0.0.1", env.port)
    try:
        writer.write(data)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
        body = await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), 5)
        return int(lines[0].split()[1]), headers, body
    finally:
        writer.close()


def signed_request(creds: DeviceCredentials, body: bytes, *, path: str = "/v1/taps", method: str = "POST",
                   content_type: str = "application/json", ts_ms: int | None = None,
                   nonce: str | None = None) -> bytes:
    auth = sign_headers(creds, method, path, body, now_ms=ts_ms, nonce=nonce)["Authorization"]
    return (f"{method} {path} HTTP/1.1\r\nHost: t\r\nContent-Type: {content_type}\r\nAuthorization: {auth}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def error_of(body: bytes) -> dict:
    error = msgspec.json.decode(body)["error"]
    assert error["message_zh"], error
    assert error["message_en"], error
    return error


async def test_missing_authorization_gets_401(gateway_env: GatewayEnv) -> None:
    env = gateway_env
    body = msgspec.json.encode(env.qr_tap(env.phone()))
    status, headers, answer = await raw_exchange(
        env, b"POST /v1/taps HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
        + body)
    assert status == 401
    assert headers["www-authenticate"] == "TAPGATE-HMAC-SHA256"
    assert error_of(answer)["code"] == "missing_authorization"
    assert await env.journal_rows() == []


async def test_unknown_device_gets_401(gateway_env: GatewayEnv) -> None:
    env = gateway_env
    body = msgspec.json.encode(env.qr_tap(env.phone()))
    status, _, answer = await raw_exchange(env, signed_request(DeviceCredentials("ghost-1", b"x" * 32), body))
    assert status == 401
    assert error_of(answer)["code"] == "unknown_device"
    assert await env.journal_rows() == []


async def test_bad_signature_gets_401_and_records_nothing(gateway_env: GatewayEnv) -> None:
    env = gateway_env
    body = msgspec.json.encode(env.qr_tap(env.phone()))
    wrong = DeviceCredentials(VALIDATOR, b"not-the-secret-of-this-device!!")
    status, _, answer = await raw_exchange(env, signed_request(wrong, body))
    assert status == 401
    assert error_of(answer)["code"] == "bad_signature"
    assert await env.journal_rows() == []


async def test_tampered_body_fails_signature(gateway_env: GatewayEnv) -> None:
    env = gateway_env
    body = msgspec.json.encode(env.qr_tap(env.phone()))
    request = signed_request(env.validator, body)
    tampered = request.replace(b'"stop_id":"s01"', b'"stop_id":"s02"')
    assert tampered != request
    status, _, answer = await raw_exchange(env, tampered)
    assert status == 401
    assert error_of(answer)["code"] == "bad_signature"


async def test_clock_skew_gets_401_with_reason(gateway_env: GatewayEnv) -> None:
    env = gateway_env
    body = msgspec.json.encode(env.qr_tap(env.phone()))
    skew_s = env.worker.config.server.device_clock_skew_s
    status, _, answer = await raw_exchange(env, signed_request(env.validator, body,
                                                               ts_ms=now_ms() - (skew_s + 60) * 1000))
    assert status == 401
    error = error_of(answer)
    assert error["code"] == "clock_skew"
    assert "synchronise the device clock" in error["message_en"]


async def test_replayed_request_gets_401(gateway_env: GatewayEnv) -> None:
    env = gateway_env
    request = signed_request(env.validator, msgspec.json.encode(env.qr_tap(env.phone())))
    first, _, _ = await raw_exchange(env, request)
    second, _, answer = await raw_exchange(env, request)
    assert first == 200
    assert second == 401
    assert error_of(answer)["code"] == "replayed_request"
    assert len(await env.journal_rows()) == 1


async def test_replay_caught_by_postgresql_not_memory(gateway_env: GatewayEnv) -> None:
    env = gateway_env
    request = signed_request(env.validator, msgspec.json.encode(env.qr_tap(env.phone())))
    assert (await raw_exchange(env, request))[0] == 200
    # Forget what this worker saw, as another worker would never have seen it.
    assert env.worker.nonces is not None
    env.worker.nonces._seen.clear()
    status, _, answer = await raw_exchange(env, request)
    assert status == 401
    assert error_of(answer)["code"] == "replayed_request"


class _FailingOnce:
    """A real pool whose next acquire() raises ``error`` once, as a connection broken mid-operation does."""

    def __init__(self, pool: object, error: Exception) -> None:
        self._pool = pool
        self._error: Exception | None = error

    def acquire(self, **options: object) -> object:
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        return self._pool.acquire(**options)  # type: ignore[attr-defined]


@pytest.mark.parametrize("error", [
    asyncpg.InternalClientError("cannot switch to state 12; another operation (2) is in progress"),
    RuntimeError("a bug in the nonce statement"),
], ids=["client_error", "bug"])
async def test_nonce_check_survives_failure(gateway_env: GatewayEnv, error: Exception) -> None:
    env = gateway_env
    guard = env.worker.nonces
    assert guard is not None
    guard._pool = _FailingOnce(guard._pool, error)  # type: ignore[assignment]
    request = signed_request(env.validator, msgspec.json.encode(env.qr_tap(env.phone())))
    failed, headers, answer = await raw_exchange(env, request)
    assert failed == 503
    assert headers["retry-after"] == "1"
    assert error_of(answer)["code"] == "database_unavailable"
    # The nonce was not recorded: the same request again is the tap's retry, not a replay.
    again, _, answer = await raw_exchange(env, request)
    assert again == 200
    assert msgspec.json.decode(answer)["status"] == "retry"
    fresh = signed_request(env.validator, msgspec.json.encode(env.qr_tap(env.phone())))
    assert (await raw_exchange(env, fresh))[0] == 200


async def test_nonce_claim_in_flight_fails_on_close(gateway_env: GatewayEnv) -> None:
    env = gateway_env
    guard = env.worker.nonces
    assert guard is not None
    nonce = bytes(16)
    # An uncommitted insert of the same nonce makes the guard's insert wait for this transaction.
    blocker = await asyncpg.connect(env.dsn)
    try:
        await blocker.execute("BEGIN")
        await blocker.execute("INSERT INTO device_nonces (nonce, device_id, request_ts) VALUES ($1, 'x', now())",
                              nonce)
        claim = guard.claim(nonce, VALIDATOR, now_ms())
        for _ in range(200):
            # Statistics views keep one snapshot per transaction unless it is cleared.
            await blocker.execute("SELECT pg_stat_clear_snapshot()")
            waiting = await blocker.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()")
            if waiting:
                break
            await asyncio.sleep(0.01)
        assert waiting == 1
        await guard.close()
        with pytest.raises(ConnectionError, match="shutting down"):
            await asyncio.wait_for(claim, 5)
    finally:
        await blocker.execute("ROLLBACK")
        await blocker.close()
        guard.start()


async def test_disabled_device_gets_401_after_refresh(gateway_env: GatewayEnv) -> None:
    env = gateway_env
    conn = await __import__("asyncpg").connect(env.dsn)
    try:
        await devices.set_device_status(conn, VALIDATOR, "disabled")
    finally:
        await conn.close()
    await asyncio.sleep(3 * env.worker.config.server.refresh_interval_s + 0.1)
    body = msgspec.json.encode(env.qr_tap(env.phone()))
    status, _, answer = await raw_exchange(env, signed_request(env.validator, body))
    assert status == 401
    assert error_of(answer)["code"] == "device_disabled"
    assert await env.journal_rows() == []


async def test_rotated_secret_replaces_old_one(gateway_env: GatewayEnv) -> None:
    env = gateway_env
    conn = await __import__("asyncpg").connect(env.dsn)
    try:
        new_secret = await devices.rotate_secret(conn, VALIDATOR)
    finally:
        await conn.close()
    await asyncio.sleep(3 * env.worker.config.server.refresh_interval_s + 0.1)
    old_status, _, _ = await raw_exchange(env, signed_request(env.validator, msgspec.json.encode(
        env.qr_tap(env.phone()))))
    new_status, _, _ = await raw_exchange(env, signed_request(DeviceCredentials(VALIDATOR, new_secret),
                                                              msgspec.json.encode(env.qr_tap(env.phone()))))
    assert old_status == 401
    assert new_status == 200


async def test_tap_for_other_route_gets_403(gateway_env: GatewayEnv) -> None:
    env = gateway_env
    body = msgspec.json.encode(env.qr_tap(env.phone(), route_id="8"))
    status, _, answer = await raw_exchange(env, signed_request(env.validator, body))
    assert status == 403
    error = error_of(answer)
    assert error["code"] == "wrong_route"
    assert error["field"] == "$.route_id"
    assert await env.journal_rows() == []


async def test_gate_tap_for_other_site_gets_403(gateway_env: GatewayEnv) -> None:
    env = gateway_env
    tap = env.card_tap(env.card(), GATE, route_id=None, stop_id=None, site_id="museum", tap_kind="entry")
    status, _, answer = await raw_exchange(env, signed_request(env.gate, msgspec.json.encode(tap)))
    assert status == 403
    assert error_of(answer)["code"] == "wrong_site"


async def test_wrong_content_type_gets_415(gateway_env: GatewayEnv) -> None:
    env = gateway_env
    body = msgspec.json.encode(env.qr_tap(env.phone()))
    status, _, answer = await raw_exchange(env, signed_request(env.validator, body, content_type="text/plain"))
    assert status == 415
    assert "text/plain" in error_of(answer)["message_en"]


async def test_unknown_field_gets_422_naming_it(gateway_env: GatewayEnv) -> None:
    env = gateway_env
    tap = env.qr_tap(env.phone())
    tap["fare_override"] = 0
    status, _, answer = await raw_exchange(env, signed_request(env.validator, msgspec.json.encode(tap)))
    assert status == 422
    error = error_of(answer)
    assert error["field"] == "$.fare_override"
    assert "fare_override" in error["message_en"]


async def test_wrong_type_gets_422_naming_field(gateway_env: GatewayEnv) -> None:
    env = gateway_env
    tap = env.qr_tap(env.phone())
    tap["tap_time_ms"] = "yesterday"
    status, _, answer = await raw_exchange(env, signed_request(env.validator, msgspec.json.encode(tap)))
    assert status == 422
    assert error_of(answer)["field"] == "$.tap_time_ms"
    assert error_of(answer)["message_zh"] == "请求体字段无效：应为 int 类型，实际为 str（位置 `$.tap_time_ms`）"


async def test_missing_field_gets_422(gateway_env: GatewayEnv) -> None:
    env = gateway_env
    tap = env.qr_tap(env.phone())
    del tap["medium"]
    status, _, answer = await raw_exchange(env, signed_request(env.validator, msgspec.json.encode(tap)))
    assert status == 422
    error = error_of(answer)
    assert "medium" in error["message_en"]
    assert error["field"] == "$.medium"


async def test_malformed_json_gets_400(gateway_env: GatewayEnv) -> None:
    env = gateway_env
    status, _, answer = await raw_exchange(env, signed_request(env.validator, b'{"tap_id": 1,'))
    assert status == 400
    assert error_of(answer)["code"] == "malformed_body"


async def test_rate_limit_gets_429_with_retry_after(dsn: str) -> None:
    from gateway.server import Worker
    from tests.gateway.conftest import GatewayEnv as Env, seed, worker_config

    issuer, validator, gate = await seed(dsn)
    worker = Worker(worker_config(device_rate_per_s=1.0, device_rate_burst=2), dsn)
    await worker.start()
    env = Env(dsn, worker, issuer, validator, gate)
    try:
        statuses = []
        for _ in range(4):
            status, headers, _ = await raw_exchange(
                env, signed_request(env.validator, msgspec.json.encode(env.qr_tap(env.phone()))))
            statuses.append((status, headers.get("retry-after")))
    finally:
        await worker.drain(5.0)
    assert [s for s, _ in statuses[:2]] == [200, 200]
    assert statuses[2][0] == 429
    assert int(statuses[2][1]) >= 1


async def test_unknown_path_and_method(gateway_env: GatewayEnv) -> None:
    env = gateway_env
    status, _, _ = await raw_exchange(env, b"GET /v2/nothing HTTP/1.1\r\nHost: t\r\n\r\n")
    assert status == 404
    status, headers, _ = await raw_exchange(env, b"GET /v1/taps HTTP/1.1\r\nHost: t\r\n\r\n")
    assert status == 405
    assert headers["allow"] == "POST"


async def test_msgpack_request_gets_msgpack_error(gateway_env: GatewayEnv) -> None:
    env = gateway_env
    tap = env.qr_tap(env.phone())
    tap["tap_kind"] = "teleport"
    body = msgspec.msgpack.encode(tap)
    status, headers, answer = await raw_exchange(
        env, signed_request(env.validator, body, content_type="application/msgpack"))
    assert status == 422
    assert headers["content-type"] == "application/msgpack"
    error = msgspec.msgpack.decode(answer)["error"]
    assert error["field"] == "$.tap_kind"
