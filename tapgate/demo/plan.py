"""The plan of a compressed day: which holder taps where, when and how, and what the gateway must decide.

The plan is made ahead of time from the seed, so the same seed gives the
same day. Each trip of a rider becomes one or more planned taps: a flat-fare
urban ride (sometimes with a transfer to another route), a county ride with
tap-on and tap-off (sometimes without the tap-off), a scenic-spot entry
(a surge in the morning, and a few second entries that the one-entry-per-day
rule rejects), a venue entry. Bad traffic is mixed in: expired, replayed and
forged codes, lost cards, accounts in arrears, unknown devices. Two devices
lose their connection for part of the day; their taps are uploaded later as
offline batches.

A planned tap carries its simulated tap time. Dispatch order is the time a
tap reaches the gateway in the simulated day: its tap time when online, the
end of the outage for an offline batch.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import random

from gateway.timeutil import LOCAL_TZ, day_bounds
from tapgate.demo.world import DemoDevice, Holder, World

VALID = "valid"
EXPIRED_QR = "expired_qr"
REPLAYED_QR = "replayed_qr"
FORGED_HOLDER = "forged_holder"
FORGED_ISSUER = "forged_issuer"
LOST_CARD = "lost_card"
ARREARS = "arrears"
UNKNOWN_DEVICE = "unknown_device"
BAD_KINDS = (EXPIRED_QR, REPLAYED_QR, FORGED_HOLDER, FORGED_ISSUER, LOST_CARD, ARREARS, UNKNOWN_DEVICE)
FORGED_KINDS = (FORGED_HOLDER, FORGED_ISSUER)

# Share of all taps for each kind of bad traffic.
BAD_SHARES = {EXPIRED_QR: 0.010, REPLAYED_QR: 0.007, FORGED_HOLDER: 0.005, FORGED_ISSUER: 0.003,
              LOST_CARD: 0.005, ARREARS: 0.005, UNKNOWN_DEVICE: 0.003}
# Share of rider trips by sector.
SECTOR_SHARES = {"urban": 0.55, "county": 0.17, "scenic": 0.18, "venue": 0.10}
URBAN_TRANSFER_SHARE = 0.20
URBAN_TO_COUNTY_SHARE = 0.04
MISSING_TAP_OFF_SHARE = 0.05
SCENIC_SECOND_ENTRY_SHARE = 0.02
# Share of taps made with the card (the rest with the phone's QR code).
CARD_SHARE = {"elderly-60-64": 0.7, "elderly-65+": 0.8, "child": 0.9}
CARD_SHARE_DEFAULT = 0.4
# Relative traffic per local hour 0..23 outside the buses (whose profile is the traffic model's).
SCENIC_PROFILE = [0, 0, 0, 0, 0, 0, 0, 0.2, 1.0, 1.0, 0.8, 0.5, 0.3, 0.3, 0.3, 0.2, 0.1, 0, 0, 0, 0, 0, 0, 0]
VENUE_PROFILE = [0, 0, 0, 0, 0, 0, 0, 0, 0.2, 0.6, 0.8, 0.7, 0.5, 0.6, 0.8, 0.8, 0.8, 0.7, 0.9, 1.0, 0.8, 0.3, 0, 0]
# Minutes a holder stays busy after a trip, so no card meets the gateway's
# duplicate-tap window on the same device.
HOLDER_REST_MIN = 10
# Outages: (device index within its sector, local start hour, local end hour).
OUTAGES = {"county": (0, 6.0, 9.5), "venue": (0, 13.0, 15.0)}
BATCH_TAPS_MAX = 200

MINUTE_MS = 60_000


@dataclasses.dataclass(eq=False, slots=True)
class PlannedTap:
    seq: int
    kind: str
    sector: str
    device: DemoDevice
    holder: Holder | None
    medium: str
    tap_kind: str
    tap_time_ms: int
    stop_id: str | None = None
    offline: bool = False
    # The tap whose QR text a replay sends again.
    replay_of: "PlannedTap | None" = None
    # Set when the tap is sent.
    device_tap_id: int = 0
    presented: str | None = None


@dataclasses.dataclass(eq=False, slots=True)
class Dispatch:
    """One request: a single online tap, or an offline batch of one device."""

    send_ms: int
    order: int
    taps: list[PlannedTap]

    @property
    def offline(self) -> bool:
        return self.taps[0].offline


@dataclasses.dataclass
class DayPlan:
    day: dt.date
    taps: list[PlannedTap]
    dispatches: list[Dispatch]

    def count(self, kind: str) -> int:
        return sum(1 for tap in self.taps if tap.kind == kind)


class _Clock:
    """Draws tap times of the simulated day from an hourly profile of local hours."""

    def __init__(self, day: dt.date, cutoff: dt.time, rng: random.Random) -> None:
        self.midnight_ms = int(dt.datetime.combine(day, dt.time(0, 0), tzinfo=LOCAL_TZ).timestamp()) * 1000
        start, end = day_bounds(day, cutoff)
        # The business day's bounds: a tap outside them would belong to another day.
        self.start_ms = int(start.timestamp()) * 1000
        self.end_ms = int(end.timestamp()) * 1000
        self.rng = rng

    def within_day(self, when_ms: int) -> bool:
        return self.start_ms <= when_ms < self.end_ms

    def draw(self, profile: list[float]) -> int:
        hour = self.rng.choices(range(24), profile)[0]
        return self.midnight_ms + hour * 3_600_000 + self.rng.randrange(3_600_000)

    def at(self, hour: float) -> int:
        return self.midnight_ms + int(hour * 3_600_000)


class _Holders:
    """Hands out holders who are free at a given time, and marks them busy for their trip."""

    def __init__(self, holders: list[Holder], rng: random.Random) -> None:
        self.pool = holders
        self.rng = rng
        self.busy_until: dict[int, int] = {}

    def take(self, start_ms: int, end_ms: int, avoid: set[int] | None = None) -> Holder | None:
        for _ in range(20):
            holder = self.rng.choice(self.pool)
            if self.busy_until.get(holder.index, 0) <= start_ms and (not avoid or holder.index not in avoid):
                self.busy_until[holder.index] = end_ms + HOLDER_REST_MIN * MINUTE_MS
                return holder
        return None


class _Planner:
    def __init__(self, world: World, taps_target: int, seed: int, cutoff: dt.time) -> None:
        self.world = world
        self.rng = random.Random(seed ^ 0x5EED_DA7)
        self.clock = _Clock(world.day, cutoff, self.rng)
        self.taps_target = taps_target
        self.taps: list[PlannedTap] = []
        self.seq = itertools.count()
        self.holders = _Holders(world.holders_with("ok"), self.rng)
        self.devices = {sector: world.devices_in(sector) for sector in SECTOR_SHARES}
        self.bus_profile = list(world.model.day_profile)
        self.scenic_visits: dict[str, set[int]] = {}
        # Online QR taps of riders, listed once all trips are planned: the codes a replay may reuse.
        self.replayable: list[PlannedTap] | None = None
        self.outages: dict[DemoDevice, tuple[int, int]] = {}
        for sector, (index, start_h, end_h) in OUTAGES.items():
            if len(self.devices[sector]) > index + 1:
                self.outages[self.devices[sector][index]] = (self.clock.at(start_h), self.clock.at(end_h))

    def offline_at(self, device: DemoDevice, when_ms: int) -> bool:
        window = self.outages.get(device)
        return window is not None and window[0] <= when_ms < window[1]

    def medium_for(self, holder: Holder) -> str:
        share = CARD_SHARE.get(holder.category, CARD_SHARE_DEFAULT)
        return "card" if self.rng.random() < share else "qr"

    def add(self, kind: str, device: DemoDevice, holder: Holder | None, medium: str, tap_kind: str,
            tap_time_ms: int, stop_id: str | None = None) -> PlannedTap | None:
        """Plan a tap; return None, planning nothing, if its time falls outside the business day."""
        if not self.clock.within_day(tap_time_ms):
            return None
        tap = PlannedTap(next(self.seq), kind, device.sector, device, holder, medium, tap_kind, tap_time_ms,
                         stop_id=stop_id)
        self.taps.append(tap)
        return tap

    # -- rider trips ---------------------------------------------------------

    def urban_trip(self) -> None:
        start = self.clock.draw(self.bus_profile)
        transfer = self.rng.random()
        end = start + (100 if transfer < URBAN_TRANSFER_SHARE + URBAN_TO_COUNTY_SHARE else 50) * MINUTE_MS
        holder = self.holders.take(start, end)
        if holder is None:
            return
        device = self.rng.choice(self.devices["urban"])
        medium = self.medium_for(holder)
        self.add(VALID, device, holder, medium, "board", start, self.rng.choice(device.stops))
        if transfer < URBAN_TRANSFER_SHARE:
            other = self.rng.choice([d for d in self.devices["urban"] if d.route_id != device.route_id])
            self.add(VALID, other, holder, medium, "board", start + self.rng.randrange(15, 45) * MINUTE_MS,
                     self.rng.choice(other.stops))
        elif transfer < URBAN_TRANSFER_SHARE + URBAN_TO_COUNTY_SHARE:
            self.county_ride(holder, start + self.rng.randrange(15, 40) * MINUTE_MS, medium)

    def county_ride(self, holder: Holder, start: int, medium: str) -> None:
        """Tap on at a stop and off at a later one (the rule set prices the outbound direction)."""
        device = self.rng.choice(self.devices["county"])
        on = self.rng.randrange(0, len(device.stops) - 1)
        off = self.rng.randrange(on + 1, len(device.stops))
        self.add(VALID, device, holder, medium, "on", start, device.stops[on])
        if self.rng.random() >= MISSING_TAP_OFF_SHARE:
            ride = (off - on) * self.rng.randrange(6, 12) * MINUTE_MS
            self.add(VALID, device, holder, medium, "off", start + ride, device.stops[off])

    def county_trip(self) -> None:
        start = self.clock.draw(self.bus_profile)
        holder = self.holders.take(start, start + 70 * MINUTE_MS)
        if holder is not None:
            self.county_ride(holder, start, self.medium_for(holder))

    def scenic_trip(self) -> None:
        start = self.clock.draw(SCENIC_PROFILE)
        device = self.rng.choice(self.devices["scenic"])
        visited = self.scenic_visits.setdefault(device.site_id or "", set())
        holder = self.holders.take(start, start + 120 * MINUTE_MS, avoid=visited)
        if holder is None:
            return
        visited.add(holder.index)
        medium = self.medium_for(holder)
        self.add(VALID, device, holder, medium, "entry", start)
        if self.rng.random() < SCENIC_SECOND_ENTRY_SHARE:
            # A visitor who left tries to come back in: one entry per holder per day.
            gates = [d for d in self.devices["scenic"] if d.site_id == device.site_id and d is not device]
            self.add(VALID, self.rng.choice(gates or [device]), holder, medium, "entry",
                     start + self.rng.randrange(30, 100) * MINUTE_MS)

    def venue_trip(self) -> None:
        start = self.clock.draw(VENUE_PROFILE)
        holder = self.holders.take(start, start + 60 * MINUTE_MS)
        if holder is not None:
            self.add(VALID, self.rng.choice(self.devices["venue"]), holder, self.medium_for(holder), "entry", start)

    # -- bad traffic -----------------------------------------------------------

    def place_anywhere(self) -> tuple[DemoDevice, str, str | None, int]:
        """Return a device, tap kind, stop and time for a tap outside a rider's trip."""
        sector = self.rng.choices(list(SECTOR_SHARES), list(SECTOR_SHARES.values()))[0]
        device = self.rng.choice(self.devices[sector])
        if device.route_id:
            when = self.clock.draw(self.bus_profile)
        else:
            when = self.clock.draw(SCENIC_PROFILE if sector == "scenic" else VENUE_PROFILE)
        if self.offline_at(device, when):
            # Bad taps are sent online; a device without a connection cannot send them.
            device = next(d for d in self.devices[sector] if d not in self.outages)
        if device.route_id:
            return device, "on" if sector == "county" else "board", self.rng.choice(device.stops), when
        return device, "entry", None, when

    def bad_tap(self, kind: str) -> None:
        device, tap_kind, stop, when = self.place_anywhere()
        if kind == REPLAYED_QR:
            if self.replayable is None:
                self.replayable = [t for t in self.taps if t.kind == VALID and t.medium == "qr"
                                   and not self.offline_at(t.device, t.tap_time_ms)]
            if not self.replayable:
                return
            original = self.rng.choice(self.replayable)
            # The same code reaches another device a few minutes later (a screenshot passed on).
            when = original.tap_time_ms + self.rng.randrange(1, 5) * MINUTE_MS
            tap = self.add(kind, device, original.holder, "qr", tap_kind, when, stop)
            if tap is not None:
                tap.replay_of = original
            return
        if kind == FORGED_ISSUER:
            holder = self.rng.choice(self.world.rogue_holders)
        elif kind == LOST_CARD:
            holder = self.rng.choice(self.world.holders_with("lost"))
        elif kind == ARREARS:
            holder = self.rng.choice(self.world.holders_with("arrears"))
        else:
            holder = self.rng.choice(self.holders.pool)
        medium = {EXPIRED_QR: "qr", UNKNOWN_DEVICE: "qr", LOST_CARD: "card"}.get(kind) or self.rng.choice(
            ("card", "qr"))
        if kind == UNKNOWN_DEVICE:
            device = self.rng.choice(self.world.unknown_devices)
            tap_kind, stop = "board", None
        self.add(kind, device, holder, medium, tap_kind, when, stop)

    # -- the day ---------------------------------------------------------------

    def build(self) -> DayPlan:
        bad_total = sum(BAD_SHARES.values())
        valid_target = int(self.taps_target * (1 - bad_total))
        trips = {"urban": self.urban_trip, "county": self.county_trip, "scenic": self.scenic_trip,
                 "venue": self.venue_trip}
        sectors, weights = list(SECTOR_SHARES), list(SECTOR_SHARES.values())
        attempts = 0
        while len(self.taps) < valid_target and attempts < 20 * self.taps_target:
            attempts += 1
            trips[self.rng.choices(sectors, weights)[0]]()
        for kind, share in BAD_SHARES.items():
            for _ in range(max(1, round(self.taps_target * share))):
                self.bad_tap(kind)
        return DayPlan(self.world.day, self.taps, self.dispatches())

    def dispatches(self) -> list[Dispatch]:
        """Group the taps into requests in the order they reach the gateway."""
        singles: list[Dispatch] = []
        held: dict[DemoDevice, list[PlannedTap]] = {}
        for tap in sorted(self.taps, key=lambda t: (t.tap_time_ms, t.seq)):
            if self.offline_at(tap.device, tap.tap_time_ms) and tap.kind in (VALID, LOST_CARD, ARREARS):
                tap.offline = True
                held.setdefault(tap.device, []).append(tap)
            else:
                singles.append(Dispatch(tap.tap_time_ms, 0, [tap]))
        batches = []
        for device, taps in held.items():
            upload_ms = self.outages[device][1]
            for first in range(0, len(taps), BATCH_TAPS_MAX):
                batches.append(Dispatch(upload_ms, 0, taps[first:first + BATCH_TAPS_MAX]))

        ordered = sorted(singles + batches, key=lambda d: (d.send_ms, d.taps[0].seq))
        for order, dispatch in enumerate(ordered):
            dispatch.order = order
        _check_replay_order(ordered)
        return ordered


def _check_replay_order(dispatches: list[Dispatch]) -> None:
    """Raise unless every replay is sent after its original (later tap times and online originals ensure it)."""
    position = {id(tap): d.order for d in dispatches for tap in d.taps}
    for dispatch in dispatches:
        for tap in dispatch.taps:
            if tap.replay_of is not None and position[id(tap.replay_of)] >= dispatch.order:
                raise AssertionError(f"replay {tap.seq} is dispatched before its original {tap.replay_of.seq}")


def plan_day(world: World, taps: int, seed: int, cutoff: dt.time = dt.time(0, 0)) -> DayPlan:
    """Return the plan of ``world``'s business day (with ``cutoff``, local time) with about ``taps`` taps."""
    return _Planner(world, taps, seed, cutoff).build()


__all__ = ["BAD_KINDS", "DayPlan", "Dispatch", "FORGED_KINDS", "PlannedTap", "VALID", "plan_day"]
