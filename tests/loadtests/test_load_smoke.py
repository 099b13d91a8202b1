"""A few seconds of ``tapgate loadtest`` against a real gateway and PostgreSQL, run as a user runs it.

The run uses the test's own database and a gateway the command starts. Its
traffic model has a large share of bad traffic, so every kind is sent in a
few seconds. Thresholds are loose because the test checks the machinery
(reports, chart, journal comparison, verdict), not the speed of a shared
test machine.
"""

from __future__ import annotations

import importlib.resources
import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

from loadtests import scenario as sc

BAD_SHARES = """[bad]
expired_qr = 0.06
replayed_qr = 0.06
forged_holder = 0.05
forged_issuer = 0.05
lost_card = 0.05
arrears = 0.05
unknown_device = 0.03
"""
OFFLINE = """[offline]
share = 1.0
stops = 1
batch_max = 3
"""


def run_cli(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("TAPGATE_") or k == "TAPGATE_FASTPATH"}
    return subprocess.run([sys.executable, "-m", "tapgate", *args], capture_output=True, text=True,
                          timeout=timeout, env=environ)


@pytest.fixture
def noisy_model(tmp_path: pathlib.Path) -> pathlib.Path:
    text = (importlib.resources.files("loadtests.models") / "yiyuan.toml").read_text(encoding="utf-8")
    text, replaced = re.subn(r"\[bad\]\n(?:[a-z_]+ = [0-9.]+\n)+", BAD_SHARES, text)
    assert replaced == 1
    # Every bus loses its connection after each online stop and uploads at the next one.
    text, replaced = re.subn(r"\[offline\]\n(?:[a-z_]+ = [0-9.]+\n)+", OFFLINE, text)
    assert replaced == 1
    path = tmp_path / "noisy.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_smoke_run_passes_and_writes_reports(dsn: str, tmp_path: pathlib.Path, noisy_model: pathlib.Path) -> None:
    out = tmp_path / "out"
    result = run_cli("loadtest", "--dsn", dsn, "--traffic", str(noisy_model), "--duration", "5", "--users", "6",
                     "--spawn-rate", "6", "--ramp", "1", "--time-scale", "60", "--gateway-workers", "1",
                     "--body-format", "msgpack",
                     "--p95-ms", "2000", "--p99-ms", "5000", "--max-error-rate", "0.02", "--out", str(out))
    assert result.returncode == 0, result.stdout + result.stderr[-4000:]
    assert "结果 / result: 通过 / PASSED" in result.stdout

    for name in ("report.html", "locust_stats.csv", "locust_stats_history.csv", "summary.json", "check.json"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    check = json.loads((out / "check.json").read_text())
    assert check["passed"], check["problems"]
    assert check["acknowledged"] > 0
    assert check["journal_mismatches"] == 0
    assert check["journal_rows"] == check["acknowledged"] + check["journal_rows_unacknowledged"]
    kinds = check["by_kind"]
    assert kinds[sc.VALID_QR]["reasons"].get("0", 0) + kinds[sc.VALID_CARD]["reasons"].get("0", 0) > 0
    assert sum(kinds.get(kind, {}).get("sent", 0) for kind in sc.BAD_KINDS) > 0
    # Offline taps went up in batch requests, and the journal marks them offline (compare checks the flag).
    assert check["acknowledged_offline"] > 0

    summary = json.loads((out / "summary.json").read_text())
    assert summary["passed"]
    # Requests cut short or finishing while Locust stops are in the answer files (status 0 if cut) but
    # may be missing from Locust's final counts; Locust never counts a request the files lack.
    # A batch upload is one request for several taps.
    missing = check["sent"] - summary["totals"]["requests"]
    assert 0 <= missing <= max(10, check["sent"] // 10) + check["sent_offline"]

    # The same run judged with an impossible p99 limit fails and names the threshold.
    strict = run_cli("loadtest", "--dsn", dsn, "--out", str(out), "--judge-only", "--p99-ms", "0.001")
    assert strict.returncode == 1, strict.stdout + strict.stderr
    assert "p99 latency" in strict.stdout
    assert "above the limit of 0.001 ms" in strict.stdout


@pytest.mark.slow
def test_stepped_search_reports_steps(dsn: str, tmp_path: pathlib.Path) -> None:
    out = tmp_path / "stepped"
    result = run_cli("loadtest", "--dsn", dsn, "--scenario", "venue", "--shape", "stepped", "--duration", "18",
                     "--step-start", "2", "--step-users", "2", "--step-seconds", "6", "--step-p99-ms", "5000",
                     "--time-scale", "100", "--gateway-workers", "1", "--p95-ms", "5000", "--p99-ms", "10000",
                     "--max-error-rate", "0.05", "--out", str(out))
    assert result.returncode == 0, result.stdout + result.stderr[-4000:]
    assert "可持续速率 / sustainable rate" in result.stdout

    stepped = json.loads((out / "stepped.json").read_text())
    assert [step["users"] for step in stepped["steps"]] == [2, 4, 6]
    assert all(step["held"] for step in stepped["steps"])
    assert stepped["sustainable_users"] == 6
    assert stepped["sustainable_rate_per_s"] > 0
    assert "last step held" in stepped["stopped_because"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stepped"] == stepped


def test_remote_target_rejected_without_flag(tmp_path: pathlib.Path) -> None:
    result = run_cli("loadtest", "--target", "http://192.0.2.10:8080", "--out", str(tmp_path / "out"),
                     "--data-dir", str(tmp_path / "pg"), timeout=60)
    assert result.returncode == 1
    assert "is not a loopback address" in result.stderr
    assert "--allow-remote" in result.stderr
    assert not (tmp_path / "pg").exists()


def test_installed_script_runs_outside_the_repository(tmp_path: pathlib.Path) -> None:
    # The console script, run from another directory, imports loadtests through the installed package
    # (not the repository on sys.path); the runner must still find its locustfile.
    script = pathlib.Path(sys.executable).parent / "tapgate"
    if not script.exists():
        pytest.skip("no tapgate console script next to this interpreter")
    environ = {k: v for k, v in os.environ.items() if not k.startswith("TAPGATE_") and k != "PYTHONPATH"}
    result = subprocess.run([str(script), "loadtest", "--duration", "-5", "--out", str(tmp_path / "out"),
                             "--data-dir", str(tmp_path / "pg")], capture_output=True, text=True, timeout=60,
                            env=environ, cwd=tmp_path)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "--duration -5.0 is invalid" in result.stderr


def test_prepare_only_writes_run_files(dsn: str, tmp_path: pathlib.Path) -> None:
    out = tmp_path / "run1"
    result = run_cli("loadtest", "--dsn", dsn, "--processes", "3", "--users", "30", "--out", str(out),
                     "--prepare-only", timeout=120)
    assert result.returncode == 0, result.stderr[-4000:]
    spec = sc.read_spec(out / "spec.json")
    assert spec.processes == 3
    assert pathlib.Path(spec.fixture_path) == out / "fixture.json"
    assert "--master --headless --expect-workers 3" in result.stdout
    assert "--csv-full-history" in result.stdout
    assert "--worker --master-host MASTER" in result.stdout
    assert not (out / "locust_stats.csv").exists()


def test_output_directory_of_earlier_run_rejected(dsn: str, tmp_path: pathlib.Path) -> None:
    out = tmp_path / "run1"
    first = run_cli("loadtest", "--dsn", dsn, "--out", str(out), "--prepare-only", timeout=120)
    assert first.returncode == 0, first.stderr[-4000:]
    second = run_cli("loadtest", "--dsn", dsn, "--out", str(out), "--prepare-only", timeout=120)
    assert second.returncode == 1
    assert "already contains a run; choose another --out" in second.stderr
