"""The ``tapgate`` command, run as a user runs it: in a subprocess."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import asyncpg
import pytest

from gateway.pgembed import EmbeddedPostgres


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("TAPGATE_")}
    environ.update(env or {})
    return subprocess.run([sys.executable, "-m", "tapgate", *args], capture_output=True, text=True,
                          timeout=timeout, env=environ)


def test_help_lists_subcommands() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    for command in ("migrate", "db", "demo"):
        assert command in result.stdout


def test_migrate_help_names_units() -> None:
    result = run_cli("migrate", "--help")
    assert result.returncode == 0
    assert "--dsn" in result.stdout
    assert "--data-dir" in result.stdout


async def test_migrate_external_server_by_dsn(embedded_server: EmbeddedPostgres, tmp_path: pathlib.Path) -> None:
    # The server is started by the test, so for the command it is an external one.
    conn = await asyncpg.connect(embedded_server.dsn.rsplit("/", 1)[0] + "/postgres")
    try:
        await conn.execute("DROP DATABASE IF EXISTS cli_external WITH (FORCE)")
        await conn.execute("CREATE DATABASE cli_external")
    finally:
        await conn.close()
    dsn = embedded_server.dsn.rsplit("/", 1)[0] + "/cli_external"
    unused_dir = tmp_path / "must-not-exist"

    first = run_cli("migrate", "--dsn", dsn, "--data-dir", str(unused_dir))
    assert first.returncode == 0, first.stderr
    assert "gateway/0001_core.sql" in first.stdout
    assert not unused_dir.exists(), "an embedded server was started although a DSN was given"

    second = run_cli("migrate", env={"TAPGATE_DATABASE_DSN": dsn})
    assert second.returncode == 0, second.stderr
    assert "nothing to apply" in second.stdout

    check = run_cli("migrate", "--check", "--dsn", dsn)
    assert check.returncode == 0, check.stderr


def test_migrate_embedded_data_dir(tmp_path: pathlib.Path) -> None:
    data_dir = tmp_path / "pgdata"
    result = run_cli("migrate", "--data-dir", str(data_dir))
    assert result.returncode == 0, result.stderr
    assert "gateway/0001_core.sql" in result.stdout
    assert (data_dir / "PG_VERSION").exists()
    # The command stops the server it started.
    assert not (data_dir / "postmaster.pid").exists()


def test_unreachable_dsn_is_clear_error() -> None:
    result = run_cli("migrate", "--dsn", "postgresql://postgres:secret@127.0.0.1:1/none", timeout=60)
    assert result.returncode == 1
    assert "cannot connect to PostgreSQL at postgresql://postgres:***@127.0.0.1:1/none" in result.stderr
    assert "secret" not in result.stderr


def test_invalid_config_value_exit_status(tmp_path: pathlib.Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[server]\nworkers = -1\n")
    result = run_cli("migrate", "--config", str(bad))
    assert result.returncode == 1
    assert "$.server.workers = -1" in result.stderr


@pytest.mark.parametrize(("argv", "chinese", "english"), [
    (["no-such-command"], "tapgate: 错误：参数 COMMAND：无效的选项 'no-such-command'（可选：",
     "tapgate: error: argument COMMAND: invalid choice: 'no-such-command'"),
    (["migrate", "--log-level", "LOUD"], "tapgate migrate: 错误：参数 --log-level：无效的选项 'LOUD'",
     "tapgate migrate: error: argument --log-level: invalid choice: 'LOUD'"),
    (["devices", "add"], "tapgate devices add: 错误：缺少必需的参数：device_id, --operator, --kind",
     "tapgate devices add: error: the following arguments are required: device_id, --operator, --kind"),
    (["serve", "--workers"], "tapgate serve: 错误：参数 --workers：需要一个值",
     "tapgate serve: error: argument --workers: expected one argument"),
    (["serve", "--workers", "many"], "tapgate serve: 错误：参数 --workers：'many' 不是有效的 int 值",
     "tapgate serve: error: argument --workers: invalid int value: 'many'"),
    (["--bogus"], "tapgate: 错误：无法识别的参数：--bogus", "tapgate: error: unrecognized arguments: --bogus"),
    (["-h=x"], "tapgate: 错误：参数 -h/--help：不接受值 'x'\n",
     "tapgate: error: argument -h/--help: ignored explicit argument 'x'\n"),
    # The project's own type checks: each language on its own line.
    (["settle", "close-day", "2026-13-01"],
     "tapgate settle close-day: 错误：参数 day：日期 '2026-13-01' 无效，应为 YYYY-MM-DD\n",
     "tapgate settle close-day: error: argument day: invalid day '2026-13-01': expected YYYY-MM-DD\n"),
    (["demo", "--holders", "-5"], "tapgate demo: 错误：参数 --holders：应为不小于 100 的整数，实际为 '-5'\n",
     "tapgate demo: error: argument --holders: expected a whole number of at least 100, got '-5'\n"),
])
def test_usage_errors_bilingual(argv: list[str], chinese: str, english: str) -> None:
    result = run_cli(*argv)
    assert result.returncode == 2
    assert chinese in result.stderr
    assert english in result.stderr


def test_common_option_before_subcommand_kept(tmp_path: pathlib.Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[server]\nworkers = -1\n")
    before = run_cli("--config", str(bad), "migrate")
    after = run_cli("migrate", "--config", str(bad))
    assert before.returncode == 1
    assert "$.server.workers = -1" in before.stderr
    assert after.returncode == 1


def test_settle_takes_common_options_first() -> None:
    result = run_cli("settle", "--dsn", "postgresql://postgres@127.0.0.1:1/none", "status", timeout=60)
    assert result.returncode == 1, result.stderr
    assert "cannot connect to PostgreSQL at postgresql://postgres@127.0.0.1:1/none" in result.stderr


def test_loadtest_error_rate_above_one_rejected() -> None:
    result = run_cli("loadtest", "--max-error-rate", "2", "--prepare-only")
    assert result.returncode == 2
    assert "invalid ratio '2': expected a number from 0 to 1" in result.stderr
