"""The demo's PostgreSQL (a fresh embedded cluster or a fresh database) and its gateway processes."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
from typing import Iterator

import asyncpg

from gateway import db
from gateway.client import GatewayClient
from gateway.errors import GatewayError

# Name of the database the demo creates afresh on a server given with --dsn.
DEMO_DATABASE = "tapgate_demo"
# File the demo leaves in its output and data directories; only such directories are wiped on a rerun.
MARKER = ".tapgate-demo"
GATEWAY_START_TIMEOUT_S = 90.0
GATEWAY_STOP_TIMEOUT_S = 30.0
_SERVING = re.compile(r"gateway serving on https?://[^\s:]+:(\d+)")


class DemoError(GatewayError, RuntimeError):
    """The demo cannot run as asked (a directory it must not wipe, a gateway that does not start)."""


def prepare_directory(path: pathlib.Path, what_en: str, what_zh: str) -> None:
    """Empty ``path`` if an earlier demo made it, create it if missing, refuse anything else."""
    if path.exists() and any(path.iterdir()):
        if not (path / MARKER).exists():
            raise DemoError(
                f"{what_en} {path} is not empty and was not made by tapgate demo; the demo starts from an empty "
                "directory and will not delete files it did not write",
                f"{what_zh} {path} 不为空，且不是 tapgate demo 生成的；演示需要空目录，不会删除非其生成的文件",
                "choose another directory (--out or --data-dir) or empty this one / 请换一个目录或清空该目录")
        pid_file = path / "postmaster.pid"
        if pid_file.exists():
            _refuse_if_running(pid_file, path)
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / MARKER).write_text("made by tapgate demo; emptied by the next run\n", encoding="utf-8")


def _refuse_if_running(pid_file: pathlib.Path, path: pathlib.Path) -> None:
    try:
        pid = int(pid_file.read_text().splitlines()[0])
        os.kill(pid, 0)
    except (ValueError, IndexError, OSError):
        return
    raise DemoError(f"a PostgreSQL server (pid {pid}) is still running in {path}",
                    f"{path} 中仍有 PostgreSQL 服务器在运行（pid {pid}）",
                    f"stop it first: pg_ctl -D {path} stop / 请先停止它")


@contextlib.contextmanager
def embedded_database(data_dir: pathlib.Path) -> Iterator[str]:
    """Start a fresh embedded PostgreSQL in ``data_dir`` and yield its DSN; stop it on exit."""
    from gateway.pgembed import EmbeddedPostgres

    if data_dir.exists() and any(data_dir.iterdir()):
        prepare_directory(data_dir, "data directory", "数据目录")
        shutil.rmtree(data_dir)
    server = EmbeddedPostgres(data_dir)
    server.start()
    try:
        (data_dir / MARKER).write_text("made by tapgate demo; emptied by the next run\n", encoding="utf-8")
        yield server.dsn
    finally:
        server.stop()


def demo_dsn(dsn: str) -> str:
    """Return ``dsn`` with its database replaced by :data:`DEMO_DATABASE`."""
    parts = urllib.parse.urlsplit(dsn)
    if parts.scheme not in ("postgresql", "postgres"):
        raise DemoError(f"--dsn {db.redact_dsn(dsn)} is not a postgresql:// URL; the demo needs the URL form",
                        f"--dsn {db.redact_dsn(dsn)} 不是 postgresql:// 形式的连接串",
                        "write it as postgresql://user:password@host:port/database")
    return urllib.parse.urlunsplit(parts._replace(path="/" + DEMO_DATABASE))


async def recreate_database(dsn: str) -> str:
    """Drop and create :data:`DEMO_DATABASE` on the server of ``dsn``; return the new database's DSN."""
    conn = await db.connect(dsn)
    try:
        await conn.execute(f"DROP DATABASE IF EXISTS {DEMO_DATABASE} WITH (FORCE)")
        await conn.execute(f"CREATE DATABASE {DEMO_DATABASE}")
    except asyncpg.PostgresError as exc:
        raise DemoError(f"cannot create the database {DEMO_DATABASE} at {db.redact_dsn(dsn)}: {exc}",
                        f"无法在 {db.redact_dsn(dsn)} 上创建数据库 {DEMO_DATABASE}：{exc}",
                        "the role needs the CREATEDB privilege / 该角色需要 CREATEDB 权限") from exc
    finally:
        await conn.close()
    return demo_dsn(dsn)


@dataclasses.dataclass
class GatewayMetrics:
    """Figures from the gateway's ``/metrics`` after the day, summed over its workers."""

    cache_hits: int = 0
    cache_misses: int = 0
    # Upper bounds of the histogram buckets that hold the server-side p50 and p99 of a single tap.
    server_p50_ms: float | None = None
    server_p99_ms: float | None = None

    @property
    def cache_hit_rate(self) -> float | None:
        lookups = self.cache_hits + self.cache_misses
        return self.cache_hits / lookups if lookups else None


def parse_metrics(text: str) -> GatewayMetrics:
    """Read the credential cache counters and the tap latency histogram from Prometheus text."""
    from prometheus_client.parser import text_string_to_metric_families

    metrics = GatewayMetrics()
    buckets: list[tuple[float, float]] = []
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "tapgate_credential_cache_total":
                if sample.labels.get("result") == "hit":
                    metrics.cache_hits = int(sample.value)
                elif sample.labels.get("result") == "miss":
                    metrics.cache_misses = int(sample.value)
            elif sample.name == "tapgate_tap_seconds_bucket":
                buckets.append((float(sample.labels["le"]), sample.value))
    buckets.sort()
    if buckets and buckets[-1][1] > 0:
        total = buckets[-1][1]
        metrics.server_p50_ms = _bucket_bound(buckets, 0.50 * total)
        metrics.server_p99_ms = _bucket_bound(buckets, 0.99 * total)
    return metrics


def _bucket_bound(buckets: list[tuple[float, float]], rank: float) -> float:
    """Return, in milliseconds, the upper bound of the first cumulative bucket holding ``rank`` observations."""
    for bound, count in buckets:
        if count >= rank:
            return bound * 1000
    return buckets[-1][0] * 1000


class GatewayProcess:
    """``tapgate serve`` as a child process: its supervisor and worker processes on a free loopback port."""

    def __init__(self, dsn: str, workers: int, log_path: pathlib.Path, config_file: str | None,
                 environ: dict[str, str]) -> None:
        self.command = [sys.executable, "-m", "tapgate", "serve", "--dsn", dsn, "--host", "127.0.0.1",
                        "--port", "0", "--workers", str(workers)]
        if config_file:
            self.command[3:3] = ["--config", config_file]
        self.log_path = log_path
        self.environ = {**os.environ, **environ}
        self.process: subprocess.Popen[bytes] | None = None
        self.port: int | None = None

    def start(self) -> int:
        """Start the gateway and return its port once ``GET /readyz`` returns 200."""
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT, env=self.environ,
                                            stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + GATEWAY_START_TIMEOUT_S
        while self.port is None:
            if self.process.poll() is not None:
                raise DemoError(f"tapgate serve exited with status {self.process.returncode} before serving; "
                                f"see {self.log_path}",
                                f"tapgate serve 在开始服务前退出，退出码 {self.process.returncode}；请查看 {self.log_path}")
            if time.monotonic() > deadline:
                self.stop()
                raise DemoError(f"tapgate serve did not start within {GATEWAY_START_TIMEOUT_S:.0f} s; "
                                f"see {self.log_path}",
                                f"tapgate serve 未在 {GATEWAY_START_TIMEOUT_S:.0f} 秒内启动；请查看 {self.log_path}")
            match = _SERVING.search(self.log_path.read_text(encoding="utf-8", errors="replace"))
            if match:
                self.port = int(match.group(1))
            else:
                time.sleep(0.1)
        asyncio.run(self._await_ready(deadline))
        return self.port

    def metrics(self) -> GatewayMetrics:
        """Fetch and parse ``GET /metrics``; empty figures if the gateway does not return them."""
        return asyncio.run(self._metrics())

    async def _metrics(self) -> GatewayMetrics:
        assert self.port is not None
        try:
            async with GatewayClient("127.0.0.1", self.port, None, timeout_s=10.0) as client:
                response = await client.request("GET", "/metrics", sign=False)
        except (OSError, TimeoutError):
            return GatewayMetrics()
        if response.status != 200:
            return GatewayMetrics()
        return parse_metrics(response.body.decode("utf-8", errors="replace"))

    async def _await_ready(self, deadline: float) -> None:
        assert self.port is not None
        while True:
            try:
                async with GatewayClient("127.0.0.1", self.port, None, timeout_s=2.0) as client:
                    response = await client.request("GET", "/readyz", sign=False)
                if response.status == 200:
                    return
            except (OSError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise DemoError("the gateway did not become ready in time; see " + str(self.log_path),
                                "网关未能及时就绪，请查看 " + str(self.log_path))
            await asyncio.sleep(0.2)

    def stop(self) -> int | None:
        """Send SIGTERM (orderly stop: taps in flight finished, journal flushed) and return the exit status."""
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(GATEWAY_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            return -signal.SIGKILL
