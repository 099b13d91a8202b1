"""Pass/fail thresholds from Locust's CSV files, and the chart of rate and latency over time.

Locust writes ``<prefix>_stats.csv``, the totals per request name with an
``Aggregated`` row. It also writes ``<prefix>_stats_history.csv``, one row
per name about every second; with ``--csv-full-history`` its percentiles
cover the last 10 seconds. Times in both are milliseconds.
"""

from __future__ import annotations

import csv
import dataclasses
import pathlib

AGGREGATED = "Aggregated"


@dataclasses.dataclass(frozen=True)
class Thresholds:
    p95_ms: float
    p99_ms: float
    # Failed requests (transport errors, unexpected HTTP status, unexpected decision) over all requests.
    error_rate_max: float
    # Minimum requests for a run to count, because a run that sent nothing has shown nothing.
    requests_min: int = 1


@dataclasses.dataclass(frozen=True)
class Totals:
    requests: int
    failures: int
    rate_per_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float

    @property
    def error_rate(self) -> float:
        return self.failures / self.requests if self.requests else 0.0


def _number(text: str) -> float:
    # Locust writes "N/A" for percentiles of an entry without requests.
    try:
        return float(text)
    except ValueError:
        return 0.0


def read_totals(stats_csv: pathlib.Path) -> Totals:
    """Return the ``Aggregated`` row of a Locust ``_stats.csv`` file."""
    with open(stats_csv, newline="", encoding="utf-8") as file:
        for row in csv.DictReader(file):
            if row["Name"] == AGGREGATED:
                return Totals(requests=int(row["Request Count"]), failures=int(row["Failure Count"]),
                              rate_per_s=_number(row["Requests/s"]), p50_ms=_number(row["50%"]),
                              p95_ms=_number(row["95%"]), p99_ms=_number(row["99%"]),
                              max_ms=_number(row["Max Response Time"]))
    raise ValueError(f"{stats_csv} has no {AGGREGATED} row; did Locust run to the end?")


def evaluate(totals: Totals, thresholds: Thresholds) -> list[str]:
    """Return the thresholds that ``totals`` breaks, as sentences; empty when all hold."""
    broken = []
    if totals.requests < thresholds.requests_min:
        broken.append(f"{totals.requests} requests sent, expected at least {thresholds.requests_min}")
    if totals.p95_ms > thresholds.p95_ms:
        broken.append(f"p95 latency {totals.p95_ms:g} ms is above the limit of {thresholds.p95_ms:g} ms")
    if totals.p99_ms > thresholds.p99_ms:
        broken.append(f"p99 latency {totals.p99_ms:g} ms is above the limit of {thresholds.p99_ms:g} ms")
    if totals.error_rate > thresholds.error_rate_max:
        broken.append(f"error rate {totals.error_rate:.4%} ({totals.failures} of {totals.requests}) "
                      f"is above the limit of {thresholds.error_rate_max:.4%}")
    return broken


@dataclasses.dataclass
class History:
    elapsed_s: list[float] = dataclasses.field(default_factory=list)
    users: list[int] = dataclasses.field(default_factory=list)
    rate_per_s: list[float] = dataclasses.field(default_factory=list)
    failures_per_s: list[float] = dataclasses.field(default_factory=list)
    p50_ms: list[float] = dataclasses.field(default_factory=list)
    p95_ms: list[float] = dataclasses.field(default_factory=list)
    p99_ms: list[float] = dataclasses.field(default_factory=list)


def read_history(history_csv: pathlib.Path) -> History:
    """Return the ``Aggregated`` rows of a ``_stats_history.csv`` file, time measured from the first row."""
    history = History()
    start: float | None = None
    with open(history_csv, newline="", encoding="utf-8") as file:
        for row in csv.DictReader(file):
            if row["Name"] != AGGREGATED:
                continue
            stamp = float(row["Timestamp"])
            start = stamp if start is None else start
            history.elapsed_s.append(stamp - start)
            history.users.append(int(row["User Count"]))
            history.rate_per_s.append(_number(row["Requests/s"]))
            history.failures_per_s.append(_number(row["Failures/s"]))
            history.p50_ms.append(_number(row["50%"]))
            history.p95_ms.append(_number(row["95%"]))
            history.p99_ms.append(_number(row["99%"]))
    return history


def draw_chart(history: History, path: pathlib.Path, title: str, thresholds: Thresholds | None = None) -> None:
    """Draw request rate, latency percentiles and users over time into a PNG file."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    figure, (rate_axis, latency_axis, users_axis) = plt.subplots(
        3, 1, sharex=True, figsize=(10, 8), height_ratios=(3, 3, 1.3), layout="constrained")
    figure.suptitle(title)

    rate_axis.plot(history.elapsed_s, history.rate_per_s, label="requests/s", color="tab:blue")
    rate_axis.plot(history.elapsed_s, history.failures_per_s, label="failures/s", color="tab:red")
    rate_axis.set_ylabel("rate (1/s)")
    rate_axis.legend(loc="upper left")
    rate_axis.grid(alpha=0.3)

    latency_axis.plot(history.elapsed_s, history.p50_ms, label="p50", color="tab:green")
    latency_axis.plot(history.elapsed_s, history.p95_ms, label="p95", color="tab:orange")
    latency_axis.plot(history.elapsed_s, history.p99_ms, label="p99", color="tab:red")
    if thresholds is not None:
        latency_axis.axhline(thresholds.p99_ms, color="tab:red", linestyle="--", linewidth=1, label="p99 limit")
        latency_axis.axhline(thresholds.p95_ms, color="tab:orange", linestyle="--", linewidth=1, label="p95 limit")
    latency_axis.set_ylabel("latency, last 10 s (ms)")
    latency_axis.legend(loc="upper left")
    latency_axis.grid(alpha=0.3)

    users_axis.step(history.elapsed_s, history.users, where="post", color="tab:gray")
    users_axis.yaxis.set_major_locator(MaxNLocator(integer=True))
    users_axis.set_ylabel("devices")
    users_axis.set_xlabel("seconds since start")
    users_axis.grid(alpha=0.3)

    figure.savefig(path, dpi=100)
    plt.close(figure)
