"""HTTP load generator for the tap API: pre-built requests, keep-alive connections, loopback only.

Every request is built and signed before the clock starts (a fresh QR code,
a fresh nonce and its HMAC), so the generator only writes bytes and reads
responses while it measures. ``bench_gateway.py`` drives it. Two modes:

- closed loop (``rate=None``): each connection sends its next request as soon
  as the previous answer arrives; the completed count over the duration is
  the maximum rate the server sustains at that concurrency;
- open loop (``rate=R``): requests are due at a fixed rate, and latency is
  measured from the moment a request was due, not when a connection became
  free, so a stalled server shows up in the tail instead of being hidden
  (no coordinated omission).

Each request is used once: QR codes are single-use, so the supply of
requests bounds the run as well as ``duration_s`` does.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import math
import statistics
import time
from typing import Callable, Iterable, Iterator

from fastpath.issuer import Phone
from gateway.client import DeviceCredentials, sign_headers

import msgspec

LOOPBACK = {"127.0.0.1", "::1", "localhost"}


def build_tap_request(creds: DeviceCredentials, tap: dict, *, host: str = "127.0.0.1",
                      path: str = "/v1/taps", ts_ms: int | None = None) -> bytes:
    """Return one complete signed HTTP/1.1 request for ``tap`` as bytes."""
    body = msgspec.json.encode(tap)
    auth = sign_headers(creds, "POST", path, body, now_ms=ts_ms)["Authorization"]
    return (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Authorization: {auth}\r\nContent-Length: {len(body)}\r\n\r\n").encode("ascii") + body


def qr_tap_requests(phones: list[Phone], devices: list[tuple[DeviceCredentials, str]], count: int, *,
                    start_ms: int | None = None, first_tap_id: int = 1) -> list[bytes]:
    """Build ``count`` signed QR tap requests, riders and devices taken in turn.

    ``devices`` contains (credentials, route id) pairs. Codes are presented at
    ``start_ms`` (default now), so the run must finish within the code lifetime.
    """
    at = start_ms if start_ms is not None else int(time.time() * 1000)
    requests = []
    for i in range(count):
        phone = phones[i % len(phones)]
        creds, route = devices[i % len(devices)]
        tap = {"tap_id": first_tap_id + i, "tap_time_ms": at, "medium": "qr", "presented": phone.qr_text(at),
               "route_id": route, "stop_id": "s01", "tap_kind": "board"}
        requests.append(build_tap_request(creds, tap, ts_ms=at))
    return requests


@dataclasses.dataclass
class LoadResult:
    mode: str
    connections: int
    duration_s: float
    completed: int
    errors: int
    statuses: dict[int, int]
    accepted: int
    latencies_s: list[float]
    target_rate: float | None = None

    @property
    def rate(self) -> float:
        return self.completed / self.duration_s if self.duration_s else 0.0

    def percentile_ms(self, q: float) -> float:
        if not self.latencies_s:
            return float("nan")
        ordered = sorted(self.latencies_s)
        index = min(len(ordered) - 1, max(0, int(round(q / 100 * len(ordered))) - 1))
        return ordered[index] * 1000

    def summary(self) -> dict:
        return {"mode": self.mode, "connections": self.connections, "duration_s": round(self.duration_s, 2),
                "target_rate": self.target_rate, "completed": self.completed, "rate_per_s": round(self.rate),
                "accepted": self.accepted, "errors": self.errors, "statuses": self.statuses,
                "p50_ms": round(self.percentile_ms(50), 2), "p99_ms": round(self.percentile_ms(99), 2),
                "mean_ms": round(statistics.fmean(self.latencies_s) * 1000, 2) if self.latencies_s else None}


class _Connection(asyncio.Protocol):
    """One keep-alive connection with at most one request in flight; parses only what it must."""

    def __init__(self, on_answer: Callable[["_Connection", int, bytes], None]) -> None:
        self.on_answer = on_answer
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.closed = asyncio.get_running_loop().create_future()
        self.busy = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)

    def send(self, request: bytes) -> None:
        assert self.transport is not None
        self.busy = True
        self.transport.write(request)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buffer[:end])
            length = _content_length(head)
            if len(self.buffer) < end + 4 + length:
                return
            body = bytes(self.buffer[end + 4:end + 4 + length])
            del self.buffer[:end + 4 + length]
            status = int(head[9:12])
            self.busy = False
            self.on_answer(self, status, body)


def _content_length(head: bytes) -> int:
    at = head.lower().find(b"content-length:")
    if at < 0:
        return 0
    line_end = head.find(b"\r\n", at)
    return int(head[at + len(b"content-length:"):line_end if line_end > 0 else None])


async def run_load(host: str, port: int, requests: Iterable[bytes], *, connections: int, duration_s: float,
                   rate: float | None = None, ssl: object = None) -> LoadResult:
    """Send ``requests`` over ``connections`` keep-alive connections for at most ``duration_s`` seconds."""
    if host not in LOOPBACK:
        raise ValueError(f"the load generator sends traffic to loopback only, not to {host!r}")
    loop = asyncio.get_running_loop()
    supply: Iterator[bytes] = iter(requests)
    latencies: list[float] = []
    statuses: collections.Counter[int] = collections.Counter()
    accepted = 0
    errors = 0
    sent_at: dict[_Connection, float] = {}
    idle: collections.deque[_Connection] = collections.deque()
    due: collections.deque[float] = collections.deque()
    stop_at = 0.0
    finished = loop.create_future()
    exhausted = False

    def send_next(conn: _Connection, due_at: float) -> bool:
        nonlocal exhausted
        try:
            request = next(supply)
        except StopIteration:
            exhausted = True
            return False
        sent_at[conn] = due_at
        conn.send(request)
        return True

    def on_answer(conn: _Connection, status: int, body: bytes) -> None:
        nonlocal accepted, errors
        now = time.perf_counter()
        latencies.append(now - sent_at.pop(conn))
        statuses[status] += 1
        if status == 200 and b'"accepted"' in body:
            accepted += 1
        elif status >= 500:
            errors += 1
        if now >= stop_at:
            if not sent_at and not finished.done():
                finished.set_result(None)
            return
        if rate is None:
            if not send_next(conn, now) and not sent_at and not finished.done():
                finished.set_result(None)
        elif due:
            send_next(conn, due.popleft())
        else:
            idle.append(conn)

    protocols = []
    for _ in range(connections):
        _, protocol = await loop.create_connection(lambda: _Connection(on_answer), host, port, ssl=ssl)
        protocols.append(protocol)

    started = time.perf_counter()
    stop_at = started + duration_s
    if rate is None:
        for conn in protocols:
            send_next(conn, time.perf_counter())
    else:
        idle.extend(protocols)
        loop.create_task(_pace(rate, started, stop_at, due, idle, send_next, lambda: exhausted))
    try:
        await asyncio.wait_for(asyncio.shield(finished), duration_s + 10.0)
    except TimeoutError:
        errors += len(sent_at)
    elapsed = min(time.perf_counter(), stop_at) - started if rate is None else duration_s
    for conn in protocols:
        if conn.transport is not None:
            conn.transport.close()
    return LoadResult(mode="closed" if rate is None else "open", connections=connections,
                      duration_s=elapsed if elapsed > 0 else duration_s, completed=len(latencies),
                      errors=errors, statuses=dict(statuses), accepted=accepted, latencies_s=latencies,
                      target_rate=rate)


async def _pace(rate: float, started: float, stop_at: float, due: collections.deque[float],
                idle: collections.deque[_Connection], send_next: Callable[[_Connection, float], bool],
                exhausted: Callable[[], bool]) -> None:
    """Release requests at ``rate`` per second; a request waits in ``due`` while every connection is busy."""
    interval = 1.0 / rate
    # Request i is due at started + i * interval: the first one at once, the last one before stop_at.
    total = math.ceil((stop_at - started) / interval)
    issued = 0
    while not exhausted() and issued < total:
        now = time.perf_counter()
        target = min(int((now - started) / interval) + 1, total)
        while issued < target:
            due_at = started + issued * interval
            issued += 1
            if idle:
                if not send_next(idle.popleft(), due_at):
                    return
            else:
                due.append(due_at)
        await asyncio.sleep(0.0005)
