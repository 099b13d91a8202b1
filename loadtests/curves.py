"""User counts over time for the load shapes, as plain functions of elapsed seconds.

Each simulated user is one device (a bus validator or a gate), so a user
count is the number of devices in service. The shapes in
:mod:`loadtests.shapes` call these functions from Locust; keeping the
arithmetic here lets the tests check it without importing Locust.
"""

from __future__ import annotations

import dataclasses
import math

import msgspec

from loadtests.scenario import ShapeSpec


def ramp_users(spec: ShapeSpec, elapsed_s: float) -> int | None:
    """Rise linearly from 1 to ``users`` over ``ramp_s``, then hold until ``duration_s``."""
    if elapsed_s >= spec.duration_s:
        return None
    if spec.ramp_s <= 0 or elapsed_s >= spec.ramp_s:
        return spec.users
    return max(1, math.ceil(spec.users * elapsed_s / spec.ramp_s))


def soak_users(spec: ShapeSpec, elapsed_s: float) -> int | None:
    """Hold ``users`` for ``duration_s`` after a ramp of ``ramp_s`` (capped at a tenth of the run)."""
    ramp_s = min(spec.ramp_s, spec.duration_s / 10)
    return ramp_users(msgspec.structs.replace(spec, ramp_s=ramp_s), elapsed_s)


def simulated_hour(spec: ShapeSpec, elapsed_s: float) -> float:
    """Return the local hour of the simulated day that ``elapsed_s`` of the peak shape stands for."""
    span = spec.day_end_hour - spec.day_start_hour
    fraction = min(max(elapsed_s / spec.duration_s, 0.0), 1.0)
    return spec.day_start_hour + span * fraction


def profile_at(day_profile: list[float], hour: float) -> float:
    """Interpolate the hourly profile linearly, normalised so the busiest hour is 1.0."""
    top = max(day_profile)
    index = int(hour) % 24
    following = (index + 1) % 24
    weight = hour - math.floor(hour)
    value = day_profile[index] * (1 - weight) + day_profile[following] * weight
    return value / top


def peak_users(spec: ShapeSpec, day_profile: list[float], elapsed_s: float) -> int | None:
    """Follow the day profile (morning and evening peaks) over a simulated day compressed into ``duration_s``."""
    if elapsed_s >= spec.duration_s:
        return None
    level = profile_at(day_profile, simulated_hour(spec, elapsed_s))
    return max(1, round(spec.users * level))


def surge_users(spec: ShapeSpec, elapsed_s: float) -> int | None:
    """Open the gates on a holiday: every user at once, decaying to ``surge_floor`` with the given half-life."""
    if elapsed_s >= spec.duration_s:
        return None
    decay = 0.5 ** (elapsed_s / spec.surge_half_life_s)
    level = spec.surge_floor + (1 - spec.surge_floor) * decay
    return max(1, round(spec.users * level))


def stepped_users(spec: ShapeSpec, step: int) -> int:
    """Return the users of step ``step`` (0-based) of the stepped search."""
    return spec.step_start + step * spec.step_users


def stepped_max_steps(spec: ShapeSpec) -> int:
    """Return how many steps fit into ``duration_s``."""
    return max(1, int(spec.duration_s // spec.step_s))


@dataclasses.dataclass(frozen=True)
class StepResult:
    """What one step of the stepped search measured."""

    step: int
    users: int
    requests: int
    failures: int
    rate_per_s: float
    p99_ms: float

    def sustainable(self, spec: ShapeSpec) -> bool:
        """Return whether the gateway held this step: p99 within the goal and few enough errors."""
        if self.requests == 0:
            return False
        error_rate = self.failures / self.requests
        return self.p99_ms <= spec.step_p99_ms and error_rate <= spec.step_error_rate_max
