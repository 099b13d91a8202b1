"""One headless load test from start to verdict, as ``tapgate loadtest`` runs it.

Steps: provision the fixture into the gateway's database, start a local
gateway (``tapgate serve``) unless a target URL is given, run Locust in a
subprocess bounded in time, stop the gateway so its journal is flushed,
compare the answers with the journal, check the thresholds, draw the chart
and write ``summary.json``.

Locust always runs in its own processes: it monkey-patches the standard
library with gevent, which must never happen to an asyncio process.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import json
import logging
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import msgspec

from gateway.errors import ConfigError, GatewayError
from gateway.logs import log_event
from loadtests import check, fixture, report
from loadtests import scenario as sc

log = logging.getLogger(__name__)

# From this module's own path: under an editable install made before loadtests/__init__.py existed,
# ``loadtests`` imports as a namespace package whose __file__ is None.
LOCUSTFILE = pathlib.Path(__file__).resolve().parent / "locustfile.py"
USER_CLASSES = {"bus": "BusValidator", "scenic": "ScenicGate", "venue": "VenueGate"}
# Seconds given to Locust beyond the shape's duration to start, stop its users and write reports.
LOCUST_GRACE_S = 60.0
GATEWAY_START_TIMEOUT_S = 90.0
GATEWAY_STOP_TIMEOUT_S = 30.0
# Seconds to wait after provisioning into a running gateway's database, so its
# refresh loop (server.refresh_interval_s, 1 s by default) loads the new devices, key and deny list.
REFRESH_WAIT_S = 3.0


class LoadTestError(GatewayError, RuntimeError):
    """The load test could not run: the gateway did not start, Locust failed, a report is missing."""


@dataclasses.dataclass
class Options:
    """Everything ``tapgate loadtest`` decides before the run."""

    out_dir: pathlib.Path
    model: sc.TrafficModel
    shape: sc.ShapeSpec
    scenarios: list[str]
    thresholds: report.Thresholds
    target: str | None = None
    allow_remote: bool = False
    processes: int = 1
    gateway_workers: int | None = None
    config_path: str | None = None
    fixture_path: pathlib.Path | None = None
    rules_path: str | None = None
    code_lifetime_s: int = 60
    clock_skew_s: int = 30
    device_rate_per_s: float = 50.0
    body_format: str = "json"
    seed: int | None = None


def check_target(url: str, allow_remote: bool) -> str:
    """Return ``url`` without a trailing slash; raise unless its host is a loopback address or allowed."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"invalid target {url!r}: expected http://HOST:PORT or https://HOST:PORT",
                          f"目标地址 {url!r} 无效：应为 http://主机:端口 或 https://主机:端口")
    host = parts.hostname
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback and not allow_remote:
        raise ConfigError(f"target host {host!r} is not a loopback address; a load test sends heavy traffic, "
                          f"so pass --allow-remote to aim it at a staging gateway on purpose",
                          f"目标主机 {host!r} 不是本机回环地址；负载测试流量很大，如确需压测预发布网关请加 --allow-remote")
    return url.rstrip("/")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_ready(url: str, process: subprocess.Popen | None, timeout_s: float) -> None:
    """Poll ``url``/readyz until it returns HTTP 200; raise if the process exits or time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise LoadTestError(f"the gateway exited with status {process.returncode} before it was ready",
                                f"网关在就绪前退出，状态码 {process.returncode}",
                                "see gateway.log in the output directory / 请查看输出目录中的 gateway.log")
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise LoadTestError(f"the gateway at {url} was not ready after {timeout_s:g} s",
                        f"网关 {url} 在 {timeout_s:g} 秒内未就绪")


def start_gateway(options: Options, dsn: str) -> tuple[subprocess.Popen, str]:
    """Start ``tapgate serve`` on a free loopback port against ``dsn``; return it and its URL."""
    port = free_port()
    command = [sys.executable, "-m", "tapgate", "serve", "--dsn", dsn, "--host", "127.0.0.1", "--port", str(port)]
    if options.config_path:
        command += ["--config", options.config_path]
    if options.gateway_workers is not None:
        command += ["--workers", str(options.gateway_workers)]
    log_file = open(options.out_dir / "gateway.log", "ab")  # noqa: SIM115 (closed by the child's exit)
    process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    log_file.close()
    url = f"http://127.0.0.1:{port}"
    log_event(log, logging.INFO, "loadtest.gateway_starting", pid=process.pid, url=url)
    try:
        wait_ready(url, process, GATEWAY_START_TIMEOUT_S)
    except LoadTestError:
        stop_process(process, GATEWAY_STOP_TIMEOUT_S)
        raise
    return process, url


def stop_process(process: subprocess.Popen, timeout_s: float) -> int:
    """Send SIGTERM, wait up to ``timeout_s``, then SIGKILL; return the exit status."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            log_event(log, logging.WARNING, "loadtest.kill", pid=process.pid, timeout_s=timeout_s)
            process.kill()
            process.wait()
    return process.returncode


def build_spec(options: Options, fixture_path: pathlib.Path) -> sc.RunSpec:
    return sc.RunSpec(model=options.model, shape=options.shape, scenarios=options.scenarios,
                      fixture_path=str(fixture_path), answers_dir=str(options.out_dir / "answers"),
                      out_dir=str(options.out_dir), processes=options.processes,
                      code_lifetime_s=options.code_lifetime_s, clock_skew_s=options.clock_skew_s,
                      device_rate_per_s=options.device_rate_per_s, body_format=options.body_format,
                      started_ms=time.time_ns() // 1_000_000)


def locust_command(options: Options, url: str) -> list[str]:
    """Return the Locust command line for a headless run of the chosen user classes."""
    command = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--host", url,
               # Full history makes the history's percentiles cover the last 10 s instead of the whole run.
               "--csv", str(options.out_dir / "locust"), "--csv-full-history",
               "--html", str(options.out_dir / "report.html"),
               "--stop-timeout", "5", "--exit-code-on-error", "0", "--only-summary"]
    if options.processes > 1:
        command += ["--processes", str(options.processes)]
    return command + [USER_CLASSES[name] for name in options.scenarios]


def run_locust(options: Options, url: str, spec_path: pathlib.Path) -> None:
    """Run Locust to the end of its shape, bounded by the shape's duration plus a grace period."""
    env = dict(os.environ, **{sc.SPEC_ENV: str(spec_path)})
    timeout_s = options.shape.duration_s + LOCUST_GRACE_S
    with open(options.out_dir / "locust.log", "wb") as log_file:
        process = subprocess.Popen(locust_command(options, url), stdout=log_file, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        try:
            status = process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            # The whole session: with --processes, Locust's forked workers too.
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            raise LoadTestError(f"Locust did not finish within {timeout_s:g} s and was killed",
                                f"Locust 未在 {timeout_s:g} 秒内结束，已被终止",
                                "see locust.log in the output directory / 请查看输出目录中的 locust.log") from None
    if status != 0:
        raise LoadTestError(f"Locust exited with status {status}", f"Locust 退出，状态码 {status}",
                            "see locust.log in the output directory / 请查看输出目录中的 locust.log")


def prepare(options: Options, dsn: str) -> tuple[fixture.Fixture, pathlib.Path, pathlib.Path]:
    """Provision (or reuse) the fixture and write the run specification; return both paths."""
    spec_path = options.out_dir / "spec.json"
    if spec_path.exists():
        # Old answer files there would be checked against this run's journal rows.
        raise LoadTestError(f"the output directory {options.out_dir} already contains a run; choose another --out",
                            f"输出目录 {options.out_dir} 中已有一次运行的结果，请另选 --out")
    options.out_dir.mkdir(parents=True, exist_ok=True)
    if options.fixture_path is not None:
        fixture_path = options.fixture_path
        run_fixture = fixture.read_fixture(fixture_path)
    else:
        fixture_path = options.out_dir / "fixture.json"
        needed = devices_needed(options)
        run_fixture = asyncio.run(fixture.provision(dsn, options.model, fixture_path, options.out_dir / "issuer.key",
                                                    seed=options.seed, devices_min=needed,
                                                    rules_path=options.rules_path))
    sc.write_spec(build_spec(options, fixture_path), spec_path)
    return run_fixture, fixture_path, spec_path


def devices_needed(options: Options) -> dict[str, int]:
    """Return the devices to provision per user class so every user finds a free one.

    Locust splits users between classes by weight. Each class gets a margin
    of half again plus two per process, because devices are split between
    processes as evenly as users are.
    """
    weights = {name: options.model.user_weights.get(name, 1) for name in options.scenarios}
    total = sum(weights.values()) or 1
    users = options.shape.users
    if options.shape.name == "stepped":
        users = max(users, options.shape.step_start + options.shape.step_users
                    * (int(options.shape.duration_s // options.shape.step_s) + 1))
    return {name: int(users * weight / total * 1.5) + 2 * options.processes for name, weight in weights.items()}


def run(options: Options, dsn: str) -> int:
    """Run the whole load test against ``dsn``'s gateway; return 0 if every threshold held, else 1."""
    run_fixture, _, spec_path = prepare(options, dsn)
    gateway = None
    try:
        if options.target is None:
            gateway, url = start_gateway(options, dsn)
        else:
            url = check_target(options.target, options.allow_remote)
            wait_ready(url, None, 10.0)
            time.sleep(REFRESH_WAIT_S)
        run_locust(options, url, spec_path)
    finally:
        if gateway is not None:
            status = stop_process(gateway, GATEWAY_STOP_TIMEOUT_S)
            log_event(log, logging.INFO, "loadtest.gateway_stopped", status=status)
    return judge(options, dsn, run_fixture)


def judge_directory(options: Options, dsn: str) -> int:
    """Judge a run whose files are already in ``options.out_dir`` (a distributed run, after the fact).

    The traffic model, shape and fixture come from the directory's
    ``spec.json``; thresholds come from ``options``.
    """
    spec_path = options.out_dir / "spec.json"
    if not spec_path.exists():
        raise LoadTestError(f"{spec_path} not found; pass the --out of `tapgate loadtest --prepare-only`",
                            f"找不到 {spec_path}，请指定 --prepare-only 时使用的 --out 目录")
    spec = sc.read_spec(spec_path)
    options = dataclasses.replace(options, model=spec.model, shape=spec.shape, scenarios=spec.scenarios)
    return judge(options, dsn, fixture.read_fixture(spec.fixture_path))


def judge(options: Options, dsn: str, run_fixture: fixture.Fixture) -> int:
    """Check correctness and thresholds, draw the chart, write ``summary.json``; return the exit status."""
    out = options.out_dir
    since_ms = sc.read_spec(out / "spec.json").started_ms
    correctness = asyncio.run(check.check_run(dsn, out / "answers", run_fixture, options.model.fare_reasons_allowed,
                                              since_ms=since_ms))
    (out / "check.json").write_bytes(msgspec.json.format(msgspec.json.encode(correctness)))

    # NOTE: with several Locust processes these totals can miss the workers' last statistics
    # report (about 3 % of a 30 s run was seen missing); the correctness check reads every answer.
    totals = report.read_totals(out / "locust_stats.csv")
    broken = report.evaluate(totals, options.thresholds)
    if not correctness.passed:
        broken.append(f"correctness check failed: {correctness.journal_mismatches} journal mismatches, "
                      f"{correctness.wrong_outcomes} wrong outcomes, {correctness.journal_rows_never_sent} "
                      f"journal rows never sent, {correctness.unknown_device_rows} rows of unknown devices "
                      f"(see check.json)")
    shape = options.shape
    devices = (f"{shape.step_start} devices + {shape.step_users} per {shape.step_s:g} s step"
               if shape.name == "stepped" else f"{shape.users} devices")
    title = (f"tapgate load test: {'+'.join(options.scenarios)}, {shape.name} shape, {devices}, "
             f"{shape.duration_s:g} s")
    report.draw_chart(report.read_history(out / "locust_stats_history.csv"), out / "chart.png", title,
                      options.thresholds)

    summary = {
        "passed": not broken,
        "broken": broken,
        "totals": dataclasses.asdict(totals) | {"error_rate": totals.error_rate},
        "thresholds": dataclasses.asdict(options.thresholds),
        "correctness": {"passed": correctness.passed, "sent": correctness.sent,
                        "acknowledged": correctness.acknowledged, "journal_rows": correctness.journal_rows,
                        "sent_offline": correctness.sent_offline,
                        "acknowledged_offline": correctness.acknowledged_offline,
                        "wrong_outcomes": correctness.wrong_outcomes,
                        "journal_mismatches": correctness.journal_mismatches},
    }
    stepped = out / sc.STEPPED_RESULT
    if stepped.exists():
        summary["stepped"] = json.loads(stepped.read_text(encoding="utf-8"))
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    print_summary(summary, out)
    return 0 if not broken else 1


def print_summary(summary: dict, out: pathlib.Path) -> None:
    totals = summary["totals"]
    correctness = summary["correctness"]
    print(f"请求 / requests: {totals['requests']}  速率 / rate: {totals['rate_per_s']:.1f}/s  "
          f"p50 {totals['p50_ms']:g} ms  p95 {totals['p95_ms']:g} ms  p99 {totals['p99_ms']:g} ms  "
          f"错误率 / error rate: {totals['error_rate']:.4%}")
    print(f"正确性 / correctness: {'通过 / passed' if correctness['passed'] else '未通过 / FAILED'}  "
          f"已确认 / acknowledged: {correctness['acknowledged']}  流水行 / journal rows: {correctness['journal_rows']}  "
          f"离线批量上传 / offline uploads: {correctness['acknowledged_offline']} / {correctness['sent_offline']}")
    if "stepped" in summary:
        stepped = summary["stepped"]
        print(f"可持续速率 / sustainable rate at p99 <= {stepped['p99_goal_ms']:g} ms: "
              f"{stepped['sustainable_rate_per_s']}/s ({stepped['sustainable_users']} devices); "
              f"{stepped['stopped_because']}")
    for sentence in summary["broken"]:
        print(f"未达标 / threshold broken: {sentence}")
    verdict = "通过 / PASSED" if summary["passed"] else "未通过 / FAILED"
    print(f"结果 / result: {verdict}  报告 / reports: {out}")
