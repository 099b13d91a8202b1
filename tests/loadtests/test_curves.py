"""The load shapes' user counts over time, without Locust."""

from __future__ import annotations

import msgspec
import pytest

from loadtests import curves
from loadtests.scenario import ShapeSpec, TrafficModel

DAY = TrafficModel(name="t", operators=[]).day_profile


def test_ramp_rises_holds_and_ends() -> None:
    spec = ShapeSpec(name="ramp", duration_s=60, users=20, ramp_s=10)
    assert curves.ramp_users(spec, 0) == 1
    assert curves.ramp_users(spec, 5) == 10
    assert curves.ramp_users(spec, 10) == 20
    assert curves.ramp_users(spec, 59.9) == 20
    assert curves.ramp_users(spec, 60) is None


def test_soak_ramp_capped_at_tenth() -> None:
    spec = ShapeSpec(name="soak", duration_s=100, users=10, ramp_s=60)
    assert curves.soak_users(spec, 10) == 10
    assert curves.soak_users(spec, 5) == 5
    assert curves.soak_users(spec, 100) is None


def test_peak_follows_morning_and_evening_peaks() -> None:
    spec = ShapeSpec(name="peak", duration_s=180, users=50, day_start_hour=5, day_end_hour=23)
    # 180 s for 18 simulated hours: 10 s per hour.
    assert curves.simulated_hour(spec, 20) == pytest.approx(7.0)
    morning = curves.peak_users(spec, DAY, 20)
    midday = curves.peak_users(spec, DAY, 85)
    evening = curves.peak_users(spec, DAY, 120)
    late = curves.peak_users(spec, DAY, 175)
    assert morning == 50
    assert evening is not None and evening > midday
    assert midday is not None and midday < morning
    assert late is not None and late < midday
    assert curves.peak_users(spec, DAY, 180) is None


def test_profile_interpolates_between_hours() -> None:
    profile = [0.0] * 24
    profile[8] = 1.0
    assert curves.profile_at(profile, 7.5) == pytest.approx(0.5)
    assert curves.profile_at(profile, 8.0) == pytest.approx(1.0)


def test_surge_starts_full_and_decays_to_floor() -> None:
    spec = ShapeSpec(name="surge", duration_s=120, users=40, surge_floor=0.25, surge_half_life_s=10)
    assert curves.surge_users(spec, 0) == 40
    assert curves.surge_users(spec, 10) == round(40 * (0.25 + 0.75 * 0.5))
    assert curves.surge_users(spec, 119) == 10
    assert curves.surge_users(spec, 120) is None


def test_stepped_users_and_steps() -> None:
    spec = ShapeSpec(name="stepped", duration_s=60, step_start=4, step_users=3, step_s=15)
    assert [curves.stepped_users(spec, step) for step in range(4)] == [4, 7, 10, 13]
    assert curves.stepped_max_steps(spec) == 4


def test_step_sustainable_needs_p99_and_errors() -> None:
    spec = msgspec.structs.replace(ShapeSpec(), step_p99_ms=100, step_error_rate_max=0.01)
    held = curves.StepResult(step=0, users=5, requests=1000, failures=10, rate_per_s=100, p99_ms=100)
    slow = curves.StepResult(step=1, users=10, requests=1000, failures=0, rate_per_s=190, p99_ms=101)
    failing = curves.StepResult(step=2, users=15, requests=1000, failures=11, rate_per_s=250, p99_ms=20)
    empty = curves.StepResult(step=3, users=20, requests=0, failures=0, rate_per_s=0, p99_ms=0)
    assert held.sustainable(spec)
    assert not slow.sustainable(spec)
    assert not failing.sustainable(spec)
    assert not empty.sustainable(spec)
