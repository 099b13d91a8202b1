"""Prometheus metrics of the tap server, registered in ``gateway.metrics.REGISTRY`` beside the journal's.

With several worker processes the supervisor sets ``PROMETHEUS_MULTIPROC_DIR``
before starting them, so every worker writes its samples to shared files and
``GET /metrics`` on any worker returns the sum over all of them.
"""

from __future__ import annotations

import os
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

from gateway.metrics import REGISTRY

TAPS = Counter("tapgate_taps", "Taps decided, by decision and reason name.", ["decision", "reason"],
               registry=REGISTRY)
REQUESTS = Counter("tapgate_http_requests", "HTTP requests answered, by route and status.",
                   ["route", "status"], registry=REGISTRY)
TAP_LATENCY = Histogram(
    "tapgate_tap_seconds", "Time from a complete tap request to its answer, journal commit included.",
    buckets=(0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
    registry=REGISTRY)
CREDENTIAL_CACHE = Counter("tapgate_credential_cache", "Credential cache lookups of the fast path, by result "
                           "(hit or miss).", ["result"], registry=REGISTRY)

CONTENT_TYPE = CONTENT_TYPE_LATEST.encode("ascii")

# Labelled children looked up once: Counter.labels() takes a lock and a dict lookup on every call.
_tap_children: dict[tuple[str, str], Any] = {}
_request_children: dict[tuple[str, str], Any] = {}


def count_tap(decision: str, reason: str) -> None:
    child = _tap_children.get((decision, reason))
    if child is None:
        child = _tap_children[(decision, reason)] = TAPS.labels(decision, reason)
    child.inc()


def count_request(route: str, status: int) -> None:
    child = _request_children.get((route, status))
    if child is None:
        child = _request_children[(route, status)] = REQUESTS.labels(route, str(status))
    child.inc()


def exposition() -> bytes:
    """Return the metrics in the Prometheus text format, summed over workers when there are several."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry)
    return generate_latest(REGISTRY)
