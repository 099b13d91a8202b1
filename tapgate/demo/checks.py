"""The invariants a demo day must hold; any failed one makes ``tapgate demo`` exit with status 1."""

from __future__ import annotations

import collections
import dataclasses

import asyncpg

from tapgate.demo import plan as p
from tapgate.demo.dayend import DayEnd
from tapgate.demo.drive import TapResult

# The rejections each kind of bad traffic may get. A replay that reaches the
# gateway after its code's lifetime is rejected as expired before the replay check.
EXPECTED_REASONS: dict[str, set[int]] = {
    p.EXPIRED_QR: {9},
    p.REPLAYED_QR: {43, 9},
    p.FORGED_HOLDER: {6},
    p.FORGED_ISSUER: {5},
    p.LOST_CARD: {40},
    p.ARREARS: {42},
}
FARE_RULE_REASONS = range(60, 80)


@dataclasses.dataclass
class Check:
    name_zh: str
    name_en: str
    ok: bool
    detail: str = ""


def _examples(results: list[TapResult], limit: int = 3) -> str:
    shown = [f"{r.tap.kind}@{r.tap.device.device_id}#{r.tap.device_tap_id}: {r.decision or r.error} "
             f"{r.reason_name or r.http_status}" for r in results[:limit]]
    return "; ".join(shown)


def traffic_checks(results: list[TapResult]) -> list[Check]:
    """Check each tap's response against the outcome its kind of traffic must get."""
    checks = []
    unanswered = [r for r in results if r.http_status == 0]
    checks.append(Check("每笔交易均得到应答", "every tap was answered", not unanswered,
                        f"{len(unanswered)} unanswered {_examples(unanswered)}".strip()))

    forged = [r for r in results if r.tap.kind in p.FORGED_KINDS and r.decision == "accepted"]
    checks.append(Check("伪造的码或卡均被拒绝", "no forged code or card accepted", not forged,
                        f"{len(forged)} accepted {_examples(forged)}".strip()))

    wrong = [r for r in results if r.tap.kind in EXPECTED_REASONS
             and (r.decision != "rejected" or r.reason not in EXPECTED_REASONS[r.tap.kind])]
    checks.append(Check("异常交易均以预期原因拒绝", "bad taps rejected with their expected reason", not wrong,
                        f"{len(wrong)} wrong {_examples(wrong)}".strip()))

    unknown = [r for r in results if r.tap.kind == p.UNKNOWN_DEVICE and r.http_status != 401]
    checks.append(Check("未登记设备的请求均返回 401", "unknown devices get HTTP 401", not unknown,
                        f"{len(unknown)} other answers {_examples(unknown)}".strip()))

    valid_rejected = [r for r in results if r.tap.kind == p.VALID and r.http_status == 200
                      and r.decision == "rejected" and r.reason not in FARE_RULE_REASONS]
    checks.append(Check("有效交易仅因票价规则被拒", "valid taps rejected only by fare rules", not valid_rejected,
                        f"{len(valid_rejected)} rejected {_examples(valid_rejected)}".strip()))
    return checks


async def journal_checks(conn: asyncpg.Connection, results: list[TapResult], unknown_devices: list[str]) -> list[Check]:
    """Compare the journal with the responses the devices received: every acknowledged tap once, as returned."""
    rows = await conn.fetch("SELECT tap_id, device_id, device_tap_id, decision, reason, fare_fen, adjustment_fen "
                            "FROM taps")
    journal = {(r["device_id"], r["device_tap_id"]): r for r in rows}
    copies = collections.Counter((r["device_id"], r["device_tap_id"]) for r in rows)

    acknowledged = [r for r in results if r.acknowledged]
    missing, different = [], []
    for result in acknowledged:
        row = journal.get((result.tap.device.device_id, result.tap.device_tap_id))
        if row is None:
            missing.append(result)
        elif (row["tap_id"] != result.journal_id or row["reason"] != result.reason
              or row["decision"] != (1 if result.decision == "accepted" else 0) or row["fare_fen"] != result.fare_fen
              or row["adjustment_fen"] != result.adjustment_fen):
            different.append(result)
    twice = [key for key, count in copies.items() if count > 1]
    keys = {(r.tap.device.device_id, r.tap.device_tap_id) for r in acknowledged}
    extra = [key for key in journal if key not in keys]
    from_unknown = [key for key in journal if key[0] in set(unknown_devices)]
    return [
        Check("每笔已确认交易都在流水中", "every acknowledged tap is in the journal", not missing,
              f"{len(missing)} missing of {len(acknowledged)} {_examples(missing)}".strip()),
        Check("流水与应答一致", "journal rows match the answers", not different,
              f"{len(different)} differ {_examples(different)}".strip()),
        Check("流水中每笔交易只出现一次", "each tap journaled exactly once", not twice and not extra,
              f"{len(twice)} duplicated, {len(extra)} never acknowledged"),
        Check("未登记设备未产生流水", "nothing journaled for unknown devices", not from_unknown,
              f"{len(from_unknown)} rows"),
    ]


async def discount_counts(conn: asyncpg.Connection) -> dict[str, int]:
    """Return how many accepted taps each kind of discount (category, transfer, cap) reduced."""
    rows = await conn.fetch("SELECT kind, count(*) AS taps FROM taps, unnest(discount_kinds) AS kind "
                            "WHERE decision = 1 GROUP BY kind ORDER BY kind")
    return {row["kind"]: row["taps"] for row in rows}


def day_end_checks(day_end: DayEnd, accepted_fare_fen: int) -> list[Check]:
    chain = day_end.chain
    problems = "; ".join(f"{pr.kind} batch {pr.batch_id} tap {pr.tap_id}" for pr in chain.problems[:3])
    settled = sum(line.fare_fen for line in day_end.operators)
    balance = sum(day_end.trial_balance.values())
    return [
        Check("流水哈希链校验通过", "journal hash chain verifies", chain.ok,
              f"{chain.batches_checked} batches, {chain.rows_checked} rows" + (f"; {problems}" if problems else "")),
        Check("结算票款等于已接受交易的票款", "settled fares equal the accepted fares", settled == accepted_fare_fen,
              f"settled {settled} fen, journal {accepted_fare_fen} fen"),
        Check("总账借贷平衡", "the ledger balances", balance == 0, f"sum of account balances {balance} fen"),
    ]
