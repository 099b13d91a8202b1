"""Prometheus metrics of one worker process.

Every metric of the gateway is registered in :data:`REGISTRY` (not the
prometheus_client default registry), so tests and tools can render exactly
the gateway's metrics. Each worker process serves its own values on
GET /metrics; Prometheus sums them across workers. Add new metrics below,
grouped by the module that updates them.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

REGISTRY = CollectorRegistry(auto_describe=True)


def render(registry: CollectorRegistry = REGISTRY) -> tuple[bytes, str]:
    """Return the metrics in the Prometheus text format, with its content type."""
    return generate_latest(registry), CONTENT_TYPE_LATEST


# --- Journal (gateway.journal) ---

JOURNAL_BATCH_TAPS = Histogram(
    "tapgate_journal_batch_taps", "Entries handed to one group commit.",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048), registry=REGISTRY)
JOURNAL_COMMIT_SECONDS = Histogram(
    "tapgate_journal_commit_seconds", "Time of one group commit, from sending it to the durable reply.",
    buckets=(0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024, 2.048),
    registry=REGISTRY)
JOURNAL_COMMITS = Counter(
    "tapgate_journal_commits", "Group commits by result (ok or failed).", ["result"], registry=REGISTRY)
JOURNAL_ENTRIES = Counter(
    "tapgate_journal_entries", "Appended entries by outcome status (new, retry, conflict, failed).",
    ["status"], registry=REGISTRY)
JOURNAL_PENDING = Gauge(
    "tapgate_journal_pending", "Entries waiting for a group commit.", registry=REGISTRY)

# --- Deny lists (gateway.denylist) ---

DENY_LIST_VERSION = Gauge(
    "tapgate_deny_list_version", "Deny-list version held in memory by this worker.", registry=REGISTRY)
DENY_LIST_ENTRIES = Gauge(
    "tapgate_deny_list_entries", "Active deny-list entries held in memory, by kind.", ["kind"],
    registry=REGISTRY)
