"""Locust load shapes: ramp, peak, soak, surge and the stepped search for the highest sustainable rate.

Imports Locust, so only Locust processes import this module. The arithmetic
lives in :mod:`loadtests.curves`. The locustfile exposes exactly one of these
classes, the one the run specification names, because Locust uses the first
shape class it finds.
"""

from __future__ import annotations

import json
import logging
import pathlib
import time

from locust import LoadTestShape
from locust.stats import calculate_response_time_percentile

from gateway.logs import log_event
from loadtests import curves
from loadtests.scenario import STEPPED_RESULT, RunSpec

log = logging.getLogger(__name__)


class SpecShape(LoadTestShape):
    """Base class of the shapes, bound to the run specification by :func:`shape_for`."""

    abstract = True
    spec: RunSpec

    def _users(self, elapsed_s: float) -> int | None:
        raise NotImplementedError

    def tick(self) -> tuple[int, float] | None:
        users = self._users(self.get_run_time())
        if users is None:
            return None
        return users, self.spec.shape.spawn_rate


class RampShape(SpecShape):
    def _users(self, elapsed_s: float) -> int | None:
        return curves.ramp_users(self.spec.shape, elapsed_s)


class PeakShape(SpecShape):
    def _users(self, elapsed_s: float) -> int | None:
        return curves.peak_users(self.spec.shape, self.spec.model.day_profile, elapsed_s)


class SoakShape(SpecShape):
    def _users(self, elapsed_s: float) -> int | None:
        return curves.soak_users(self.spec.shape, elapsed_s)


class SurgeShape(SpecShape):
    def _users(self, elapsed_s: float) -> int | None:
        return curves.surge_users(self.spec.shape, elapsed_s)


class SteppedShape(SpecShape):
    """Add users step by step until a step's p99 or error rate breaks the goal.

    Each step's measurement leaves out its first third, while new users start
    and connect. The highest rate of a step that held is written to
    ``stepped.json`` in the output directory after every step, so a run cut
    short still leaves its result.
    """

    def __init__(self) -> None:
        super().__init__()
        self._step = -1
        self._mark: tuple[float, int, int, dict[int, int]] | None = None
        self._results: list[curves.StepResult] = []
        self._stopped_because = ""

    def _snapshot(self) -> tuple[float, int, int, dict[int, int]]:
        total = self.runner.stats.total
        return time.monotonic(), total.num_requests, total.num_failures, dict(total.response_times)

    def _measure(self, step: int) -> curves.StepResult:
        assert self._mark is not None
        start, requests0, failures0, times0 = self._mark
        end, requests1, failures1, times1 = self._snapshot()
        window = {ms: count - times0.get(ms, 0) for ms, count in times1.items() if count > times0.get(ms, 0)}
        requests = requests1 - requests0
        p99 = calculate_response_time_percentile(window, requests, 0.99) if requests else 0
        return curves.StepResult(step=step, users=curves.stepped_users(self.spec.shape, step), requests=requests,
                                 failures=failures1 - failures0, rate_per_s=requests / max(end - start, 1e-9),
                                 p99_ms=float(p99))

    def tick(self) -> tuple[int, float] | None:
        shape = self.spec.shape
        elapsed = self.get_run_time()
        step = int(elapsed // shape.step_s)
        into_step = elapsed - step * shape.step_s

        if self._mark is not None and (step != self._step or step >= curves.stepped_max_steps(shape)):
            result = self._measure(self._step)
            self._results.append(result)
            self._mark = None
            held = result.sustainable(shape)
            log_event(log, logging.INFO, "loadtest.step", step=result.step, users=result.users,
                      rate_per_s=round(result.rate_per_s, 1), p99_ms=result.p99_ms, failures=result.failures,
                      held=held)
            if not held:
                self._stopped_because = (f"step {result.step} ({result.users} users) broke the goal: "
                                         f"p99 {result.p99_ms:g} ms, {result.failures} failures")
            self._write()
            if not held:
                return None
        if step >= curves.stepped_max_steps(shape):
            self._stopped_because = self._stopped_because or "the last step held; raise --duration or --step-users"
            self._write()
            return None

        if step != self._step:
            self._step = step
        if self._mark is None and into_step >= shape.step_s / 3:
            self._mark = self._snapshot()
        return curves.stepped_users(shape, step), shape.spawn_rate

    def _write(self) -> None:
        shape = self.spec.shape
        held = [r for r in self._results if r.sustainable(shape)]
        best = max(held, key=lambda r: r.rate_per_s, default=None)
        document = {
            "p99_goal_ms": shape.step_p99_ms,
            "error_rate_max": shape.step_error_rate_max,
            "sustainable_rate_per_s": round(best.rate_per_s, 1) if best else None,
            "sustainable_users": best.users if best else None,
            "stopped_because": self._stopped_because,
            "steps": [{"step": r.step, "users": r.users, "requests": r.requests, "failures": r.failures,
                       "rate_per_s": round(r.rate_per_s, 1), "p99_ms": r.p99_ms,
                       "held": r.sustainable(shape)} for r in self._results],
        }
        path = pathlib.Path(self.spec.out_dir) / STEPPED_RESULT
        path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")


SHAPES: dict[str, type[SpecShape]] = {
    "ramp": RampShape, "peak": PeakShape, "soak": SoakShape, "surge": SurgeShape, "stepped": SteppedShape,
}


def shape_for(spec: RunSpec) -> type[SpecShape]:
    """Return the shape class the specification names, bound to it."""
    base = SHAPES[spec.shape.name]
    return type(base.__name__, (base,), {"spec": spec, "abstract": False})
