"""``tapgate admin``: users and tokens from the command line, and serving the API."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time

import aiohttp


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("TAPGATE_")}
    return subprocess.run([sys.executable, "-m", "tapgate", "admin", *args], capture_output=True, text=True,
                          timeout=120, env=environ)


def test_user_and_token_lifecycle(dsn: str) -> None:
    added = run_cli("add-user", "--dsn", dsn, "wang.li", "--role", "operator", "--operator", "yiyuan-bus")
    assert added.returncode == 0, added.stderr
    assert "wang.li (operator, yiyuan-bus)" in added.stdout

    missing = run_cli("add-user", "--dsn", dsn, "zhao", "--role", "operator")
    assert missing.returncode == 1
    assert "operator 角色必须指定运营单位编号" in missing.stderr

    created = run_cli("create-token", "--dsn", dsn, "wang.li", "--expires-days", "30")
    assert created.returncode == 0, created.stderr
    token = created.stdout.splitlines()[0]
    assert token.startswith("tgadm_")

    listing = run_cli("tokens", "--dsn", dsn)
    assert "1 | wang.li |" in listing.stdout
    assert token not in listing.stdout

    revoked = run_cli("revoke-token", "--dsn", dsn, "1")
    assert revoked.returncode == 0, revoked.stderr
    again = run_cli("revoke-token", "--dsn", dsn, "1")
    assert again.returncode == 1
    assert "没有编号为 1 的有效令牌" in again.stderr


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_serve_answers_and_stops_on_sigterm(dsn: str) -> None:
    port = _free_port()
    environ = {k: v for k, v in os.environ.items() if not k.startswith("TAPGATE_")}
    environ["TAPGATE_ADMIN_PORT"] = str(port)
    process = subprocess.Popen([sys.executable, "-m", "tapgate", "admin", "serve", "--dsn", dsn],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environ)
    try:
        deadline = time.monotonic() + 30
        status = None
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline and status is None:
                try:
                    async with session.get(f"http://127.0.0.1:{port}/admin/v1/healthz") as response:
                        status = response.status
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.2)
            async with session.get(f"http://127.0.0.1:{port}/admin/v1/whoami") as response:
                assert response.status == 401
        assert status == 200
    finally:
        process.terminate()
        out, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    assert "admin.stopped" in err
