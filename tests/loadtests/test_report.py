"""Thresholds and the chart, from CSV files in Locust's layout."""

from __future__ import annotations

import csv
import pathlib

import pytest

from loadtests.report import Thresholds, Totals, draw_chart, evaluate, read_history, read_totals

PERCENTILES = ["50%", "66%", "75%", "80%", "90%", "95%", "98%", "99%", "99.9%", "99.99%", "100%"]
STATS_HEADER = ["Type", "Name", "Request Count", "Failure Count", "Median Response Time", "Average Response Time",
                "Min Response Time", "Max Response Time", "Average Content Size", "Requests/s", "Failures/s",
                *PERCENTILES]
HISTORY_HEADER = ["Timestamp", "User Count", "Type", "Name", "Requests/s", "Failures/s", *PERCENTILES,
                  "Total Request Count", "Total Failure Count", "Total Median Response Time",
                  "Total Average Response Time", "Total Min Response Time", "Total Max Response Time",
                  "Total Average Content Size"]
LIMITS = Thresholds(p95_ms=50, p99_ms=200, error_rate_max=0.001)


def write_csv(path: pathlib.Path, header: list[str], rows: list[list[object]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(header)
        writer.writerows(rows)


def test_totals_read_from_aggregated_row(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "locust_stats.csv"
    write_csv(path, STATS_HEADER, [
        ["POST", "bus valid_qr", 900, 0, 5, 6, 1, 90, 300, 90.0, 0.0, 5, 6, 7, 8, 10, 20, 30, 40, 80, 90, 90],
        ["", "Aggregated", 1000, 2, 5, 6, 1, 95, 300, 100.0, 0.2, 5, 6, 7, 8, 10, 21, 31, 42, 85, 95, 95],
    ])
    totals = read_totals(path)
    assert totals.requests == 1000
    assert totals.failures == 2
    assert totals.p95_ms == 21
    assert totals.p99_ms == 42
    assert totals.error_rate == pytest.approx(0.002)


def test_totals_without_aggregated_row_rejected(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "locust_stats.csv"
    write_csv(path, STATS_HEADER, [])
    with pytest.raises(ValueError, match="no Aggregated row"):
        read_totals(path)


def test_evaluate_names_each_broken_threshold() -> None:
    good = Totals(requests=1000, failures=1, rate_per_s=100, p50_ms=4, p95_ms=50, p99_ms=200, max_ms=300)
    assert evaluate(good, LIMITS) == []
    bad = Totals(requests=1000, failures=2, rate_per_s=100, p50_ms=4, p95_ms=51, p99_ms=201, max_ms=300)
    broken = evaluate(bad, LIMITS)
    assert len(broken) == 3
    assert "p95 latency 51 ms" in broken[0]
    assert "p99 latency 201 ms" in broken[1]
    assert "error rate 0.2000%" in broken[2]


def test_evaluate_fails_run_without_requests() -> None:
    empty = Totals(requests=0, failures=0, rate_per_s=0, p50_ms=0, p95_ms=0, p99_ms=0, max_ms=0)
    assert evaluate(empty, LIMITS) == ["0 requests sent, expected at least 1"]


def test_chart_drawn_from_history(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "locust_stats_history.csv"
    rows = []
    for second in range(10):
        rows.append([1_700_000_000 + second, second + 1, "", "Aggregated", 10.0 * second, 0.0,
                     *(["N/A"] * len(PERCENTILES) if second == 0 else [5, 6, 7, 8, 9, 12, 15, 20, 30, 40, 50]),
                     second * 10, 0, 5, 6, 1, 50, 300])
        rows.append([1_700_000_000 + second, second + 1, "POST", "bus valid_qr", 1.0, 0.0,
                     *([1] * len(PERCENTILES)), 1, 0, 1, 1, 1, 1, 1])
    write_csv(path, HISTORY_HEADER, rows)
    history = read_history(path)
    assert history.elapsed_s == [float(s) for s in range(10)]
    assert history.p99_ms[0] == 0.0
    assert history.p99_ms[1] == 20.0

    chart = tmp_path / "chart.png"
    draw_chart(history, chart, "test", LIMITS)
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
