"""Hostile devices: every forged, replayed, misdirected, mistimed, oversized or flooding request
is rejected with its own status and code, and the journal stays untouched.

Each test sends raw bytes over loopback to a real worker and then counts the
rows of ``taps`` and ``journal_batches``: a rejection that still journals a
tap is a failure even when the status is right.
"""

from __future__ import annotations

import asyncio
import base64

import msgspec
import pytest

from gateway.client import DeviceCredentials, sign_headers
from gateway.server import Worker
from tests.faults.conftest import fault_config, journal_counts, start_env
from tests.gateway import conftest as gw

SKEW_S = 300


async def exchange(port: int, data: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send ``data`` on a new connection and read one response."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
        body = await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), 5)
        return int(lines[0].split()[1]), headers, body
    finally:
        writer.close()


def request_bytes(body: bytes, authorization: str | None, *, path: str = "/v1/taps",
                  method: str = "POST") -> bytes:
    auth = f"Authorization: {authorization}\r\n" if authorization is not None else ""
    return (f"{method} {path} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n{auth}"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def signed(creds: DeviceCredentials, body: bytes, *, path: str = "/v1/taps", signed_path: str | None = None,
           signed_body: bytes | None = None, ts_ms: int | None = None) -> bytes:
    header = sign_headers(creds, "POST", signed_path or path, body if signed_body is None else signed_body,
                          now_ms=ts_ms)["Authorization"]
    return request_bytes(body, header, path=path)


def error_code(body: bytes) -> str:
    error = msgspec.json.decode(body)["error"]
    assert error["message_zh"] and error["message_en"], error
    return error["code"]


async def assert_rejected(env: gw.GatewayEnv, data: bytes, status: int, code: str) -> None:
    before = await journal_counts(env.dsn)
    got, _, body = await exchange(env.port, data)
    assert (got, error_code(body)) == (status, code)
    assert await journal_counts(env.dsn) == before


def tap_body(env: gw.GatewayEnv, **fields: object) -> bytes:
    return msgspec.json.encode(env.qr_tap(env.phone(), **fields))


# -- unsigned and badly signed ------------------------------------------------

MALFORMED_HEADERS = [
    "",
    "Bearer abc",
    "TAPGATE-HMAC-SHA256",
    "TAPGATE-HMAC-SHA256 device=bus-1-001",
    "TAPGATE-HMAC-SHA256 device=bus-1-001,ts=1,nonce=00,sig=00",
    "TAPGATE-HMAC-SHA256 device=bus-1-001,ts=-5,nonce=" + "0" * 32 + ",sig=" + "0" * 64,
    "TAPGATE-HMAC-SHA256 device=bus-1-001,ts=1,nonce=" + "G" * 32 + ",sig=" + "0" * 64,
    "TAPGATE-HMAC-SHA256 device=bus 1,ts=1,nonce=" + "0" * 32 + ",sig=" + "0" * 64,
    "TAPGATE-HMAC-SHA256 sig=" + "0" * 64 + ",nonce=" + "0" * 32 + ",ts=1,device=bus-1-001",
    "TAPGATE-HMAC-SHA256 device=bus-1-001,ts=1,nonce=" + "0" * 32 + ",sig=" + "0" * 64 + ",extra=1",
]


async def test_unsigned_tap_rejected(hostile_env: gw.GatewayEnv) -> None:
    await assert_rejected(hostile_env, request_bytes(tap_body(hostile_env), None), 401, "missing_authorization")


@pytest.mark.parametrize("header", MALFORMED_HEADERS)
async def test_malformed_signature_header_rejected(hostile_env: gw.GatewayEnv, header: str) -> None:
    code = "missing_authorization" if header == "" else "malformed_authorization"
    await assert_rejected(hostile_env, request_bytes(tap_body(hostile_env), header), 401, code)


async def test_wrong_secret_rejected(hostile_env: gw.GatewayEnv) -> None:
    forged = DeviceCredentials(gw.VALIDATOR, b"\x00" * 32)
    await assert_rejected(hostile_env, signed(forged, tap_body(hostile_env)), 401, "bad_signature")


async def test_other_devices_secret_rejected(hostile_env: gw.GatewayEnv) -> None:
    # The gate's real secret under the validator's name.
    borrowed = DeviceCredentials(gw.VALIDATOR, hostile_env.gate.secret)
    await assert_rejected(hostile_env, signed(borrowed, tap_body(hostile_env)), 401, "bad_signature")


async def test_signature_for_other_body_rejected(hostile_env: gw.GatewayEnv) -> None:
    env = hostile_env
    genuine = tap_body(env)
    tampered = genuine.replace(b'"stop_id":"s01"', b'"stop_id":"s99"')
    assert tampered != genuine
    await assert_rejected(env, signed(env.validator, tampered, signed_body=genuine), 401, "bad_signature")


async def test_signature_for_other_path_rejected(hostile_env: gw.GatewayEnv) -> None:
    env = hostile_env
    body = msgspec.json.encode({"taps": [env.qr_tap(env.phone(), offline=True)]})
    await assert_rejected(env, signed(env.validator, body, path="/v1/taps/batch", signed_path="/v1/taps"),
                          401, "bad_signature")


async def test_unknown_device_rejected(hostile_env: gw.GatewayEnv) -> None:
    ghost = DeviceCredentials("bus-9-999", hostile_env.validator.secret)
    await assert_rejected(hostile_env, signed(ghost, tap_body(hostile_env)), 401, "unknown_device")


async def test_disabled_device_rejected(hostile_env: gw.GatewayEnv) -> None:
    env = hostile_env
    await env.execute("UPDATE devices SET status = 'disabled', updated_at = clock_timestamp() WHERE device_id = $1",
                      gw.VALIDATOR)
    await asyncio.sleep(3 * env.worker.config.server.refresh_interval_s + 0.1)
    await assert_rejected(env, signed(env.validator, tap_body(env)), 401, "device_disabled")


# -- replays ----------------------------------------------------------------------

async def test_replayed_request_journals_once(hostile_env: gw.GatewayEnv) -> None:
    env = hostile_env
    request = signed(env.validator, tap_body(env))
    status, _, _ = await exchange(env.port, request)
    assert status == 200
    assert await journal_counts(env.dsn) == (1, 1)
    for _ in range(3):
        await assert_rejected(env, request, 401, "replayed_request")


async def test_replay_to_other_worker_rejected(hostile_env: gw.GatewayEnv) -> None:
    env = hostile_env
    other = Worker(fault_config(), env.dsn, name="second-worker", maintenance=False)
    await other.start()
    try:
        request = signed(env.validator, tap_body(env))
        assert (await exchange(env.port, request))[0] == 200
        before = await journal_counts(env.dsn)
        status, _, body = await exchange(other.port, request)
        assert (status, error_code(body)) == (401, "replayed_request")
        assert await journal_counts(env.dsn) == before
    finally:
        await other.drain(5.0)


async def test_replayed_batch_rejected(hostile_env: gw.GatewayEnv) -> None:
    env = hostile_env
    body = msgspec.json.encode({"taps": [env.qr_tap(env.phone(), offline=True) for _ in range(3)]})
    request = signed(env.validator, body, path="/v1/taps/batch")
    assert (await exchange(env.port, request))[0] == 200
    assert (await journal_counts(env.dsn))[0] == 3
    await assert_rejected(env, request, 401, "replayed_request")


async def test_resent_qr_code_under_new_tap_id_not_charged(hostile_env: gw.GatewayEnv) -> None:
    # A device that re-sends a captured QR code as a new tap gets REPLAYED (43), fare 0.
    env = hostile_env
    first = env.qr_tap(env.phone())
    second = dict(first, tap_id=next(env.tap_ids))
    async with env.client() as client:
        assert (await client.tap(first)).decode()["decision"] == "accepted"
        answer = (await client.tap(second)).decode()
    assert (answer["decision"], answer["reason"], answer["fare_fen"]) == ("rejected", 43, 0)
    charged = [row for row in await env.journal_rows() if row["decision"] == 1]
    assert len(charged) == 1


# -- another operator's route or site ------------------------------------------

async def test_validator_tap_for_other_route_rejected(hostile_env: gw.GatewayEnv) -> None:
    env = hostile_env
    await assert_rejected(env, signed(env.validator, tap_body(env, route_id="99")), 403, "wrong_route")


async def test_validator_tap_for_other_operators_site_rejected(hostile_env: gw.GatewayEnv) -> None:
    env = hostile_env
    body = tap_body(env, route_id=None, site_id=gw.SITE, tap_kind="entry")
    # A validator submits no site at all, so the error names site_id.
    await assert_rejected(env, signed(env.validator, body), 403, "wrong_site")


async def test_gate_tap_for_bus_route_rejected(hostile_env: gw.GatewayEnv) -> None:
    env = hostile_env
    body = tap_body(env, route_id=gw.ROUTE)
    # A gate submits no route at all, so the error names route_id.
    await assert_rejected(env, signed(env.gate, body), 403, "wrong_route")


async def test_batch_with_one_foreign_tap_journals_nothing(hostile_env: gw.GatewayEnv) -> None:
    env = hostile_env
    taps = [env.qr_tap(env.phone(), offline=True) for _ in range(4)]
    taps[2]["route_id"] = "99"
    body = msgspec.json.encode({"taps": taps})
    await assert_rejected(env, signed(env.validator, body, path="/v1/taps/batch"), 403, "wrong_route")


# -- clocks -------------------------------------------------------------------------

@pytest.mark.parametrize("offset_s", [-86_400, -(SKEW_S + 5), SKEW_S + 5, 365 * 86_400])
async def test_request_clock_far_off_rejected(hostile_env: gw.GatewayEnv, offset_s: int) -> None:
    env = hostile_env
    request = signed(env.validator, tap_body(env), ts_ms=gw.now_ms() + offset_s * 1000)
    await assert_rejected(env, request, 401, "clock_skew")


@pytest.mark.parametrize("ts_ms", [0, 999_999_999_999_999])
async def test_request_timestamp_extremes_rejected(hostile_env: gw.GatewayEnv, ts_ms: int) -> None:
    env = hostile_env
    await assert_rejected(env, signed(env.validator, tap_body(env), ts_ms=ts_ms), 401, "clock_skew")


@pytest.mark.parametrize("offset_s", [-3600, 3600, 30 * 86_400])
async def test_online_tap_time_far_off_not_accepted(hostile_env: gw.GatewayEnv, offset_s: int) -> None:
    # The request is signed with a correct clock, but the tap claims a time far
    # from now, with a QR code made at that claimed time. An online tap is
    # checked against the gateway's clock, so it must not be accepted.
    env = hostile_env
    at = gw.now_ms() + offset_s * 1000
    tap = env.qr_tap(env.phone(), tap_time_ms=at)
    async with env.client() as client:
        answer = (await client.tap(tap)).decode()
    assert answer["decision"] == "rejected", answer
    assert answer["fare_fen"] == 0


# -- sizes and floods ------------------------------------------------------------------

async def test_oversized_batch_journals_nothing(hostile_env: gw.GatewayEnv) -> None:
    env = hostile_env
    limit = env.worker.config.server.batch_taps_max
    tap = env.qr_tap(env.phone(), offline=True)
    body = msgspec.json.encode({"taps": [dict(tap, tap_id=n) for n in range(limit + 1)]})
    await assert_rejected(env, signed(env.validator, body, path="/v1/taps/batch"), 422, "invalid_field")


async def test_empty_batch_rejected(hostile_env: gw.GatewayEnv) -> None:
    env = hostile_env
    body = msgspec.json.encode({"taps": []})
    await assert_rejected(env, signed(env.validator, body, path="/v1/taps/batch"), 422, "invalid_field")


async def test_oversized_body_rejected_before_reading(hostile_env: gw.GatewayEnv) -> None:
    env = hostile_env
    limit = env.worker.config.server.body_max_bytes
    body = b"{" + b" " * limit + b"}"
    # Only the head is sent: the gateway must answer from Content-Length alone, without waiting for the body.
    head = signed(env.validator, body)[:-len(body)]
    await assert_rejected(env, head, 413, "body_too_large")


async def test_oversized_presented_field_rejected(hostile_env: gw.GatewayEnv) -> None:
    env = hostile_env
    huge = base64.b64encode(b"\x01" * 9000).decode()
    body = tap_body(env, medium="card", presented=huge)
    await assert_rejected(env, signed(env.validator, body), 422, "invalid_field")


async def test_flood_limited_per_device(dsn: str) -> None:
    env = await start_env(dsn, device_rate_per_s=5.0, device_rate_burst=10)
    try:
        statuses: list[int] = []
        retry_after: set[str] = set()
        for _ in range(40):
            status, headers, body = await exchange(env.port, signed(env.validator, tap_body(env)))
            statuses.append(status)
            if status == 429:
                assert error_code(body) == "rate_limited"
                retry_after.add(headers.get("retry-after", ""))
        # The gate has its own bucket and is not slowed by the validator's flood.
        gate_tap = msgspec.json.encode(env.qr_tap(env.phone(), route_id=None, site_id=gw.SITE, tap_kind="entry"))
        gate_status, _, _ = await exchange(env.port, signed(env.gate, gate_tap))
        taps, _ = await journal_counts(env.dsn)
    finally:
        await env.worker.drain(5.0)
    accepted = statuses.count(200)
    assert 10 <= accepted <= 13, statuses
    assert statuses.count(429) == 40 - accepted
    assert retry_after and all(value.isdigit() and int(value) >= 1 for value in retry_after)
    assert gate_status == 200
    assert taps == accepted + 1
