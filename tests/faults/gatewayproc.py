"""``tapgate serve`` as a child process, for tests that kill its workers or read its stderr.

The supervisor listens on a free loopback port and prints
``... gateway serving on http://127.0.0.1:<port> with N workers`` once every
worker is ready; :meth:`GatewayProcess.start` waits for that line. The
gateway's stderr (its log) goes to a file the test can scan afterwards.
"""

from __future__ import annotations

import asyncio
import os
import pathlib
import re
import signal
import sys
from typing import Any

_SERVING = re.compile(rb"serving on https?://[^:]+:(\d+) with (\d+) workers")


def config_toml(server: dict[str, Any], database: dict[str, Any] | None = None) -> str:
    lines = ["[server]"]
    lines += [f"{key} = {value!r}" if isinstance(value, str) else f"{key} = {str(value).lower()}"
              for key, value in server.items()]
    lines.append("[database]")
    for key, value in (database or {}).items():
        lines.append(f"{key} = {value}")
    return "\n".join(lines) + "\n"


class GatewayProcess:
    """One supervisor with its workers, started and stopped by the test that owns it."""

    def __init__(self, dsn: str, workdir: pathlib.Path, *, workers: int = 2, **server: Any) -> None:
        self.dsn = dsn
        self.workdir = workdir
        self.workers = workers
        settings = {"host": "127.0.0.1", "port": 0, "workers": workers, "refresh_interval_s": 0.5,
                    "request_timeout_s": 5.0, "shutdown_timeout_s": 5.0, "device_rate_per_s": 10000.0,
                    "device_rate_burst": 10000}
        settings.update(server)
        self.config_file = workdir / "gateway.toml"
        self.config_file.write_text(config_toml(settings, {"pool_min": 1, "pool_max": 4, "connect_timeout_s": 2.0}))
        self.stderr_file = workdir / "gateway.stderr"
        self.process: asyncio.subprocess.Process | None = None
        self.port: int | None = None

    async def start(self, timeout_s: float = 60.0) -> int:
        env = dict(os.environ, TAPGATE_LOG_LEVEL="INFO")
        with open(self.stderr_file, "ab") as stderr:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "tapgate", "serve", "--config", str(self.config_file), "--dsn", self.dsn,
                stdout=asyncio.subprocess.PIPE, stderr=stderr, env=env, start_new_session=True)
        assert self.process.stdout is not None
        output = b""
        try:
            async with asyncio.timeout(timeout_s):
                while True:
                    line = await self.process.stdout.readline()
                    if not line:
                        raise RuntimeError(f"tapgate serve exited with {await self.process.wait()}: "
                                           f"{output.decode(errors='replace')}\n{self.stderr_text()[-3000:]}")
                    output += line
                    match = _SERVING.search(line)
                    if match:
                        self.port = int(match.group(1))
                        return self.port
        except TimeoutError:
            await self.stop()
            raise

    def stderr_text(self) -> str:
        return self.stderr_file.read_text(encoding="utf-8", errors="replace") if self.stderr_file.exists() else ""

    def worker_pids(self) -> list[int]:
        """PIDs of the live worker processes (the supervisor's children, less multiprocessing's helpers)."""
        assert self.process is not None
        pids = []
        for entry in pathlib.Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            # Field 4 of /proc/PID/stat is the parent PID; the command name in field 2 may hold spaces.
            fields = stat.rsplit(")", 1)[1].split()
            state, parent = fields[0], int(fields[1])
            if parent == self.process.pid and state != "Z" and b"spawn_main" in cmdline \
                    and b"resource_tracker" not in cmdline:
                pids.append(int(entry.name))
        return sorted(pids)

    @staticmethod
    def started_ticks(pid: int) -> int:
        """Start time of ``pid`` in clock ticks since boot (field 22 of /proc/PID/stat)."""
        fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[19])

    async def wait_for_workers(self, timeout_s: float = 30.0) -> list[int]:
        """Wait until all workers run again (after a kill) and return their PIDs."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while True:
            pids = self.worker_pids()
            if len(pids) == self.workers:
                return pids
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"only {len(pids)} of {self.workers} workers after {timeout_s} s")
            await asyncio.sleep(0.1)

    async def stop(self, timeout_s: float = 20.0) -> int | None:
        """SIGTERM the supervisor (it drains its workers); SIGKILL the group if it takes too long."""
        if self.process is None or self.process.returncode is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(self.process.wait(), timeout_s)
        except TimeoutError:
            os.killpg(self.process.pid, signal.SIGKILL)
            return await self.process.wait()
