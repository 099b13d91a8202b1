"""``tapgate demo`` from start to end: database, provisioning, gateway, traffic, settlement, report.

Steps, each through the product's own interfaces:

1. a fresh PostgreSQL: an embedded cluster in ``<out>/pgdata`` (or
   ``--data-dir``), or the database ``tapgate_demo`` created afresh on the
   server of ``--dsn``; then every migration;
2. the county (:mod:`tapgate.demo.world`) and the plan of its day
   (:mod:`tapgate.demo.plan`), both from ``--seed``;
3. provisioning (:mod:`tapgate.demo.provision`);
4. ``tapgate serve`` as a child process with ``--workers`` workers on a free
   loopback port, and the day's taps sent to it over HTTP
   (:mod:`tapgate.demo.drive`); then an orderly stop;
5. closing and settling the day, the subsidy claim and the chain check
   (:mod:`tapgate.demo.dayend`);
6. the invariants (:mod:`tapgate.demo.checks`), the printed summary and the
   report in ``--out``.

The simulated day is yesterday (local time, Asia/Shanghai) unless ``--day``
names another ended day within the offline upload limit: settlement closes
only days that have ended, and offline uploads must arrive within
``fastpath.offline_upload_max_s`` of their tap time.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import logging
import pathlib
import sys
import time

import uvloop
from tqdm import tqdm

from gateway import db, timeutil
from gateway.config import Config
from gateway.logs import log_event
from loadtests.scenario import load_model
from settlement.crypto import AccountCipher, load_or_create_key
from tapgate import runtime
from tapgate.demo import checks, dayend, plan, provision, services, world
from tapgate.demo.drive import drive
from tapgate.demo.summary import build_summary, format_summary, summary_json

log = logging.getLogger(__name__)


@dataclasses.dataclass
class DemoOptions:
    holders: int = 3000
    taps: int = 10000
    workers: int = 2
    seed: int = 1
    out: pathlib.Path = pathlib.Path("demo-out")
    day: dt.date | None = None
    # Requests in flight at once across all devices.
    concurrency: int = 48
    # Also write the HTML report with charts (matplotlib).
    report: bool = True
    config_file: str | None = None


def default_day(config: Config, now: dt.datetime | None = None) -> dt.date:
    """Return yesterday's business day (local time, with the configured cut-off)."""
    now = now or dt.datetime.now(timeutil.UTC)
    return timeutil.business_day(now, timeutil.parse_cutoff(config.journal.day_cutoff)) - dt.timedelta(days=1)


def check_day(day: dt.date, config: Config) -> None:
    cutoff = timeutil.parse_cutoff(config.journal.day_cutoff)
    now = dt.datetime.now(timeutil.UTC)
    start, end = timeutil.day_bounds(day, cutoff)
    if end > now:
        raise services.DemoError(f"--day {day} has not ended yet; settlement closes only ended days",
                                 f"--day {day} 尚未结束，只能结算已结束的营业日", "choose an earlier day / 请选择更早的日期")
    limit_s = config.fastpath.offline_upload_max_s
    if (now - start).total_seconds() > limit_s - 3600:
        raise services.DemoError(
            f"--day {day} is too old: its offline taps would arrive after the {limit_s} s upload limit",
            f"--day {day} 太早：其离线交易将超过 {limit_s} 秒的补传期限", "choose a day within the last few days")


def _stage(text: str) -> None:
    print(f"· {text}", file=sys.stderr, flush=True)


def run_demo(options: DemoOptions, config: Config) -> int:
    """Run the whole demo; return 0 if every invariant held, 1 otherwise."""
    started = time.perf_counter()
    day = options.day or default_day(config)
    check_day(day, config)
    out = options.out.absolute()
    services.prepare_directory(out, "output directory", "输出目录")
    (out / "keys").mkdir(mode=0o700)

    if config.database.dsn:
        _stage(f"创建演示数据库 / creating database {services.DEMO_DATABASE} on {db.redact_dsn(config.database.dsn)}")
        dsn = asyncio.run(services.recreate_database(config.database.dsn))
        return _run_with_database(options, config, day, out, dsn, started)
    data_dir = pathlib.Path(config.database.data_dir).absolute() if config.database.data_dir else out / "pgdata"
    _stage(f"启动内嵌 PostgreSQL / starting the embedded PostgreSQL in {data_dir}")
    with services.embedded_database(data_dir) as dsn:
        return _run_with_database(options, config, day, out, dsn, started)


def _run_with_database(options: DemoOptions, config: Config, day: dt.date, out: pathlib.Path, dsn: str,
                       started: float) -> int:
    applied = asyncio.run(runtime.migrate_all(dsn))
    _stage(f"已执行迁移 / applied {len(applied)} migrations")
    county, day_plan, cipher = _prepare(options, config, day, out, dsn)
    result, metrics, status = _serve_and_drive(options, config, out, dsn, day_plan)
    day_end = asyncio.run(_day_end(dsn, day, config, cipher, out / "settlement"))

    all_checks = checks.traffic_checks(result.results)
    journal_found, discounts = asyncio.run(_journal_checks(dsn, result, county))
    all_checks += journal_found
    accepted_fare = sum(r.fare_fen + r.adjustment_fen for r in result.results if r.decision == "accepted")
    all_checks += checks.day_end_checks(day_end, accepted_fare)
    all_checks.append(checks.Check("网关有序停止", "the gateway stopped cleanly", status == 0,
                                   f"exit status {status}"))

    summary = build_summary(county, day_plan, result, day_end, all_checks, seed=options.seed,
                            workers=options.workers, metrics=metrics, discounts=discounts)
    summary.total_s = time.perf_counter() - started
    _write_outputs(options, summary, result, county, out)
    if not summary.ok:
        print("错误 / error: 有不变量未满足，见上方检查 / an invariant failed, see the checks above", file=sys.stderr)
        return 1
    return 0


def _prepare(options: DemoOptions, config: Config, day: dt.date, out: pathlib.Path,
             dsn: str) -> tuple[world.World, plan.DayPlan, AccountCipher]:
    """Make the county and its day's plan, and register everything in the database."""
    model = load_model()
    county = world.build_world(model, day, options.holders, options.seed)
    day_plan = plan.plan_day(county, options.taps, options.seed, timeutil.parse_cutoff(config.journal.day_cutoff))
    _stage(f"演示日 / demo day {day}: {len(county.holders)} holders, {len(county.devices)} devices, "
           f"{len(day_plan.taps)} taps planned")

    cipher = AccountCipher(load_or_create_key(out / "keys" / "account.key"))
    provision.register_issuer_key(county, out / "keys" / f"issuer-{county.issuer.key_id}.key", dsn)
    asyncio.run(_provision(dsn, county, day, out, cipher))
    _stage("已发布票价规则、登记设备、挂失卡与欠费账户，并导入账户 / rule set published, devices registered, "
           "lost cards and arrears listed, accounts imported")
    return county, day_plan, cipher


def _serve_and_drive(options: DemoOptions, config: Config, out: pathlib.Path, dsn: str,
                     day_plan: plan.DayPlan):
    """Run ``tapgate serve``, send the day to it, stop it; return the responses, its metrics and exit status."""
    # Plain HTTP on loopback and no rate limit: the demo's devices send a whole day in a minute.
    # The devices stamp each online tap with its time in the simulated day while phones and cards sign
    # the real time, so the tap-time tolerance is widened to the age check_day allows for --day.
    environ = {"TAPGATE_SERVER_DEVICE_RATE_PER_S": "100000", "TAPGATE_SERVER_DEVICE_RATE_BURST": "100000",
               "TAPGATE_SERVER_TAP_TIME_TOLERANCE_S": str(config.fastpath.offline_upload_max_s),
               "TAPGATE_SERVER_TLS_CERT": "", "TAPGATE_SERVER_TLS_KEY": "", "TAPGATE_LOG_LEVEL": "WARNING"}
    gateway = services.GatewayProcess(dsn, options.workers, out / "gateway.log", options.config_file, environ)
    try:
        port = gateway.start()
        _stage(f"网关已就绪 / gateway ready on 127.0.0.1:{port} with {options.workers} workers")
        with tqdm(total=len(day_plan.taps), desc="交易 taps", unit="tap", file=sys.stderr) as bar:
            result = uvloop.run(_drive(day_plan, port, options, config, bar.update))
        metrics = gateway.metrics()
    finally:
        status = gateway.stop()
    if status not in (0, None):
        log_event(log, logging.WARNING, "demo.gateway_stop_status", status=status)
    return result, metrics, status


def _write_outputs(options: DemoOptions, summary, result, county: world.World, out: pathlib.Path) -> None:
    """Write summary.json, summary.txt and the report, and print the summary."""
    (out / "summary.json").write_text(json.dumps(summary_json(summary), ensure_ascii=False, indent=2,
                                                 default=str), encoding="utf-8")
    text = format_summary(summary)
    (out / "summary.txt").write_text(text + "\n", encoding="utf-8")
    print(text)
    if options.report:
        from tapgate.demo.report import write_report

        path = write_report(summary, result, county.holders_with("ok")[0].phone, out)
        print(f"\n报告 / report: {path}")
    print(f"总用时 / total time: {summary.total_s:.1f} s")


async def _provision(dsn: str, county: world.World, day: dt.date, out: pathlib.Path, cipher: AccountCipher) -> None:
    async with db.connection(dsn) as conn:
        await provision.publish_rule_set(conn, day)
        await provision.register_devices(conn, county)
        await provision.report_lost_and_arrears(conn, county)
        paths = provision.write_account_files(county, out / "accounts")
        await provision.import_account_files(conn, paths, cipher)


async def _drive(day_plan: plan.DayPlan, port: int, options: DemoOptions, config: Config, progress):
    fp = config.fastpath
    return await drive(day_plan, "127.0.0.1", port, concurrency=options.concurrency,
                       code_lifetime_s=fp.code_lifetime_s, clock_skew_s=fp.clock_skew_s, progress=progress)


async def _day_end(dsn: str, day: dt.date, config: Config, cipher: AccountCipher,
                   folder: pathlib.Path) -> dayend.DayEnd:
    async with db.connection(dsn) as conn:
        return await dayend.close_and_settle(conn, day, timeutil.parse_cutoff(config.journal.day_cutoff), cipher,
                                             folder)


async def _journal_checks(dsn: str, result, county: world.World) -> tuple[list[checks.Check], dict[str, int]]:
    async with db.connection(dsn) as conn:
        found = await checks.journal_checks(conn, result.results, [d.device_id for d in county.unknown_devices])
        return found, await checks.discount_counts(conn)


__all__ = ["DemoOptions", "run_demo"]
