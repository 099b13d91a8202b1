"""Deleting QR replay keys that no verification can match again.

A QR code is accepted only while its signed presentation time is within
``code_lifetime_s + clock_skew_s`` of the reference time. The reference is
the gateway's clock or, for an offline upload, the recorded tap time, which
may be at most ``offline_upload_max_s`` in the past. A stored replay key whose tap
time is older than :func:`replay_key_horizon_s` therefore belongs to a code
that every worker now rejects as expired before the journal is reached, and
its row only takes space. At the county's scale (about 560,000 holders) the
table would otherwise grow by the number of QR taps, every day, forever.

``tap_keys`` are kept: a device may retry a tap id at any time, and without
its key a late retry would be journaled, and charged, a second time.
"""

from __future__ import annotations

import logging
import time

import asyncpg

from gateway.config import Config
from gateway.logs import log_event

log = logging.getLogger(__name__)

# Added to the computed horizon, so that a clock step or a configuration that
# differs between hosts cannot delete a key that some worker would still need.
HORIZON_MARGIN_S = 86_400
# Rows deleted per statement, so that no single delete holds its locks long.
DELETE_CHUNK = 10_000

_DELETE_OLD = """
DELETE FROM replay_keys
WHERE ctid = ANY(ARRAY(SELECT ctid FROM replay_keys
                       WHERE tap_time < now() - make_interval(secs => $1)
                       LIMIT $2))"""


def replay_key_horizon_s(config: Config) -> int:
    """Return the age in seconds (by tap time) beyond which a replay key can never match again.

    The signed presentation time of a stored code lies at most
    ``max(tap_time_tolerance_s, code_lifetime_s + clock_skew_s)`` before its
    tap time, and an accepted code is at most ``offline_upload_max_s +
    code_lifetime_s + clock_skew_s`` old. :data:`HORIZON_MARGIN_S` is added.
    """
    fastpath = config.fastpath
    code_window_s = fastpath.code_lifetime_s + fastpath.clock_skew_s
    return (fastpath.offline_upload_max_s + code_window_s
            + max(config.server.tap_time_tolerance_s, code_window_s) + HORIZON_MARGIN_S)


async def prune_replay_keys(conn: asyncpg.Connection, older_than_s: int, *, chunk: int = DELETE_CHUNK) -> int:
    """Delete replay keys whose tap time is more than ``older_than_s`` seconds ago; return how many.

    Deletes in statements of at most ``chunk`` rows, each its own
    transaction, until none is left.
    """
    if older_than_s < 0:
        raise ValueError(f"older_than_s={older_than_s}: expected 0 or more seconds")
    started = time.monotonic()
    deleted = 0
    while True:
        status = await conn.execute(_DELETE_OLD, float(older_than_s), chunk)
        count = int(status.split()[-1])
        deleted += count
        if count < chunk:
            break
    if deleted:
        log_event(log, logging.INFO, "journal.replay_keys_pruned", deleted=deleted, older_than_s=older_than_s,
                  seconds=round(time.monotonic() - started, 3))
    return deleted
