"""The decision for one tap: verify, deny lists, replay, fare rules, journal.

Order of checks, each stopping at the first rejection:

1. fast-path verification of the card response or QR code (``fastpath``);
2. deny lists: card reported lost, credential revoked, account in arrears;
3. card duplicate: the same card accepted on the same device within
   ``server.card_duplicate_window_s`` of this tap (kept in this worker's
   memory, see the note at :class:`CardDuplicates`);
4. fare rules of the rule set in effect at the tap's time, with the
   holder's rider state loaded from PostgreSQL;
5. the journal: QR replays are caught there by a unique key, and the
   response to a tap is sent only after its group commit is durable.

Rejected taps are journaled too. Taps of one holder are priced one after
another in this worker (a rider state is read, priced and written back as
one step), so two quick taps of one rider never price from the same state.

NOTE: that ordering holds within one worker only. Two taps of one rider
reaching two workers at the same moment both price from the same stored
state, and the later commit's state wins, so a transfer or cap count can be
off by one tap in that case.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import dataclasses
import hashlib
import time
from typing import Any

import msgspec

from gateway import reasons
from gateway.devices import Device
from gateway.http_schema import MEDIA, TAP_KINDS, TapResponse, TapRequest
from gateway.journal import JournalEntry
from gateway.reasons import Reason
from gateway.rules import PricingRequest, RiderState

_RULE_REASONS = {0, *range(60, 80)}


class TapOutcome(msgspec.Struct, kw_only=True):
    """The response for one tap, and whether the tap id was reused with other data (HTTP 409)."""

    answer: TapResponse
    conflict: bool = False


class HolderLocks:
    """One asyncio lock per holder token, created on demand and dropped when free."""

    def __init__(self) -> None:
        self._locks: dict[bytes, asyncio.Lock] = {}

    async def __call__(self, holder: bytes) -> "_HolderLease":
        lock = self._locks.get(holder)
        if lock is None:
            lock = self._locks[holder] = asyncio.Lock()
        await lock.acquire()
        return _HolderLease(self, holder, lock)

    def _release(self, holder: bytes, lock: asyncio.Lock) -> None:
        lock.release()
        if not lock.locked() and not getattr(lock, "_waiters", None):
            self._locks.pop(holder, None)


class _HolderLease:
    __slots__ = ("_owner", "_holder", "_lock")

    def __init__(self, owner: HolderLocks, holder: bytes, lock: asyncio.Lock) -> None:
        self._owner = owner
        self._holder = holder
        self._lock = lock

    def release(self) -> None:
        self._owner._release(self._holder, self._lock)


class CardDuplicates:
    """Last accepted tap time per (device, credential, tap kind), for the card duplicate window.

    The tap kind is part of the key because on an area-fare route the rider
    taps on and off at the same validator, and a short ride must not turn the
    tap-off into a duplicate of the tap-on.

    NOTE: kept per worker. A device normally keeps one keep-alive connection,
    so its taps reach one worker; a device that spreads taps over several
    connections (and so workers) can get a card duplicate accepted twice.
    """

    def __init__(self, window_s: int, entries_max: int = 200_000) -> None:
        self.window_ms = window_s * 1000
        self.entries_max = entries_max
        self._last: collections.OrderedDict[tuple[str, bytes, str], int] = collections.OrderedDict()

    def is_duplicate(self, device_id: str, credential_id: bytes, tap_kind: str, tap_time_ms: int) -> bool:
        last = self._last.get((device_id, credential_id, tap_kind))
        return last is not None and abs(tap_time_ms - last) < self.window_ms

    def record(self, device_id: str, credential_id: bytes, tap_kind: str, tap_time_ms: int) -> None:
        key = (device_id, credential_id, tap_kind)
        self._last[key] = tap_time_ms
        self._last.move_to_end(key)
        while len(self._last) > self.entries_max:
            self._last.popitem(last=False)


def request_digest(tap: TapRequest) -> bytes:
    """SHA-256 of the tap's canonical JSON, so a retry in JSON or MessagePack, alone or in a batch, matches."""
    return hashlib.sha256(msgspec.json.encode(tap)).digest()


def presented_bytes(tap: TapRequest) -> bytes | None:
    """Return the bytes the fast path verifies, or None if a card response is not valid base64."""
    if tap.medium == "qr":
        return tap.presented.encode("utf-8")
    try:
        return base64.b64decode(tap.presented, validate=True)
    except (binascii.Error, ValueError):
        return None


@dataclasses.dataclass
class Decision:
    """The gateway's decision before journaling."""

    reason: int = 0
    credential_id: bytes | None = None
    holder_token: bytes | None = None
    account_token: bytes | None = None
    replay_key: bytes | None = None
    rider_category: str | None = None
    product_id: str | None = None
    fare_fen: int = 0
    full_fare_fen: int = 0
    # A tap-off's corrections of the maximum fare charged at its tap-on (zero or negative for adjustment_fen).
    adjustment_fen: int = 0
    full_fare_adjustment_fen: int = 0
    discount_kinds: tuple[str, ...] = ()
    rule_set_version: int | None = None
    display_zh: str = ""
    display_en: str = ""
    rider_state: bytes | None = None
    entitlements: Any = None


def display_for(reason: int) -> tuple[str, str]:
    try:
        return reasons.DISPLAY[Reason(reason)]
    except (ValueError, KeyError):
        return reasons.DISPLAY[Reason.INTERNAL_ERROR]


def fare_display(rider_category: str | None, fare_fen: int) -> tuple[str, str]:
    """Display text for an accepted tap whose pricing text is not at hand (a retried tap)."""
    yuan = f"{fare_fen // 100}.{fare_fen % 100:02d}"
    category = f"{rider_category} " if rider_category else ""
    return f"请通行 {category}{yuan}元", f"Accepted {category}{yuan} yuan"


class TapPipeline:
    """Decide and journal taps for one worker.

    ``components`` is the worker's :class:`gateway.server.Components`, which
    contains the verifier, deny list and rule books that the refresh loop
    replaces, so every tap sees the newest ones.
    """

    def __init__(self, components: Any, journal: Any, card_duplicate_window_s: int, *,
                 tap_time_tolerance_s: int = 120) -> None:
        self.components = components
        self.tap_time_tolerance_ms = tap_time_tolerance_s * 1000
        self.journal = journal
        self.duplicates = CardDuplicates(card_duplicate_window_s)
        self.holder_locks = HolderLocks()

    async def process(self, device: Device, tap: TapRequest, received_at_ms: int) -> TapOutcome:
        """Decide one tap, journal it and return the answer; raises only on journal faults."""
        decision = self._verify_and_check(device, tap, received_at_ms)
        lease = None
        try:
            if decision.reason == 0:
                lease = await self.holder_locks(decision.holder_token or b"")
                await self._price(device, tap, decision)
            return await self._journal(device, tap, received_at_ms, decision)
        finally:
            if lease is not None:
                lease.release()

    def _verify_and_check(self, device: Device, tap: TapRequest, now_ms: int) -> Decision:
        components = self.components
        decision = Decision()
        presented = presented_bytes(tap)
        if presented is None:
            decision.reason = Reason.MALFORMED
            return decision

        if tap.offline and tap.tap_time_ms == 0:
            # The verifier treats tap time 0 as an online tap judged at the server's clock,
            # so an offline tap at time 0 would skip the upload window and the tolerance
            # check below. The Unix epoch is outside any upload window.
            decision.reason = Reason.OFFLINE_UPLOAD_TOO_LATE
            return decision

        result = components.verifier.verify(MEDIA[tap.medium], presented, device.device_id.encode("utf-8"),
                                            now_ms, tap.tap_time_ms if tap.offline else 0)
        decision.reason = int(result.reason)
        if decision.reason != 0:
            return decision
        decision.credential_id = bytes(result.credential_id)
        decision.holder_token = bytes(result.holder_token)
        decision.account_token = bytes(result.account_token)
        decision.entitlements = result.entitlements
        if tap.medium == "qr":
            decision.replay_key = bytes(result.replay_key)

        # The fast path checked the signed time against this server's clock; the
        # tap time that prices the tap must agree with it.
        if not tap.offline and abs(tap.tap_time_ms - result.presented_at_ms) > self.tap_time_tolerance_ms:
            decision.reason = Reason.TAP_TIME_INVALID
            return decision

        denied = components.deny.check(decision.credential_id, decision.account_token)
        if denied:
            decision.reason = int(denied)
            return decision

        if tap.medium == "card" and self.duplicates.is_duplicate(device.device_id, decision.credential_id,
                                                                 tap.tap_kind, tap.tap_time_ms):
            decision.reason = Reason.DUPLICATE_TAP
        return decision

    async def _price(self, device: Device, tap: TapRequest, decision: Decision) -> None:
        book = self.components.books.for_time(tap.tap_time_ms) if self.components.books is not None else None
        if book is None:
            decision.reason = Reason.NO_RULE_SET
            return
        holder = decision.holder_token or b""
        encoded = await self.journal.load_rider_state(holder)
        state = RiderState.decode(encoded) if encoded else None
        price, new_state = book.price(PricingRequest(
            tap_time_ms=tap.tap_time_ms, operator_id=device.operator_id, route_id=tap.route_id,
            stop_id=tap.stop_id, site_id=tap.site_id, tap_kind=tap.tap_kind, medium=MEDIA[tap.medium],
            holder_token=holder, entitlements=decision.entitlements), state)
        decision.reason = int(price.reason)
        decision.rule_set_version = price.rule_set_version
        decision.rider_category = price.rider_category
        decision.product_id = price.product_id
        decision.full_fare_fen = price.full_fare_fen
        decision.display_zh = price.display_zh
        decision.display_en = price.display_en
        if decision.reason == 0:
            decision.fare_fen = price.fare_fen
            decision.adjustment_fen = price.adjustment_fen
            decision.full_fare_adjustment_fen = price.full_fare_adjustment_fen
            decision.discount_kinds = tuple(price.discount_kinds)
            decision.rider_state = new_state.encode() if new_state is not None else None

    async def _journal(self, device: Device, tap: TapRequest, received_at_ms: int,
                       decision: Decision) -> TapOutcome:
        accepted = decision.reason == 0
        outcome = await self.journal.append(JournalEntry(
            device_id=device.device_id, device_tap_id=tap.tap_id, tap_time_ms=tap.tap_time_ms,
            received_at_ms=received_at_ms, offline=tap.offline, operator_id=device.operator_id,
            route_id=tap.route_id, stop_id=tap.stop_id, site_id=tap.site_id, tap_kind=TAP_KINDS[tap.tap_kind],
            medium=MEDIA[tap.medium], credential_id=decision.credential_id, holder_token=decision.holder_token,
            account_token=decision.account_token, decision=1 if accepted else 0, reason=decision.reason,
            rider_category=decision.rider_category, product_id=decision.product_id,
            fare_fen=decision.fare_fen if accepted else 0, full_fare_fen=decision.full_fare_fen,
            discount_kinds=tuple(decision.discount_kinds), rule_set_version=decision.rule_set_version,
            request_digest=request_digest(tap), replay_key=decision.replay_key,
            rider_state=decision.rider_state if accepted else None,
            adjustment_fen=decision.adjustment_fen if accepted else 0,
            full_fare_adjustment_fen=decision.full_fare_adjustment_fen if accepted else 0))
        return self._answer(device, tap, decision, outcome)

    def _answer(self, device: Device, tap: TapRequest, decision: Decision, outcome: Any) -> TapOutcome:
        now_ms = int(time.time() * 1000)
        if outcome.status == "conflict":
            zh, en = display_for(Reason.TAP_ID_CONFLICT)
            return TapOutcome(conflict=True, answer=TapResponse(
                tap_id=tap.tap_id, journal_id=None, decision="rejected", reason=int(Reason.TAP_ID_CONFLICT),
                reason_name=Reason.TAP_ID_CONFLICT.name.lower(), fare_fen=0, full_fare_fen=0,
                rider_category=None, display_zh=zh, display_en=en, server_time_ms=now_ms, status="conflict"))

        reason = int(outcome.reason)
        accepted = outcome.decision == 1
        if accepted and outcome.status == "new" and decision.reason == 0:
            if tap.medium == "card" and decision.credential_id is not None:
                self.duplicates.record(device.device_id, decision.credential_id, tap.tap_kind, tap.tap_time_ms)
            zh, en = decision.display_zh, decision.display_en
        elif accepted:
            zh, en = fare_display(outcome.rider_category, outcome.fare_fen)
        elif reason in _RULE_REASONS and reason == decision.reason and decision.display_zh:
            zh, en = decision.display_zh, decision.display_en
        else:
            zh, en = display_for(reason)
        try:
            reason_name = Reason(reason).name.lower()
        except ValueError:
            reason_name = f"reason_{reason}"
        return TapOutcome(answer=TapResponse(
            tap_id=tap.tap_id, journal_id=outcome.journal_id, decision="accepted" if accepted else "rejected",
            reason=reason, reason_name=reason_name, fare_fen=outcome.fare_fen,
            full_fare_fen=getattr(outcome, "full_fare_fen", decision.full_fare_fen),
            rider_category=getattr(outcome, "rider_category", decision.rider_category),
            display_zh=zh, display_en=en, server_time_ms=now_ms, status=outcome.status,
            adjustment_fen=outcome.adjustment_fen))
