"""``tapgate devices``, ``tapgate operators`` and ``tapgate serve --help``, run in a subprocess."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import asyncpg


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("TAPGATE_")}
    return subprocess.run([sys.executable, "-m", "tapgate", *args], capture_output=True, text=True,
                          timeout=timeout, env=environ)


def test_serve_help_names_options_and_units() -> None:
    result = run_cli("serve", "--help")
    assert result.returncode == 0
    for option in ("--workers", "--host", "--port", "--tls-cert", "--tls-key", "--dsn"):
        assert option in result.stdout


def test_serve_missing_tls_file_named_before_start(tmp_path) -> None:
    # The DSN points at a closed port: the TLS files must be checked before any connection is tried.
    missing = str(tmp_path / "missing.pem")
    result = run_cli("serve", "--tls-cert", missing, "--tls-key", missing, "--port", "0",
                     "--dsn", "postgresql://127.0.0.1:1/none", timeout=60)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert f"cannot load the TLS certificate '{missing}'" in result.stderr
    assert "无法加载 TLS 证书" in result.stderr


async def test_device_lifecycle_prints_secret_once(dsn: str) -> None:
    added = run_cli("operators", "add", "yiyuan-bus", "--kind", "bus", "--name-zh", "沂源公交",
                    "--name-en", "Yiyuan Bus", "--dsn", dsn)
    assert added.returncode == 0, added.stderr
    device = run_cli("devices", "add", "bus-7-001", "--operator", "yiyuan-bus", "--kind", "validator",
                     "--route", "7", "--dsn", dsn)
    assert device.returncode == 0, device.stderr
    secret_hex = re.search(r"secret \(hex\): ([0-9a-f]{64})", device.stdout).group(1)
    assert secret_hex not in device.stderr

    conn = await asyncpg.connect(dsn)
    try:
        stored = await conn.fetchval("SELECT secret FROM devices WHERE device_id = 'bus-7-001'")
        assert bytes(stored).hex() == secret_hex

        listing = run_cli("devices", "list", "--dsn", dsn)
        assert "bus-7-001" in listing.stdout
        assert secret_hex not in listing.stdout
        # Common options also work before the action.
        assert "bus-7-001" in run_cli("devices", "--dsn", dsn, "list").stdout

        disabled = run_cli("devices", "disable", "bus-7-001", "--dsn", dsn)
        assert disabled.returncode == 0, disabled.stderr
        assert await conn.fetchval("SELECT status FROM devices WHERE device_id = 'bus-7-001'") == "disabled"

        rotated = run_cli("devices", "rotate-secret", "bus-7-001", "--dsn", dsn)
        new_hex = re.search(r"secret \(hex\): ([0-9a-f]{64})", rotated.stdout).group(1)
        assert new_hex != secret_hex
        assert bytes(await conn.fetchval("SELECT secret FROM devices WHERE device_id = 'bus-7-001'")).hex() == new_hex
    finally:
        await conn.close()


def test_device_for_unknown_operator_fails_with_fix(dsn: str) -> None:
    result = run_cli("devices", "add", "gate-x", "--operator", "nobody", "--kind", "gate", "--site", "museum",
                     "--dsn", dsn)
    assert result.returncode == 1
    assert "tapgate operators add" in result.stderr
    assert "找不到运营单位" in result.stderr


def test_validator_without_route_rejected(dsn: str) -> None:
    run_cli("operators", "add", "yiyuan-bus", "--kind", "bus", "--name-zh", "沂源公交", "--name-en", "Yiyuan Bus",
            "--dsn", dsn)
    result = run_cli("devices", "add", "bus-x", "--operator", "yiyuan-bus", "--kind", "validator", "--dsn", dsn)
    assert result.returncode == 1
    assert "--route" in result.stderr
