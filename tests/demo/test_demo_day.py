"""``tapgate demo`` end to end: a small day as a subprocess, then its outputs checked from outside.

The run uses its own embedded PostgreSQL in a temporary data directory. After
it ends, the test starts that PostgreSQL again and verifies the journal's
hash chain and row count itself, so it does not rely on the demo's own checks.
"""

from __future__ import annotations

import asyncio
import csv
import json
import os
import pathlib
import subprocess
import sys

import asyncpg
import pytest

from gateway.journal import verify_chain
from gateway.pgembed import EmbeddedPostgres
from settlement.isofiles import PAIN_001, PAIN_008, validate_file

REPO = pathlib.Path(__file__).resolve().parents[2]
RUN_TIMEOUT_S = 110
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _run_demo(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TAPGATE_LOG_LEVEL": "WARNING"}
    env.pop("TAPGATE_DATABASE_DSN", None)
    return subprocess.run([sys.executable, "-m", "tapgate", "demo", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=RUN_TIMEOUT_S)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory):
    base = tmp_path_factory.mktemp("demo")
    out, data_dir = base / "out", base / "pgdata"
    completed = _run_demo("--holders", "200", "--taps", "700", "--workers", "1", "--seed", "3",
                          "--out", str(out), "--data-dir", str(data_dir))
    summary_path = out / "summary.json"
    summary = json.loads(summary_path.read_text(encoding="utf-8")) if summary_path.exists() else None
    return completed, out, data_dir, summary


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_demo_exits_zero_with_summary(demo_run) -> None:
    completed, _out, _data_dir, summary = demo_run
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "沂源一日演示 / Yiyuan demo day" in completed.stdout
    assert "taps/s" in completed.stdout
    assert "p99" in completed.stdout
    assert "credential cache hit rate" in completed.stdout
    assert "失败 FAIL" not in completed.stdout
    assert summary is not None
    assert summary["ok"] is True
    assert all(check["ok"] for check in summary["checks"])


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_demo_decisions_cover_bad_traffic(demo_run) -> None:
    summary = demo_run[3]
    counts = {(d["decision"], d["reason"]): d["taps"] for d in summary["decisions"]}
    assert sum(counts.values()) == summary["taps"]
    assert counts[("accepted", 0)] > 0.8 * summary["taps"]
    for reason in (5, 6, 9, 40, 42, 43):
        assert counts.get(("rejected", reason), 0) > 0, f"no tap rejected with reason {reason}"
    assert counts.get(("http_401", -1), 0) > 0
    assert not any(d["decision"] == "accepted" and d["reason"] != 0 for d in summary["decisions"])
    assert summary["offline_taps"] > 0
    assert summary["latency_p99_ms"] >= summary["latency_p50_ms"] > 0
    assert summary["server_p99_ms"] >= summary["server_p50_ms"] > 0
    assert 0 < summary["cache_hit_rate"] < 1


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_demo_report_files(demo_run) -> None:
    out = demo_run[1]
    report = (out / "report.html").read_text(encoding="utf-8")
    assert report.count("data:image/png;base64,") == 5
    assert "沂源一日演示" in report
    charts = sorted((out / "charts").glob("*.png"))
    assert [chart.name for chart in charts] == ["decisions.png", "latency.png", "revenue_subsidy.png",
                                                "sample_qr.png", "taps_by_hour.png"]
    for chart in charts:
        assert chart.read_bytes().startswith(PNG_MAGIC), chart.name


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_demo_bank_files_valid(demo_run) -> None:
    out, summary = demo_run[1], demo_run[3]
    day = summary["day"].replace("-", "")
    folder = out / "settlement" / day
    debit_xml = sorted(folder.glob(f"*_{PAIN_008}.xml"))
    credit_xml = sorted(folder.glob(f"*_{PAIN_001}.xml"))
    assert debit_xml and credit_xml
    for path in debit_xml:
        validate_file(path, PAIN_008)
    for path in credit_xml:
        validate_file(path, PAIN_001)

    debit_fen = 0
    for path in folder.glob("*_debits.csv"):
        with open(path, encoding="utf-8", newline="") as file:
            rows = list(csv.DictReader(file))
        debit_fen += sum(int(row["amount_fen"]) for row in rows)
        assert all(row["account_number"].startswith("9999") for row in rows)
    assert debit_fen == summary["settlement"]["debit_fen"]
    assert sorted((out / "settlement" / "subsidy").glob("subsidy_*.csv"))


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_demo_journal_chain_verifies(demo_run) -> None:
    _completed, _out, data_dir, summary = demo_run
    server = EmbeddedPostgres(data_dir)
    server.start()
    try:
        report, rows = asyncio.run(_chain_and_rows(server.dsn))
    finally:
        server.stop()
    assert report.ok, [p.message_en for p in report.problems[:3]]
    acknowledged = summary["taps"] - sum(d["taps"] for d in summary["decisions"] if d["decision"].startswith("http_"))
    assert report.rows_checked == rows == acknowledged
    assert summary["chain"]["rows"] == rows


def test_demo_county_tap_offs_reduce_fares(demo_run) -> None:
    # Settled bus fares are net of tap-off adjustments: a tap-on's maximum fare
    # is corrected by its tap-off, so the operator's fares equal the journal's net.
    _completed, _out, data_dir, summary = demo_run
    server = EmbeddedPostgres(data_dir)
    server.start()
    try:
        adjusted, nets = asyncio.run(_county_figures(server.dsn))
    finally:
        server.stop()
    assert adjusted > 0, "the demo journaled no tap-off with a negative adjustment"
    settled = {row["operator_id"]: row["fare_fen"] for row in summary["revenue"]}
    assert settled == {operator: net for operator, net in nets.items() if operator in settled}
    assert {operator for operator, net in nets.items() if net} <= set(settled)
    assert "yiyuan-bus" in settled


async def _county_figures(dsn: str) -> tuple[int, dict[str, int]]:
    conn = await asyncpg.connect(dsn)
    try:
        adjusted = await conn.fetchval("SELECT count(*) FROM taps WHERE tap_kind = 2 AND adjustment_fen < 0")
        rows = await conn.fetch("SELECT operator_id, sum(fare_fen + adjustment_fen)::bigint AS net FROM taps "
                                "WHERE decision = 1 GROUP BY operator_id")
        return adjusted, {row["operator_id"]: row["net"] for row in rows}
    finally:
        await conn.close()


async def _chain_and_rows(dsn: str):
    conn = await asyncpg.connect(dsn)
    try:
        return await verify_chain(conn), await conn.fetchval("SELECT count(*) FROM taps")
    finally:
        await conn.close()


@pytest.mark.timeout(60)
def test_demo_refuses_foreign_output_dir(tmp_path: pathlib.Path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("not the demo's", encoding="utf-8")
    completed = _run_demo("--out", str(out), "--data-dir", str(tmp_path / "pgdata"))
    assert completed.returncode == 1
    assert "was not made by tapgate demo" in completed.stderr
    assert (out / "notes.txt").exists()
