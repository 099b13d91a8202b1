"""Locust users for Yiyuan's validators and gates; run through ``tapgate loadtest``.

Each user is one device from the fixture, and signs every request with that
device's secret as a real validator does (``gateway.client.sign_headers``).

- ``bus``: a validator on a bus that serves its route stop by stop and turns
  back at the end. At each stop a burst of riders boards (Poisson, scaled by
  the day profile under the peak shape). On area-fare routes riders tap on
  when boarding and tap off at a later stop.
- ``scenic``: a gate at a scenic spot with people queueing, one entry every
  ``gate_interval_s``. The surge shape opens all gates at once on a holiday.
- ``venue``: a gate at a museum, library or sports venue, with entries
  arriving at random (exponential gaps, mean ``venue_interval_s``).

Simulated durations are divided by ``time_scale``. Each tap's kind (valid,
expired, replayed, forged, lost card, arrears, unknown device) is drawn from
the traffic model. A tap whose answer is not what its kind must get is a
Locust failure named by its kind, and every answer goes to this process's
answer file for the journal check after the run.

Buses lose their connection now and then (the model's ``[offline]``): a
validator then keeps its taps, marked offline with their own tap times, and
uploads them as ``POST /v1/taps/batch`` requests when the connection
returns. Each tap of a batch is checked and logged like a single tap.
Unknown-device and replayed-code traffic is sent only online, since one
unknown device would fail a whole batch and a replay needs a code accepted
moments before.
"""

from __future__ import annotations

import logging
import math
import random
import time

import msgspec
from locust import FastHttpUser, constant, events, task
from locust.exception import StopUser

from gateway.client import sign_headers
from gateway.logs import log_event
from loadtests import curves, shapes
from loadtests import scenario as sc
from loadtests.answers import Answer, AnswerLog
from loadtests.fixture import Device, Holder, read_fixture
from loadtests.traffic import (HOLDER_REUSE_S, UNKNOWN_DEVICE_STATUS, Place, Tap, TrafficMaker, expected_text,
                               outcome_is_expected)

log = logging.getLogger("loadtests")

SPEC = sc.read_spec()
FIXTURE = read_fixture(SPEC.fixture_path)
TAP_PATH = "/v1/taps"
BATCH_PATH = "/v1/taps/batch"
CONTENT_TYPE = "application/msgpack" if SPEC.body_format == "msgpack" else "application/json"
encode_body = msgspec.msgpack.encode if SPEC.body_format == "msgpack" else msgspec.json.encode
decode_body = msgspec.msgpack.decode if SPEC.body_format == "msgpack" else msgspec.json.decode
FARE_REASONS_ALLOWED = tuple(SPEC.model.fare_reasons_allowed)
# Shortest gap between two requests of one device: 90 % of the gateway's per-device limit.
DEVICE_INTERVAL_S = 1.0 / (0.9 * SPEC.device_rate_per_s)

# The one shape class Locust finds in this module.
Shape = shapes.shape_for(SPEC)


class ProcessState:
    """What the users of one Locust process share: their devices, the traffic maker, the answer file."""

    def __init__(self, worker_index: int) -> None:
        self.worker_index = worker_index
        self.started = time.monotonic()
        self.rng = random.Random()
        self.maker = TrafficMaker(FIXTURE, SPEC, worker_index, self.rng)
        self.answers = AnswerLog(SPEC.answers_dir)
        self.free: dict[str, list[Device]] = {name: [] for name in sc.SCENARIOS}
        for device in FIXTURE.devices[worker_index % SPEC.processes::SPEC.processes]:
            self.free[device.scenario].append(device)
        for devices in self.free.values():
            self.rng.shuffle(devices)
        # Holders seen recently per device id. It outlives the user, because a device a stopped
        # user released may be claimed by the next user within the duplicate window.
        self.recent: dict[str, dict[int, float]] = {}

    def level(self) -> float:
        """Relative traffic now: the day profile under the peak shape, else the busiest hour (1.0)."""
        if SPEC.shape.name != "peak":
            return 1.0
        hour = curves.simulated_hour(SPEC.shape, time.monotonic() - self.started)
        return curves.profile_at(SPEC.model.day_profile, hour)


_state: ProcessState | None = None


def process_state(user: FastHttpUser) -> ProcessState:
    global _state
    if _state is None:
        _state = ProcessState(max(user.environment.runner.worker_index, 0))
    return _state


@events.test_stop.add_listener
def _flush_answers(**_kwargs: object) -> None:
    if _state is not None:
        _state.answers.flush()


@events.quitting.add_listener
def _close_answers(**_kwargs: object) -> None:
    if _state is not None:
        _state.answers.close()


def poisson(rng: random.Random, mean: float) -> int:
    """Draw from a Poisson distribution (Knuth's method; fine for the small means of one stop)."""
    limit = math.exp(-mean)
    count, product = 0, rng.random()
    while product > limit:
        count += 1
        product *= rng.random()
    return count


class DeviceUser(FastHttpUser):
    """One registered device sending taps; subclasses define where and how often."""

    abstract = True
    scenario = ""
    wait_time = constant(0)
    connection_timeout = SPEC.request_timeout_s
    network_timeout = SPEC.request_timeout_s

    def on_start(self) -> None:
        self.state = process_state(self)
        free = self.state.free[self.scenario]
        if not free:
            log_event(log, logging.ERROR, "loadtest.no_free_device", scenario=self.scenario,
                      worker=self.state.worker_index)
            raise StopUser()
        self.device = free.pop()
        self.recent = self.state.recent.setdefault(self.device.device_id, {})
        self.next_tap_id = time.time_ns() // 1000
        self.last_sent = 0.0
        # Taps kept while the device is offline; None while it is online.
        self.queued: list[Tap] | None = None

    def on_stop(self) -> None:
        device = getattr(self, "device", None)
        if device is not None:
            self.state.free[self.scenario].append(device)
            self.device = None

    def sleep_simulated(self, seconds: float) -> None:
        """Sleep for ``seconds`` of simulated time (gevent makes ``time.sleep`` yield to other users)."""
        if seconds > 0:
            time.sleep(seconds / SPEC.model.timing.time_scale)

    def tap(self, place: Place, kind: str | None = None, holder: Holder | None = None,
            medium: str = "card") -> Tap | None:
        """Send one tap (of a drawn kind, or a valid one by ``holder``) and return it if it was accepted.

        While the device is offline the tap is kept for the next batch upload,
        and a valid tap is returned as if accepted.
        """
        if self.queued is not None:
            tap = self._make_tap(place, kind, holder, medium, time.time_ns() // 1_000_000, offline=True)
            tap.body["offline"] = True
            self.queued.append(tap)
            return tap if tap.kind in sc.VALID_KINDS else None

        self._keep_device_interval()
        now_ms = time.time_ns() // 1_000_000
        tap = self._make_tap(place, kind, holder, medium, now_ms, offline=False)
        accepted = self.send(tap, now_ms)
        if accepted:
            self.state.maker.remember_accepted(tap, now_ms)
            return tap
        return None

    def _make_tap(self, place: Place, kind: str | None, holder: Holder | None, medium: str, now_ms: int, *,
                  offline: bool) -> Tap:
        self.next_tap_id += 1
        maker = self.state.maker
        if holder is not None:
            return maker.make_valid(holder, medium, self.device, place, self.next_tap_id, now_ms, self.recent)
        kind = kind or maker.choose_kind()
        # A batch is sent only with the device's own secret, and a replay needs a code accepted moments before.
        if offline and kind in (sc.UNKNOWN_DEVICE, sc.REPLAYED_QR):
            kind = sc.VALID_QR
        return maker.make(kind, self.device, place, self.next_tap_id, now_ms, self.recent)

    def _keep_device_interval(self) -> None:
        """Wait until this device may send again without reaching the gateway's per-device limit."""
        wait_s = self.last_sent + DEVICE_INTERVAL_S - time.monotonic()
        if wait_s > 0:
            time.sleep(wait_s)
        self.last_sent = time.monotonic()

    def upload(self) -> None:
        """Go back online and send the kept taps in batch requests of at most ``batch_max``."""
        queued, self.queued = self.queued or [], None
        batch_max = SPEC.model.offline.batch_max
        for start in range(0, len(queued), batch_max):
            self._keep_device_interval()
            self._send_batch(queued[start:start + batch_max])

    def _send_batch(self, taps: list[Tap]) -> None:
        now_ms = time.time_ns() // 1_000_000
        body = encode_body({"taps": [tap.body for tap in taps]})
        creds = taps[0].creds
        headers = sign_headers(creds, "POST", BATCH_PATH, body, now_ms=now_ms)
        headers["Content-Type"] = CONTENT_TYPE
        answers = [Answer(device_id=creds.device_id, tap_id=tap.body["tap_id"], kind=tap.kind,
                          scenario=self.scenario, medium=tap.medium, sent_ms=now_ms, status=0, offline=True)
                   for tap in taps]
        try:
            with self.client.post(BATCH_PATH, data=body, headers=headers, name=f"{self.scenario} offline batch",
                                  catch_response=True) as response:
                status = response.status_code or 0
                for answer in answers:
                    answer.status = status
                if status != 200:
                    response.failure(f"offline batch of {len(taps)}: HTTP {status}: {(response.text or '')[:200]}")
                    return
                try:
                    results = decode_body(response.content)["results"]
                    for answer, result in zip(answers, results, strict=True):
                        _fill_answer(answer, result)
                except (msgspec.DecodeError, KeyError, TypeError, ValueError) as exc:
                    for answer in answers:
                        answer.journal_id = None
                    response.failure(f"unreadable batch answer: {exc}")
                    return
                wrong = [f"{answer.kind}: decision {answer.decision} reason {answer.reason}"
                         for answer in answers if not outcome_is_expected(answer, FARE_REASONS_ALLOWED)]
                if wrong:
                    response.failure(f"offline batch: {len(wrong)} of {len(taps)} taps got an unexpected "
                                     f"answer, first {wrong[0]}")
                else:
                    response.success()
        finally:
            # Also when Locust stops this user mid-request, as for single taps.
            for answer in answers:
                self.state.answers.write(answer)

    def send(self, tap: Tap, now_ms: int) -> bool:
        body = encode_body(tap.body)
        headers = sign_headers(tap.creds, "POST", TAP_PATH, body, now_ms=now_ms)
        headers["Content-Type"] = CONTENT_TYPE
        answer = Answer(device_id=tap.creds.device_id, tap_id=tap.body["tap_id"], kind=tap.kind,
                        scenario=self.scenario, medium=tap.medium, sent_ms=now_ms, status=0)
        try:
            self._post(tap, body, headers, answer)
        finally:
            # Also when Locust stops this user mid-request. The line (status 0) shows the
            # journal check that the tap was sent, so its row, if any, is not a stray.
            self.state.answers.write(answer)
        return answer.decision == "accepted"

    def _post(self, tap: Tap, body: bytes, headers: dict[str, str], answer: Answer) -> None:
        with self.client.post(TAP_PATH, data=body, headers=headers, name=f"{self.scenario} {tap.kind}",
                              catch_response=True) as response:
            answer.status = response.status_code or 0
            if answer.status == 200:
                try:
                    _fill_answer(answer, decode_body(response.content))
                except (msgspec.DecodeError, KeyError, TypeError) as exc:
                    answer.journal_id = None
                    response.failure(f"unreadable answer: {exc}")
            if not outcome_is_expected(answer, FARE_REASONS_ALLOWED):
                response.failure(f"{tap.kind}: got HTTP {answer.status} decision {answer.decision} "
                                 f"reason {answer.reason}, expected {expected_text(tap.kind, FARE_REASONS_ALLOWED)}")
            elif answer.status not in (200, UNKNOWN_DEVICE_STATUS) or (
                    answer.status == UNKNOWN_DEVICE_STATUS and tap.kind != sc.UNKNOWN_DEVICE):
                response.failure(f"HTTP {answer.status}: {(response.text or '')[:200]}")
            else:
                response.success()


def _fill_answer(answer: Answer, decoded: dict) -> None:
    """Copy the gateway's decision for one tap into ``answer``; raise KeyError if a field is missing."""
    answer.decision = decoded["decision"]
    answer.reason = decoded["reason"]
    answer.journal_id = decoded["journal_id"]
    answer.rider_category = decoded.get("rider_category")
    answer.fare_fen = decoded.get("fare_fen")


class BusValidator(DeviceUser):
    scenario = "bus"
    weight = max(1, SPEC.model.user_weights.get("bus", 1))

    def on_start(self) -> None:
        super().on_start()
        self.route = next(r for r in SPEC.model.routes if r.route_id == self.device.route_id)
        self.stop_index = self.state.rng.randrange(len(self.route.stops))
        self.direction = 1
        # Riders who tapped on and will tap off (area-fare routes): (holder, medium, stops left, tap-on time).
        self.on_board: list[tuple[Holder, str, int, float]] = []
        self.offline_stops_left = 0

    @task
    def serve_next_stop(self) -> None:
        timing = SPEC.model.timing
        stop_id = self.route.stops[self.stop_index]
        area = self.route.fare_structure == "area"
        rng = self.state.rng

        if area:
            staying = []
            now = time.monotonic()
            for holder, medium, stops_left, boarded_at in self.on_board:
                # A card tapped again on this validator within the duplicate window would be
                # rejected, so with time compressed a rider stays on until the window has passed.
                if stops_left <= 1 and now - boarded_at >= HOLDER_REUSE_S:
                    self.tap(Place("off", route_id=self.route.route_id, stop_id=stop_id), holder=holder, medium=medium)
                    self.sleep_simulated(timing.boarding_interval_s)
                else:
                    staying.append((holder, medium, stops_left - 1, boarded_at))
            self.on_board = staying

        boardings = poisson(rng, self.route.boardings_mean * self.state.level())
        place = Place("on" if area else "board", route_id=self.route.route_id, stop_id=stop_id)
        for _ in range(boardings):
            tap = self.tap(place)
            if area and tap is not None and tap.holder is not None and tap.kind in sc.VALID_KINDS:
                stops = rng.randint(1, max(1, len(self.route.stops) - 1))
                self.on_board.append((tap.holder, tap.medium, stops, time.monotonic()))
            self.sleep_simulated(timing.boarding_interval_s)

        self._advance()
        self._update_connection(rng)
        self.sleep_simulated(timing.stop_interval_s)

    def _update_connection(self, rng: random.Random) -> None:
        offline = SPEC.model.offline
        if self.queued is not None:
            self.offline_stops_left -= 1
            if self.offline_stops_left <= 0:
                self.upload()
        elif offline.share > 0 and rng.random() < offline.share:
            self.queued = []
            self.offline_stops_left = offline.stops

    def _advance(self) -> None:
        last = len(self.route.stops) - 1
        if not 0 <= self.stop_index + self.direction <= last:
            self.direction = -self.direction
        self.stop_index += self.direction


class _SiteGate(DeviceUser):
    abstract = True

    def on_start(self) -> None:
        super().on_start()
        self.place = Place("entry", site_id=self.device.site_id)


class ScenicGate(_SiteGate):
    scenario = "scenic"
    weight = max(1, SPEC.model.user_weights.get("scenic", 1))

    @task
    def admit_next(self) -> None:
        self.tap(self.place)
        self.sleep_simulated(SPEC.model.timing.gate_interval_s)


class VenueGate(_SiteGate):
    scenario = "venue"
    weight = max(1, SPEC.model.user_weights.get("venue", 1))

    @task
    def admit_next(self) -> None:
        self.tap(self.place)
        self.sleep_simulated(self.state.rng.expovariate(1.0 / SPEC.model.timing.venue_interval_s))
