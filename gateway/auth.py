"""Device request authentication: the HMAC ``Authorization`` header, clock skew and nonces.

:func:`authenticate` checks everything that needs no I/O (header syntax,
device status, timestamp, signature) and returns the device or an
:class:`AuthFailure`. :class:`NonceGuard` then claims the request's nonce in
PostgreSQL, batching the nonces of concurrent requests into one statement,
so a replay is caught whichever worker receives it. The server runs the
nonce claim concurrently with the tap's processing (see ``gateway.app``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import logging
import re
import time

import asyncpg

from gateway.client import SCHEME, signature
from gateway.db import CONNECTION_ERRORS
from gateway.devices import Device, DeviceRegistry
from gateway.logs import log_event

log = logging.getLogger(__name__)

_HEADER = re.compile(
    rb"^" + SCHEME.encode() + rb" device=([A-Za-z0-9][A-Za-z0-9_.-]{0,62}),ts=(\d{1,15}),"
    rb"nonce=([0-9a-f]{32}),sig=([0-9a-f]{64})$")


@dataclasses.dataclass(frozen=True, slots=True)
class AuthFailure:
    """Why a request was not authenticated, and the HTTP status of the response."""

    status: int
    code: str
    message_en: str
    message_zh: str


@dataclasses.dataclass(frozen=True, slots=True)
class Authenticated:
    device: Device
    ts_ms: int
    nonce: bytes


def authenticate(registry: DeviceRegistry, method: str, target: str, authorization: bytes | None,
                 body: bytes, now_ms: int, clock_skew_s: int) -> Authenticated | AuthFailure:
    """Check a request's signature header against the registry; nothing is recorded here."""
    if not authorization:
        return AuthFailure(401, "missing_authorization",
                           f"missing Authorization header; sign the request with {SCHEME}",
                           f"缺少 Authorization 请求头，请按 {SCHEME} 签名")
    match = _HEADER.match(authorization.strip())
    if match is None:
        return AuthFailure(401, "malformed_authorization",
                           f"malformed Authorization header; expected '{SCHEME} device=<id>,ts=<unix ms>,"
                           "nonce=<32 hex>,sig=<64 hex>'",
                           f"Authorization 请求头格式错误，应为 '{SCHEME} device=<编号>,ts=<毫秒时间戳>,"
                           "nonce=<32位十六进制>,sig=<64位十六进制>'")
    device_id = match.group(1).decode("ascii")
    ts_ms = int(match.group(2))
    nonce_hex = match.group(3).decode("ascii")

    device = registry.get(device_id)
    if device is None:
        return AuthFailure(401, "unknown_device", f"unknown device {device_id!r}", f"未知设备 {device_id!r}")
    if not device.active:
        return AuthFailure(401, "device_disabled", f"device {device_id!r} is disabled", f"设备 {device_id!r} 已停用")

    # The signature is checked before the clock, so an attacker without the
    # secret learns nothing about the gateway's time from the response.
    expected = signature(device.secret, method, target, ts_ms, nonce_hex, body)
    if not hmac.compare_digest(expected.encode("ascii"), match.group(4)):
        return AuthFailure(401, "bad_signature",
                           f"invalid request signature for device {device_id!r}; check the device secret "
                           "and that method, path, timestamp, nonce and body are signed as sent",
                           f"设备 {device_id!r} 的请求签名无效，请检查设备密钥及签名内容")

    skew_ms = ts_ms - now_ms
    if abs(skew_ms) > clock_skew_s * 1000:
        return AuthFailure(401, "clock_skew",
                           f"request timestamp {ts_ms} differs from the gateway clock {now_ms} by "
                           f"{skew_ms / 1000:+.1f} s, more than the {clock_skew_s} s allowed; "
                           "synchronise the device clock",
                           f"请求时间戳 {ts_ms} 与网关时钟 {now_ms} 相差 {skew_ms / 1000:+.1f} 秒，"
                           f"超过允许的 {clock_skew_s} 秒，请校准设备时钟")
    return Authenticated(device, ts_ms, bytes.fromhex(nonce_hex))


REPLAYED = AuthFailure(401, "replayed_request",
                       "this request was already received (same nonce); sign every request with a new nonce",
                       "该请求已收到过（随机数重复），每个请求须使用新的随机数签名")


class NonceGuard:
    """Claim request nonces in PostgreSQL, at most one statement in flight per worker.

    Nonces of requests arriving while a statement runs wait and go together in
    the next one, so the cost per request falls as the load rises. A nonce
    seen by this worker is rejected at once without asking PostgreSQL.
    """

    def __init__(self, pool: asyncpg.Pool, window_s: float, timeout_s: float = 5.0) -> None:
        self._pool = pool
        self._window_s = window_s
        self._timeout_s = timeout_s
        self._seen: dict[bytes, float] = {}
        self._pending: list[tuple[bytes, str, int, asyncio.Future[bool]]] = []
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._last_prune = time.monotonic()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        for _, _, _, future in self._pending:
            _fail(future, ConnectionError("the gateway is shutting down"))
        self._pending.clear()

    def claim(self, nonce: bytes, device_id: str, ts_ms: int) -> asyncio.Future[bool]:
        """Return a future: True if the nonce is new everywhere, False if it was used before."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        if nonce in self._seen:
            future.set_result(False)
            return future
        self._seen[nonce] = time.monotonic()
        self._pending.append((nonce, device_id, ts_ms, future))
        self._wakeup.set()
        return future

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            batch, self._pending = self._pending, []
            if batch:
                try:
                    await self._flush(batch)
                except asyncio.CancelledError:
                    # close() during a claim: its requests get a 503, not a wait without end.
                    self._fail_batch(batch, ConnectionError("the gateway is shutting down"))
                    raise
                except Exception as exc:
                    # A bug here must not end this task: every later claim of the worker would wait forever.
                    log.exception("nonce.flush_error count=%d", len(batch))
                    self._fail_batch(batch, exc)
            self._prune_seen()

    async def _flush(self, batch: list[tuple[bytes, str, int, asyncio.Future[bool]]]) -> None:
        try:
            async with self._pool.acquire(timeout=self._timeout_s) as conn:
                rows = await conn.fetch(
                    "INSERT INTO device_nonces (nonce, device_id, request_ts) "
                    "SELECT n, d, to_timestamp(t / 1000.0) FROM unnest($1::bytea[], $2::text[], $3::bigint[]) "
                    "AS u(n, d, t) ON CONFLICT (nonce) DO NOTHING RETURNING nonce",
                    [b[0] for b in batch], [b[1] for b in batch], [b[2] for b in batch],
                    timeout=self._timeout_s)
        except CONNECTION_ERRORS as exc:
            log_event(log, logging.WARNING, "nonce.claim_failed", count=len(batch), error=exc)
            self._fail_batch(batch, exc)
            return
        fresh = {row[0] for row in rows}
        for nonce, _, _, future in batch:
            if not future.done():
                future.set_result(nonce in fresh)

    def _fail_batch(self, batch: list[tuple[bytes, str, int, asyncio.Future[bool]]], exc: Exception) -> None:
        # The nonces were not recorded, so the device's retry with the same nonce must not count as a replay.
        for nonce, _, _, future in batch:
            self._seen.pop(nonce, None)
            _fail(future, ConnectionError(f"nonce check failed: {type(exc).__name__}: {exc}"))

    def _prune_seen(self) -> None:
        now = time.monotonic()
        if now - self._last_prune < 10.0:
            return
        self._last_prune = now
        horizon = now - 2 * self._window_s
        self._seen = {nonce: seen for nonce, seen in self._seen.items() if seen >= horizon}


def _fail(future: asyncio.Future[bool], exc: Exception) -> None:
    """Fail a claim and mark the exception as retrieved.

    A request that fails for another reason never awaits its claim, and
    asyncio would report such a failed claim as lost; awaiting it still raises.
    Marking it here, rather than with a done callback on every claim, saves a
    loop callback per request.
    """
    if not future.done():
        future.set_exception(exc)
        future.exception()


async def delete_old_nonces(conn: asyncpg.Connection, window_s: float) -> int:
    """Delete nonces whose request time is older than twice the accepted clock skew; return how many."""
    status = await conn.execute(
        "DELETE FROM device_nonces WHERE request_ts < now() - make_interval(secs => $1)", 2 * window_s)
    return int(status.split()[-1])
