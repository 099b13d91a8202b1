"""Send the planned day to the gateway over real HTTP, as the validators and gates would.

Each device has one keep-alive connection and sends one request at a time.
Requests go out in dispatch order with up to ``concurrency`` in flight. A tap
waits for the response to the previous tap of the same holder, because the
holder's rider state (transfers, caps, tap-on) depends on it. A replay waits
for the tap whose code it replays.

Codes and card answers are signed just before sending, with the real clock:
a QR code is valid for about a minute and a card signs the reader's fresh
challenge. The tap time in the request is the simulated time of day, so the
fare rules see the morning peak and the scenic-spot surge. Offline taps are
signed at their simulated tap time, as a phone or card would have signed them
while the device had no connection, and the gateway checks them against that
time.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import time
from typing import Any, Callable

from fastpath import wire
from fastpath.issuer import new_reader_nonce
from gateway.client import JSON, MSGPACK, DeviceCredentials, GatewayClient, card_presented
from tapgate.demo import plan as p
from tapgate.demo.world import DemoDevice

# Attempts for one request when the gateway returns 429 or 503, or the connection drops.
ATTEMPTS_MAX = 5


@dataclasses.dataclass(slots=True)
class TapResult:
    """The gateway's response to one planned tap, as the device received it."""

    tap: p.PlannedTap
    http_status: int = 0
    decision: str | None = None
    reason: int | None = None
    reason_name: str | None = None
    fare_fen: int = 0
    full_fare_fen: int = 0
    # A county tap-off's correction (zero or negative) of its tap-on's maximum fare.
    adjustment_fen: int = 0
    rider_category: str | None = None
    journal_id: int | None = None
    # Seconds from sending the request to reading its response (a batch's taps share one).
    latency_s: float = 0.0
    # Seconds since the start of the drive when the answer arrived.
    answered_at_s: float = 0.0
    error: str | None = None

    @property
    def acknowledged(self) -> bool:
        return self.http_status == 200 and self.journal_id is not None


@dataclasses.dataclass
class DriveResult:
    results: list[TapResult]
    duration_s: float
    requests: int
    retries: int


def _flip_last_byte(medium: str, presented: str) -> str:
    """Change one byte of the holder signature (the last 64 bytes of the envelope)."""
    if medium == "qr":
        envelope = bytearray(wire.base45_decode(presented.encode("ascii")[wire.QR_PREFIX_LEN:]))
        envelope[-1] ^= 0x01
        return (wire.QR_PREFIX + wire.base45_encode(bytes(envelope))).decode("ascii")
    response = bytearray(base64.b64decode(presented))
    response[-1] ^= 0x01
    return base64.b64encode(bytes(response)).decode("ascii")


class Driver:
    def __init__(self, host: str, port: int, concurrency: int, code_lifetime_s: int, clock_skew_s: int,
                 progress: Callable[[int], None] | None = None) -> None:
        self.host = host
        self.port = port
        self.concurrency = concurrency
        self.stale_ms = (code_lifetime_s + clock_skew_s + 30) * 1000
        self.progress = progress
        self.clients: dict[str, GatewayClient] = {}
        self.device_locks: dict[str, asyncio.Lock] = {}
        self.tap_ids: dict[str, int] = {}
        self.results: dict[int, TapResult] = {}
        self.requests = 0
        self.retries = 0
        self.started = 0.0

    def _client(self, device: DemoDevice) -> GatewayClient:
        client = self.clients.get(device.device_id)
        if client is None:
            # Gates speak MessagePack and validators JSON, so both encodings carry a share of the day.
            content_type = MSGPACK if device.site_id else JSON
            client = GatewayClient(self.host, self.port, DeviceCredentials(device.device_id, device.secret),
                                   content_type=content_type, timeout_s=30.0)
            self.clients[device.device_id] = client
        return client

    def _presented(self, tap: p.PlannedTap, now_ms: int) -> str:
        """Sign the presentation for ``tap``: a QR code or a card answer."""
        if tap.kind == p.REPLAYED_QR:
            assert tap.replay_of is not None and tap.replay_of.presented is not None
            return tap.replay_of.presented
        assert tap.holder is not None
        signed_at = tap.tap_time_ms if tap.offline else now_ms
        if tap.kind == p.EXPIRED_QR:
            signed_at = now_ms - self.stale_ms
        if tap.medium == "qr":
            presented = tap.holder.phone.qr_text(signed_at)
        else:
            answer = tap.holder.card.answer(tap.device.device_id.encode("utf-8"), new_reader_nonce(), signed_at)
            presented = card_presented(answer)
        if tap.kind == p.FORGED_HOLDER:
            presented = _flip_last_byte(tap.medium, presented)
        return presented

    def _body(self, tap: p.PlannedTap, now_ms: int) -> dict[str, Any]:
        device_id = tap.device.device_id
        self.tap_ids[device_id] = tap.device_tap_id = self.tap_ids.get(device_id, 0) + 1
        tap.presented = self._presented(tap, now_ms)
        # NOTE: an online tap carries its simulated time of day, hours or days before the real clock, while the
        # code or card signs the real time. The demo's gateway runs with a tap-time tolerance widened for that.
        body: dict[str, Any] = {"tap_id": tap.device_tap_id, "tap_time_ms": tap.tap_time_ms, "medium": tap.medium,
                                "presented": tap.presented, "tap_kind": tap.tap_kind, "offline": tap.offline}
        if tap.device.route_id:
            body["route_id"] = tap.device.route_id
            if tap.stop_id:
                body["stop_id"] = tap.stop_id
        else:
            body["site_id"] = tap.device.site_id
        return body

    async def _send(self, dispatch: p.Dispatch) -> None:
        device = dispatch.taps[0].device
        lock = self.device_locks.setdefault(device.device_id, asyncio.Lock())
        async with lock:
            client = self._client(device)
            now_ms = time.time_ns() // 1_000_000
            bodies = [self._body(tap, now_ms) for tap in dispatch.taps]
            answers, status, latency_s, error = await self._exchange(client, dispatch.offline, bodies)
        answered_at = time.perf_counter() - self.started
        for index, tap in enumerate(dispatch.taps):
            result = TapResult(tap, http_status=status, latency_s=latency_s, answered_at_s=answered_at, error=error)
            answer = answers[index] if answers else None
            if answer is not None:
                result.decision = answer["decision"]
                result.reason = answer["reason"]
                result.reason_name = answer["reason_name"]
                result.fare_fen = answer["fare_fen"]
                result.full_fare_fen = answer["full_fare_fen"]
                result.adjustment_fen = answer.get("adjustment_fen", 0)
                result.rider_category = answer["rider_category"]
                result.journal_id = answer["journal_id"]
            self.results[tap.seq] = result
        if self.progress:
            self.progress(len(dispatch.taps))

    async def _exchange(self, client: GatewayClient, batch: bool,
                        bodies: list[dict[str, Any]]) -> tuple[list[dict[str, Any]] | None, int, float, str | None]:
        """Send one request, retrying the same body (same tap ids) on 429, 503 and dropped connections."""
        error = None
        for attempt in range(ATTEMPTS_MAX):
            if attempt:
                self.retries += 1
                await asyncio.sleep(0.2 * attempt)
            started = time.perf_counter()
            try:
                response = await (client.tap_batch(bodies) if batch else client.tap(bodies[0]))
            except (ConnectionError, OSError, TimeoutError) as exc:
                error = f"{type(exc).__name__}: {exc}"
                await client.close()
                continue
            finally:
                self.requests += 1
            latency_s = time.perf_counter() - started
            if response.status in (429, 503):
                error = f"HTTP {response.status}"
                continue
            if response.status != 200:
                return None, response.status, latency_s, f"HTTP {response.status}"
            decoded = response.decode()
            return (decoded["results"] if batch else [decoded]), 200, latency_s, None
        return None, 0, 0.0, error

    async def run(self, dispatches: list[p.Dispatch]) -> DriveResult:
        self.started = time.perf_counter()
        slots = asyncio.Semaphore(self.concurrency)
        # The task that sent the latest tap of each holder, by holder token.
        latest: dict[bytes, asyncio.Task[None]] = {}
        tasks: list[asyncio.Task[None]] = []

        async def send_after(dispatch: p.Dispatch, before: list[asyncio.Task[None]]) -> None:
            try:
                if before:
                    await asyncio.gather(*before, return_exceptions=True)
                await self._send(dispatch)
            finally:
                slots.release()

        for dispatch in dispatches:
            await slots.acquire()
            before = {id(t): t for tap in dispatch.taps if tap.holder is not None
                      for t in [latest.get(tap.holder.holder_token)] if t is not None}
            task = asyncio.ensure_future(send_after(dispatch, list(before.values())))
            for tap in dispatch.taps:
                if tap.holder is not None:
                    latest[tap.holder.holder_token] = task
            tasks.append(task)
        await asyncio.gather(*tasks)
        duration_s = time.perf_counter() - self.started
        for client in self.clients.values():
            await client.close()
        ordered = [self.results[tap.seq] for d in dispatches for tap in d.taps]
        return DriveResult(ordered, duration_s, self.requests, self.retries)


async def drive(plan: p.DayPlan, host: str, port: int, *, concurrency: int, code_lifetime_s: int,
                clock_skew_s: int, progress: Callable[[int], None] | None = None) -> DriveResult:
    """Send every planned tap and return what each device saw."""
    driver = Driver(host, port, concurrency, code_lifetime_s, clock_skew_s, progress)
    return await driver.run(plan.dispatches)


__all__ = ["DriveResult", "TapResult", "drive"]
