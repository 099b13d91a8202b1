"""Correctness of a load test: the answers against the journal, and each kind against its expected outcome.

Two checks, both required for a pass:

1. Journal. Every acknowledged answer (HTTP 200 with a journal id) has
   exactly one ``taps`` row with the same device and device tap id, whose
   ``tap_id`` is the journal id answered and whose decision and reason are
   the ones answered. The journal holds no row of the run's devices that
   the load generator never sent, and no row of an unregistered device.
2. Outcomes. Forged, replayed, expired, lost-card and arrears taps are
   rejected with their reason; valid taps are accepted, or rejected only
   with a fare-rule reason the traffic model allows (such as a second entry
   to a one-entry-per-day site); requests of unregistered devices get
   HTTP 401.

Requests without a response (status 0) or with an unexpected HTTP status are
not acknowledged: they count in the error rate, not here. A row journaled
for such a request is allowed and counted.
"""

from __future__ import annotations

import collections
import os
from typing import Iterable

import asyncpg
import msgspec

from gateway.timeutil import from_unix_ms
from loadtests import scenario as sc
from loadtests.answers import Answer, read_answers
from loadtests.fixture import Fixture
from loadtests.traffic import expected_text, outcome_is_expected

# Problems listed in the report; the counts cover all of them.
EXAMPLES_MAX = 50


class KindSummary(msgspec.Struct, kw_only=True):
    sent: int = 0
    acknowledged: int = 0
    # Reason code (as a string, for JSON) -> answers with that reason.
    reasons: dict[str, int] = {}
    wrong: int = 0


class CheckReport(msgspec.Struct, kw_only=True):
    passed: bool
    sent: int
    acknowledged: int
    not_acknowledged: int
    journal_rows: int
    # Taps kept by an offline validator and sent in batch uploads, and how many of them were acknowledged.
    sent_offline: int
    acknowledged_offline: int
    # Acknowledged taps missing from the journal, present more than once, or different from the answer.
    journal_mismatches: int
    # Journal rows of the run's devices whose device tap id was never sent or never acknowledged.
    journal_rows_never_sent: int
    journal_rows_unacknowledged: int
    unknown_device_rows: int
    wrong_outcomes: int
    forged_or_replayed_accepted: int
    valid_rejected: int
    by_kind: dict[str, KindSummary]
    rider_categories: dict[str, int]
    problems: list[str]


async def fetch_journal(dsn: str, device_ids: list[str], since_ms: int = 0) -> list[asyncpg.Record]:
    """Return the journal rows of ``device_ids`` received at or after ``since_ms`` (Unix ms)."""
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetch(
            "SELECT device_id, device_tap_id, tap_id, decision, reason, offline FROM taps "
            "WHERE device_id = ANY($1::text[]) AND received_at >= $2",
            device_ids, from_unix_ms(since_ms))
    finally:
        await conn.close()


def compare(answers: Iterable[Answer], journal: list[asyncpg.Record] | list[dict], fixture: Fixture,
            fare_reasons_allowed: Iterable[int]) -> CheckReport:
    """Compare answers with journal rows (of the fixture's known and unknown devices)."""
    allowed = tuple(fare_reasons_allowed)
    unknown_ids = {d.device_id for d in fixture.unknown_devices}
    problems: list[str] = []
    counters: collections.Counter[str] = collections.Counter()

    def problem(text: str) -> None:
        if len(problems) < EXAMPLES_MAX:
            problems.append(text)

    rows_by_key: dict[tuple[str, int], list] = collections.defaultdict(list)
    for row in journal:
        if row["device_id"] in unknown_ids:
            counters["unknown_device_rows"] += 1
            problem(f"journal row {row['tap_id']} from unregistered device {row['device_id']}")
            continue
        rows_by_key[(row["device_id"], row["device_tap_id"])].append(row)

    by_kind: dict[str, KindSummary] = {}
    categories: collections.Counter[str] = collections.Counter()
    sent_keys: set[tuple[str, int]] = set()
    acknowledged_keys: set[tuple[str, int]] = set()
    for answer in answers:
        summary = by_kind.setdefault(answer.kind, KindSummary())
        summary.sent += 1
        counters["sent"] += 1
        counters["sent_offline"] += answer.offline
        key = (answer.device_id, answer.tap_id)
        sent_keys.add(key)

        if not outcome_is_expected(answer, allowed):
            summary.wrong += 1
            counters["wrong_outcomes"] += 1
            if answer.decision == "accepted" and answer.kind in (sc.FORGED_HOLDER, sc.FORGED_ISSUER, sc.REPLAYED_QR):
                counters["forged_or_replayed_accepted"] += 1
            if answer.kind in sc.VALID_KINDS:
                counters["valid_rejected"] += 1
            problem(f"{answer.kind} tap {answer.device_id}/{answer.tap_id}: got status {answer.status} "
                    f"decision {answer.decision} reason {answer.reason}, expected "
                    f"{expected_text(answer.kind, allowed)}")
        if not answer.acknowledged:
            counters["not_acknowledged"] += 1
            continue

        counters["acknowledged"] += 1
        counters["acknowledged_offline"] += answer.offline
        summary.acknowledged += 1
        acknowledged_keys.add(key)
        summary.reasons[str(answer.reason)] = summary.reasons.get(str(answer.reason), 0) + 1
        if answer.decision == "accepted" and answer.rider_category:
            categories[answer.rider_category] += 1
        mismatch = _journal_mismatch(answer, rows_by_key.get(key, []))
        if mismatch:
            counters["journal_mismatches"] += 1
            problem(mismatch)

    for key, rows in rows_by_key.items():
        if key not in sent_keys:
            counters["journal_rows_never_sent"] += len(rows)
            problem(f"journal row {rows[0]['tap_id']} for {key[0]}/{key[1]}, a tap the load generator never sent")
        elif key not in acknowledged_keys:
            counters["journal_rows_unacknowledged"] += len(rows)

    failed = (counters["journal_mismatches"] + counters["journal_rows_never_sent"]
              + counters["unknown_device_rows"] + counters["wrong_outcomes"])
    return CheckReport(
        passed=failed == 0 and counters["acknowledged"] > 0,
        sent=counters["sent"], acknowledged=counters["acknowledged"],
        not_acknowledged=counters["not_acknowledged"], journal_rows=len(journal),
        sent_offline=counters["sent_offline"], acknowledged_offline=counters["acknowledged_offline"],
        journal_mismatches=counters["journal_mismatches"],
        journal_rows_never_sent=counters["journal_rows_never_sent"],
        journal_rows_unacknowledged=counters["journal_rows_unacknowledged"],
        unknown_device_rows=counters["unknown_device_rows"], wrong_outcomes=counters["wrong_outcomes"],
        forged_or_replayed_accepted=counters["forged_or_replayed_accepted"],
        valid_rejected=counters["valid_rejected"], by_kind=by_kind,
        rider_categories=dict(categories), problems=problems)


def _journal_mismatch(answer: Answer, rows: list) -> str | None:
    where = f"acknowledged tap {answer.device_id}/{answer.tap_id} (journal id {answer.journal_id})"
    if not rows:
        return f"{where} is missing from the journal"
    if len(rows) > 1:
        return f"{where} is in the journal {len(rows)} times: tap ids {[r['tap_id'] for r in rows]}"
    row = rows[0]
    decision = "accepted" if row["decision"] == 1 else "rejected"
    if row["tap_id"] != answer.journal_id or decision != answer.decision or row["reason"] != answer.reason:
        return (f"{where}: answered {answer.decision} reason {answer.reason}, journal has tap id {row['tap_id']} "
                f"{decision} reason {row['reason']}")
    journal_offline = row.get("offline")
    if journal_offline is not None and journal_offline != answer.offline:
        return f"{where}: sent with offline={answer.offline}, journal has offline={journal_offline}"
    return None


async def check_run(dsn: str, answers_dir: str | os.PathLike[str], fixture: Fixture,
                    fare_reasons_allowed: Iterable[int], since_ms: int = 0) -> CheckReport:
    """Read the answer files, fetch the journal rows of the run's devices since ``since_ms`` and compare them."""
    device_ids = fixture.device_ids() + [d.device_id for d in fixture.unknown_devices]
    journal = await fetch_journal(dsn, device_ids, since_ms)
    return compare(read_answers(answers_dir), journal, fixture, fare_reasons_allowed)
