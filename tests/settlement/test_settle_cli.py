"""The ``tapgate settle`` subcommands as an operator runs them: exit codes and bilingual output."""

from __future__ import annotations

import os
import subprocess
import sys

from .conftest import BANKS_CSV, token


def _settle(dsn, tmp_path, *args):
    env = dict(os.environ, TAPGATE_SETTLEMENT_ACCOUNT_KEY_FILE=str(tmp_path / "account.key"),
               TAPGATE_SETTLEMENT_OUTPUT_DIR=str(tmp_path / "out"), TAPGATE_LOG_LEVEL="WARNING")
    return subprocess.run([sys.executable, "-m", "tapgate", "settle", *args, "--dsn", dsn], env=env,
                          capture_output=True, text=True, timeout=120)


def test_import_accounts_reports_bad_rows(dsn, tmp_path):
    banks = tmp_path / "banks.csv"
    banks.write_text(BANKS_CSV, encoding="utf-8")
    done = _settle(dsn, tmp_path, "import-accounts", str(banks), "--kind", "banks")
    assert done.returncode == 0, done.stderr
    assert "已导入 / imported: 2 / 2" in done.stdout
    assert (tmp_path / "account.key").stat().st_mode & 0o777 == 0o600

    riders = tmp_path / "issuer.csv"
    riders.write_text("account_token,bank_code,account_number\n"
                      f"{token(1).hex()},ICBC,6222000000000001\n{token(2).hex()},ICBC,12\n"
                      "zz,ICBC,34\n", encoding="utf-8")
    done = _settle(dsn, tmp_path, "import-accounts", str(riders))
    assert done.returncode == 1
    assert "第 3 行 / line 3" in done.stderr
    assert "invalid account_number" in done.stderr
    # Line 4 has two problems but is one skipped row.
    assert "2 行有错误，已跳过 / 2 bad rows skipped" in done.stderr


def test_close_day_status_and_empty_run(dsn, tmp_path):
    done = _settle(dsn, tmp_path, "close-day", "2026-12-01")
    assert done.returncode == 0, done.stderr
    assert "已日结 / closed: 2026-12-01" in done.stdout
    again = _settle(dsn, tmp_path, "close-day", "2026-12-01")
    assert "already closed" in again.stdout

    done = _settle(dsn, tmp_path, "run", "2026-12-01")
    assert done.returncode == 0, done.stderr
    assert "扣款 / debits: 0 笔" in done.stdout

    status = _settle(dsn, tmp_path, "status")
    assert "2026-12-01" in status.stdout
    assert "已完成 complete" in status.stdout


def test_run_unclosed_day_fails_with_hint(dsn, tmp_path):
    done = _settle(dsn, tmp_path, "run", "2026-12-02")
    assert done.returncode == 1
    assert "营业日 2026-12-02 尚未日结" in done.stderr
    assert "tapgate settle close-day 2026-12-02" in done.stderr
