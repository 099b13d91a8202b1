"""A validator that retries, built on :class:`gateway.client.GatewayClient`, for fault and load tests.

A real validator keeps a tap until the gateway acknowledges it: on a lost
connection, a timeout, 503 or 429 it sends the same tap again (same
``tap_id``, same body bytes, a freshly signed header) until it gets an
answer or gives up. :class:`RetryingValidator` does that and records every
acknowledged answer, so a test can compare what the validators saw with
what the journal holds.

Only loopback addresses are meant here; every loop is bounded in time.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Any, Callable

import msgspec

from gateway.client import DeviceCredentials, GatewayClient

# Statuses after which a validator sends the same tap again.
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503})


@dataclasses.dataclass(frozen=True)
class Acknowledged:
    """One tap answered 200 (or 409) by the gateway, as the validator saw it."""

    device_id: str
    tap_id: int
    status: int
    journal_id: int | None
    decision: str
    reason: int
    fare_fen: int
    attempts: int
    acknowledged_at: float


@dataclasses.dataclass
class ValidatorStats:
    submitted: int = 0
    acknowledged: int = 0
    # Taps given up after the deadline without an answer (the validator would keep them for later).
    unacknowledged: int = 0
    # Attempts beyond the first, by cause: "503", "429", "connection", "timeout", ...
    retries: dict[str, int] = dataclasses.field(default_factory=dict)

    def count_retry(self, cause: str) -> None:
        self.retries[cause] = self.retries.get(cause, 0) + 1


class RetryingValidator:
    """One device: sends taps one after another over a keep-alive connection, retrying each until answered."""

    def __init__(self, host: str, port: int, creds: DeviceCredentials, *, attempt_timeout_s: float = 3.0,
                 retry_delay_s: float = 0.05, give_up_after_s: float = 30.0) -> None:
        self.host = host
        self.port = port
        self.creds = creds
        self.attempt_timeout_s = attempt_timeout_s
        self.retry_delay_s = retry_delay_s
        self.give_up_after_s = give_up_after_s
        self.stats = ValidatorStats()
        self.acknowledged: list[Acknowledged] = []
        self._client: GatewayClient | None = None

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def submit(self, tap: dict[str, Any]) -> Acknowledged | None:
        """Send ``tap`` until the gateway answers it; return the answer, or None after ``give_up_after_s``."""
        body = msgspec.json.encode(tap)
        deadline = time.monotonic() + self.give_up_after_s
        self.stats.submitted += 1
        attempts = 0
        while True:
            attempts += 1
            cause, delay = await self._attempt(tap, body, attempts)
            if isinstance(cause, Acknowledged):
                self.acknowledged.append(cause)
                self.stats.acknowledged += 1
                return cause
            self.stats.count_retry(cause)
            if time.monotonic() + delay > deadline:
                self.stats.unacknowledged += 1
                return None
            await asyncio.sleep(delay)

    async def _attempt(self, tap: dict[str, Any], body: bytes, attempts: int) -> tuple[Any, float]:
        """Send once; return (Acknowledged, 0) or (cause of failure, seconds to wait before the next try)."""
        if self._client is None:
            self._client = GatewayClient(self.host, self.port, self.creds, timeout_s=self.attempt_timeout_s)
        try:
            response = await self._client.request("POST", "/v1/taps", body)
        except OSError as exc:
            # ConnectionError and TimeoutError are both OSError. A failed
            # exchange leaves no usable state: the next attempt opens a new connection.
            await self._drop_client()
            return ("timeout" if isinstance(exc, TimeoutError) else "connection"), self.retry_delay_s

        if response.status in (200, 409):
            answer = response.decode()
            if response.status == 409:
                answer = {"journal_id": None, "decision": "conflict", "reason": -1, "fare_fen": 0}
            return Acknowledged(self.creds.device_id, tap["tap_id"], response.status, answer["journal_id"],
                                answer["decision"], answer["reason"], answer["fare_fen"], attempts,
                                time.monotonic()), 0.0
        if response.status in RETRY_STATUSES:
            retry_after = response.headers.get("retry-after", "")
            delay = min(float(retry_after), 1.0) if retry_after.isdigit() else self.retry_delay_s
            return str(response.status), max(delay, self.retry_delay_s)
        raise AssertionError(f"tap {tap['tap_id']} of {self.creds.device_id} got HTTP {response.status}: "
                             f"{response.body[:300]!r}")

    async def _drop_client(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                await client.close()
            except OSError:
                pass


@dataclasses.dataclass
class LoadResult:
    validators: list[RetryingValidator]
    duration_s: float

    @property
    def acknowledged(self) -> list[Acknowledged]:
        return [ack for validator in self.validators for ack in validator.acknowledged]

    @property
    def submitted(self) -> int:
        return sum(v.stats.submitted for v in self.validators)

    @property
    def unacknowledged(self) -> int:
        return sum(v.stats.unacknowledged for v in self.validators)

    def retries(self) -> dict[str, int]:
        total: dict[str, int] = {}
        for validator in self.validators:
            for cause, count in validator.stats.retries.items():
                total[cause] = total.get(cause, 0) + count
        return total


async def drive(validators: list[RetryingValidator], make_tap: Callable[[RetryingValidator], dict[str, Any]],
                duration_s: float, stop: asyncio.Event | None = None, pause_s: float = 0.0) -> LoadResult:
    """Let every validator submit taps from ``make_tap`` back to back for ``duration_s`` (or until ``stop``).

    A tap still being retried when the time is up is finished (or given up)
    before this returns, as a validator would; so the run lasts at most
    ``duration_s`` plus the validators' ``give_up_after_s``.
    """
    stop = stop or asyncio.Event()
    started = time.monotonic()
    end = started + duration_s

    async def lane(validator: RetryingValidator) -> None:
        try:
            while time.monotonic() < end and not stop.is_set():
                await validator.submit(make_tap(validator))
                if pause_s:
                    await asyncio.sleep(pause_s)
        finally:
            await validator.close()

    await asyncio.gather(*(lane(v) for v in validators))
    return LoadResult(validators, time.monotonic() - started)
