"""Per-device token buckets, one set per worker process.

A device that keeps several connections may be served by several workers,
each with its own bucket, so its effective limit is up to ``rate * workers``.
That is deliberate: the limit protects a worker from one runaway device, and a
shared bucket would cost a PostgreSQL round trip per request.
"""

from __future__ import annotations

import time


class TokenBuckets:
    """``rate_per_s`` tokens per second per key, at most ``burst`` saved up."""

    def __init__(self, rate_per_s: float, burst: int, keys_max: int = 100_000) -> None:
        if rate_per_s <= 0 or burst < 1:
            raise ValueError(f"rate_per_s must be > 0 and burst >= 1, got {rate_per_s} and {burst}")
        self.rate_per_s = rate_per_s
        self.burst = float(burst)
        self.keys_max = keys_max
        self._buckets: dict[str, list[float]] = {}

    def take(self, key: str, now_s: float | None = None) -> float:
        """Take one token for ``key``; return 0.0 if granted, else the seconds until one is available."""
        now = time.monotonic() if now_s is None else now_s
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.keys_max:
                # Full buckets carry no information: forgetting them all is safe.
                self._buckets.clear()
            bucket = self._buckets[key] = [self.burst, now]
        tokens = min(self.burst, bucket[0] + (now - bucket[1]) * self.rate_per_s)
        bucket[1] = now
        if tokens >= 1.0:
            bucket[0] = tokens - 1.0
            return 0.0
        bucket[0] = tokens
        return (1.0 - tokens) / self.rate_per_s
