"""Tap requests of every traffic kind, made from fixture holders at the moment of the tap.

QR codes and card answers are signed when the tap is sent (PyNaCl signs in
about 16 µs, far below what one Locust process spends on a request), because
a QR code is only valid for ``code_lifetime_s`` and a card signs the
reader's fresh challenge. Credentials and holder keys come from the fixture.

One :class:`TrafficMaker` serves one Locust process. Holders and devices are
split between processes by worker index, so two processes never drive the
same device or the same phone (a phone's counter is part of its codes).
"""

from __future__ import annotations

import base64
import collections
import dataclasses
import random
from typing import TYPE_CHECKING, Any, Iterable

import msgspec

from fastpath import wire
from fastpath.issuer import Card, Phone, new_reader_nonce
from gateway.client import DeviceCredentials, card_presented
from gateway.reasons import Reason
from loadtests import scenario as sc
from loadtests.fixture import Device, Fixture, Holder

if TYPE_CHECKING:
    from loadtests.answers import Answer

# The outcome each kind of traffic must get: reason codes, or an HTTP status
# when the gateway must refuse the request before journaling anything.
EXPECTED_REASONS: dict[str, tuple[int, ...]] = {
    sc.VALID_CARD: (Reason.ACCEPTED,),
    sc.VALID_QR: (Reason.ACCEPTED,),
    sc.EXPIRED_QR: (Reason.CODE_EXPIRED,),
    sc.REPLAYED_QR: (Reason.REPLAYED,),
    sc.FORGED_HOLDER: (Reason.HOLDER_SIGNATURE_INVALID,),
    sc.FORGED_ISSUER: (Reason.ISSUER_SIGNATURE_INVALID,),
    sc.LOST_CARD: (Reason.CARD_REPORTED_LOST,),
    sc.ARREARS: (Reason.ACCOUNT_IN_ARREARS,),
}
UNKNOWN_DEVICE_STATUS = 401

# A holder is not sent to the same device again within this many seconds, so
# the gateway's duplicate-tap window (30 s by default) never rejects a valid tap.
HOLDER_REUSE_S = 45.0


def outcome_is_expected(answer: "Answer", fare_reasons_allowed: Iterable[int]) -> bool:
    """Return whether ``answer`` is what its traffic kind must get."""
    if answer.status == 0:
        # No response: a transport error, counted in the error rate and not here.
        return True
    if answer.kind == sc.UNKNOWN_DEVICE:
        return answer.status == UNKNOWN_DEVICE_STATUS
    if not answer.acknowledged:
        return True
    if answer.kind in sc.VALID_KINDS:
        if answer.reason == Reason.ACCEPTED:
            return answer.decision == "accepted"
        return answer.decision == "rejected" and answer.reason in set(fare_reasons_allowed)
    return answer.decision == "rejected" and answer.reason in EXPECTED_REASONS[answer.kind]


def expected_text(kind: str, allowed: tuple[int, ...]) -> str:
    if kind == sc.UNKNOWN_DEVICE:
        return f"HTTP {UNKNOWN_DEVICE_STATUS}"
    if kind in sc.VALID_KINDS:
        return f"accepted (or a rejection with fare reason {list(allowed)})"
    return "rejected with reason " + " or ".join(str(r) for r in EXPECTED_REASONS[kind])


@dataclasses.dataclass(slots=True)
class Tap:
    """One request ready to sign and send."""

    kind: str
    creds: DeviceCredentials
    body: dict[str, Any]
    holder: Holder | None
    medium: str
    # QR text of a valid code, kept so a later tap can replay it once it is accepted.
    qr_text: str | None = None


@dataclasses.dataclass(slots=True)
class Place:
    """The route, stop or site of a tap and its tap kind, as the tap request names them."""

    tap_kind: str
    route_id: str | None = None
    stop_id: str | None = None
    site_id: str | None = None


def partition(items: list, worker_index: int, processes: int) -> list:
    """Return the share of ``items`` that belongs to Locust process ``worker_index`` of ``processes``."""
    return items[worker_index % processes::processes]


def flip_signature_byte(medium: str, presented: bytes) -> bytes:
    """Return ``presented`` with one byte of the holder signature (the last 64 bytes) changed."""
    if medium == "qr":
        envelope = bytearray(wire.base45_decode(presented[wire.QR_PREFIX_LEN:]))
        envelope[-1] ^= 0x01
        return wire.QR_PREFIX + wire.base45_encode(bytes(envelope))
    forged = bytearray(presented)
    forged[-1] ^= 0x01
    return bytes(forged)


class TrafficMaker:
    """Chooses the kind of each tap and makes its request for one Locust process."""

    def __init__(self, fixture: Fixture, spec: sc.RunSpec, worker_index: int, rng: random.Random) -> None:
        self.spec = spec
        self.rng = rng
        holders = partition(fixture.holders, worker_index, spec.processes)
        self.ok = [h for h in holders if h.status == "ok"]
        self.lost = [h for h in holders if h.status == "lost"]
        self.arrears = [h for h in holders if h.status == "arrears"]
        self.rogue = partition(fixture.rogue_holders, worker_index, spec.processes) or fixture.rogue_holders[:1]
        self.unknown = partition(fixture.unknown_devices, worker_index, spec.processes)
        if not self.ok or not self.lost or not self.arrears:
            raise ValueError(f"process {worker_index} of {spec.processes} got no holders of some status; "
                             f"provision more holders, lost cards and arrears accounts than Locust processes")
        self._phones: dict[tuple[str, int], Phone] = {}
        self._cards: dict[tuple[str, int], Card] = {}
        # Accepted QR codes with their presentation time, for replays.
        self.replay_pool: collections.deque[tuple[str, int]] = collections.deque(maxlen=512)
        # Holders who entered each site in this run, by site id.
        self.entered: dict[str, set[int]] = {}
        self._kinds, self._weights = self._kind_weights(spec.model)

    @staticmethod
    def _kind_weights(model: sc.TrafficModel) -> tuple[list[str], list[float]]:
        bad = msgspec.structs.asdict(model.bad)
        valid_share = 1.0 - sum(bad.values())
        media_total = model.media.get("card", 0) + model.media.get("qr", 0)
        kinds = [sc.VALID_CARD, sc.VALID_QR, *bad]
        weights = [valid_share * model.media.get("card", 0) / media_total,
                   valid_share * model.media.get("qr", 0) / media_total, *bad.values()]
        return kinds, weights

    def choose_kind(self) -> str:
        return self.rng.choices(self._kinds, self._weights)[0]

    def phone(self, holder: Holder, group: str = "h") -> Phone:
        key = (group, holder.index)
        phone = self._phones.get(key)
        if phone is None:
            phone = self._phones[key] = Phone(holder.phone_credential, holder.phone_seed)
        return phone

    def card(self, holder: Holder, group: str = "h") -> Card:
        key = (group, holder.index)
        card = self._cards.get(key)
        if card is None:
            card = self._cards[key] = Card(holder.card_credential, holder.card_seed)
        return card

    def pick_holder(self, pool: list[Holder], recent: dict[int, float], now_s: float,
                    site_id: str | None = None) -> Holder:
        """Pick a holder not seen at this device within :data:`HOLDER_REUSE_S`, trying a few times.

        At a site, holders who already entered it in this run are avoided too,
        because a scenic ticket allows one entry a day. Once few are left, a
        second entry happens and is rejected with a fare reason the model allows.
        """
        entered = self.entered.setdefault(site_id, set()) if site_id is not None else set()

        def fresh(candidate: Holder) -> bool:
            return now_s - recent.get(candidate.index, -1e9) >= HOLDER_REUSE_S

        candidates = [self.rng.choice(pool) for _ in range(32)]
        holder = next((c for c in candidates[:8] if fresh(c) and c.index not in entered), None)
        if holder is None:
            # Recency is the hard rule: a card seen here within the duplicate window would be rejected.
            holder = next((c for c in candidates if fresh(c)), candidates[-1])
        recent[holder.index] = now_s
        if site_id is not None:
            entered.add(holder.index)
        return holder

    def present(self, holder: Holder, medium: str, device: Device, now_ms: int, group: str = "h") -> str:
        """Return the ``presented`` field for a fresh, valid presentation by ``holder``."""
        if medium == "qr":
            return self.phone(holder, group).qr_text(now_ms)
        answer = self.card(holder, group).answer(device.device_id.encode(), new_reader_nonce(), now_ms)
        return card_presented(answer)

    def make(self, kind: str, device: Device, place: Place, tap_id: int, now_ms: int,
             recent: dict[int, float]) -> Tap:
        """Make the request for one tap of ``kind`` at ``device``.

        A replay needs an accepted code from the last few seconds. With none
        at hand, the tap is sent as a valid QR code instead and its kind is ``valid_qr``.
        """
        now_s = now_ms / 1000
        creds = DeviceCredentials(device.device_id, device.secret)
        holder: Holder | None
        qr_text = None

        if kind == sc.REPLAYED_QR:
            replay = self._take_replay(now_ms)
            if replay is None:
                kind = sc.VALID_QR
            else:
                return Tap(kind, creds, self._body(tap_id, now_ms, "qr", replay, place), None, "qr")

        if kind in (sc.VALID_CARD, sc.VALID_QR):
            medium = "card" if kind == sc.VALID_CARD else "qr"
            holder = self.pick_holder(self.ok, recent, now_s, place.site_id)
            presented = self.present(holder, medium, device, now_ms)
            qr_text = presented if medium == "qr" else None
        elif kind == sc.EXPIRED_QR:
            medium = "qr"
            holder = self.pick_holder(self.ok, recent, now_s, place.site_id)
            old_ms = now_ms - (self.spec.code_lifetime_s + self.spec.clock_skew_s + 30) * 1000
            presented = self.phone(holder).qr_text(old_ms)
        elif kind == sc.FORGED_HOLDER:
            medium = self.rng.choice(("card", "qr"))
            holder = self.pick_holder(self.ok, recent, now_s, place.site_id)
            valid = self.present(holder, medium, device, now_ms)
            presented = self._forge(medium, valid)
        elif kind == sc.FORGED_ISSUER:
            medium = self.rng.choice(("card", "qr"))
            holder = self.rng.choice(self.rogue)
            presented = self.present(holder, medium, device, now_ms, group="rogue")
        elif kind == sc.LOST_CARD:
            medium = "card"
            holder = self.pick_holder(self.lost, recent, now_s, place.site_id)
            presented = self.present(holder, medium, device, now_ms)
        elif kind == sc.ARREARS:
            medium = self.rng.choice(("card", "qr"))
            holder = self.pick_holder(self.arrears, recent, now_s, place.site_id)
            presented = self.present(holder, medium, device, now_ms)
        elif kind == sc.UNKNOWN_DEVICE:
            medium = "qr"
            holder = self.pick_holder(self.ok, recent, now_s, place.site_id)
            unknown = self.rng.choice(self.unknown)
            creds = DeviceCredentials(unknown.device_id, unknown.secret)
            presented = self.phone(holder).qr_text(now_ms)
        else:
            raise ValueError(f"unknown traffic kind {kind!r}; expected one of {', '.join(sc.ALL_KINDS)}")

        return Tap(kind, creds, self._body(tap_id, now_ms, medium, presented, place), holder, medium, qr_text)

    def make_valid(self, holder: Holder, medium: str, device: Device, place: Place, tap_id: int,
                   now_ms: int, recent: dict[int, float]) -> Tap:
        """Make a valid tap by a given holder (a tap-off by a rider who tapped on)."""
        # The tap-off counts for the duplicate window too: the rider must not board again at once.
        recent[holder.index] = now_ms / 1000
        presented = self.present(holder, medium, device, now_ms)
        kind = sc.VALID_CARD if medium == "card" else sc.VALID_QR
        return Tap(kind, DeviceCredentials(device.device_id, device.secret),
                   self._body(tap_id, now_ms, medium, presented, place), holder, medium,
                   presented if medium == "qr" else None)

    def remember_accepted(self, tap: Tap, now_ms: int) -> None:
        """Offer an accepted QR code for a later replay."""
        if tap.qr_text is not None:
            self.replay_pool.append((tap.qr_text, now_ms))

    def _take_replay(self, now_ms: int) -> str | None:
        # Replay only well inside the code lifetime, or the gateway would reject it as CODE_EXPIRED.
        fresh_ms = self.spec.code_lifetime_s * 1000 // 3
        while self.replay_pool:
            text, accepted_ms = self.replay_pool.popleft()
            if now_ms - accepted_ms <= fresh_ms:
                return text
        return None

    @staticmethod
    def _forge(medium: str, presented: str) -> str:
        if medium == "qr":
            return flip_signature_byte("qr", presented.encode("ascii")).decode("ascii")
        return base64.b64encode(flip_signature_byte("card", base64.b64decode(presented))).decode("ascii")

    @staticmethod
    def _body(tap_id: int, now_ms: int, medium: str, presented: str, place: Place) -> dict[str, Any]:
        body: dict[str, Any] = {"tap_id": tap_id, "tap_time_ms": now_ms, "medium": medium,
                                "presented": presented, "tap_kind": place.tap_kind}
        for field in ("route_id", "stop_id", "site_id"):
            value = getattr(place, field)
            if value is not None:
                body[field] = value
        return body
