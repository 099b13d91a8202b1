"""``tapgate loadtest``: a headless Locust load test of the gateway with a pass/fail verdict.

The work is done by :mod:`loadtests.runner`; this module turns the command
line into its options. docs/loadtesting.md explains the scenarios, shapes,
reports and the distributed mode.
"""

from __future__ import annotations

import argparse
import datetime as dt
import pathlib

import msgspec

from gateway.config import Config
from gateway.errors import ConfigError
from tapgate import runtime



def _ratio(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(
            f"invalid ratio {text!r}: expected a number from 0 to 1, e.g. 0.001 for 0.1 % "
            f"/ 比例 {text!r} 无效，应为 0 到 1 之间的数，例如 0.001 表示 0.1%")
    return value

def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    parser = subparsers.add_parser(
        "loadtest", parents=[common],
        help="run a headless load test against a gateway / 对网关运行无界面负载测试",
        description="Provision devices and holders, start a local gateway (unless --target is given), run "
                    "Locust for the chosen scenario and shape, check every answer against the journal, and "
                    "write Locust's CSV and HTML reports, chart.png and summary.json. Exits 1 when a threshold "
                    "or the correctness check fails. "
                    "/ 准备设备与持卡人，启动本地网关（除非指定 --target），按所选场景与负载曲线运行 Locust，"
                    "逐笔核对应答与交易流水，输出 Locust 的 CSV 与 HTML 报告、chart.png 和 summary.json。"
                    "任一阈值或正确性检查未通过时退出码为 1。")
    traffic = parser.add_argument_group("traffic / 流量")
    traffic.add_argument("--scenario", choices=["bus", "scenic", "venue", "mixed"], default="mixed",
                      help="bus validators, scenic-spot gates, venue gates, or all three by the model's "
                           "weights (default mixed) / 场景：公交、景区闸机、场馆闸机或混合")
    traffic.add_argument("--traffic", metavar="FILE",
                      help="traffic model (TOML); default the built-in Yiyuan model / 流量模型文件")
    traffic.add_argument("--time-scale", type=float, metavar="X",
                      help="simulated seconds per real second for bus travel, boarding and gate queues "
                           "(default from the model, 20) / 模拟时间压缩倍数")
    traffic.add_argument("--rules", metavar="FILE",
                      help="rule set (TOML, YAML or JSON) to publish before the run; without it the example Yiyuan "
                           "rule set is published if none is / 运行前发布的票价规则文件；不指定时若无已发布规则则发布示例规则")
    traffic.add_argument("--body-format", choices=["json", "msgpack"], default="json",
                         help="encoding of tap requests and answers (default json) / 交易请求与应答的编码")
    traffic.add_argument("--seed", type=int, metavar="N", help="seed for the holders' categories / 随机种子")

    shape = parser.add_argument_group("load shape / 负载曲线")
    shape.add_argument("--shape", choices=["ramp", "peak", "soak", "surge", "stepped"], default="ramp",
                       help="ramp: rise then hold; peak: a day with morning and evening peaks; soak: hold long; "
                            "surge: holiday gate opening; stepped: add devices until p99 breaks --step-p99-ms "
                            "(default ramp) / 负载曲线")
    shape.add_argument("--duration", type=float, default=60.0, metavar="SECONDS",
                       help="length of the run in seconds (default 60) / 运行时长（秒）")
    shape.add_argument("--users", type=int, default=20, metavar="N",
                       help="simulated devices at full load (default 20) / 满负载时的模拟设备数")
    shape.add_argument("--spawn-rate", type=float, default=10.0, metavar="N",
                       help="devices started per second (default 10) / 每秒启动的设备数")
    shape.add_argument("--ramp", type=float, default=10.0, metavar="SECONDS",
                       help="ramp: seconds to reach --users; soak: its initial ramp (default 10) / 爬升时间（秒）")
    shape.add_argument("--step-start", type=int, default=5, metavar="N",
                       help="stepped: devices in the first step (default 5) / 第一级设备数")
    shape.add_argument("--step-users", type=int, default=5, metavar="N",
                       help="stepped: devices added per step (default 5) / 每级增加的设备数")
    shape.add_argument("--step-seconds", type=float, default=15.0, metavar="SECONDS",
                       help="stepped: seconds per step (default 15) / 每级持续时间（秒）")
    shape.add_argument("--step-p99-ms", type=float, default=100.0, metavar="MS",
                       help="stepped: p99 latency a step must keep, in milliseconds (default 100) "
                            "/ 每级须满足的 p99 延迟（毫秒）")

    limits = parser.add_argument_group("pass/fail thresholds / 通过阈值")
    limits.add_argument("--p95-ms", type=float, default=50.0, metavar="MS",
                        help="highest p95 latency in milliseconds (default 50) / p95 延迟上限（毫秒）")
    limits.add_argument("--p99-ms", type=float, default=200.0, metavar="MS",
                        help="highest p99 latency in milliseconds (default 200) / p99 延迟上限（毫秒）")
    limits.add_argument("--max-error-rate", type=_ratio, default=0.001, metavar="RATIO",
                        help="highest share of failed requests, 0.001 = 0.1%% (default 0.001) / 最高错误率")

    output = parser.add_argument_group("gateway and output / 网关与输出")
    output.add_argument("--target", metavar="URL",
                       help="test a running gateway at URL instead of starting one; its database must be the "
                            "one given by --dsn / 压测已运行的网关（其数据库须为 --dsn 所指）")
    output.add_argument("--allow-remote", action="store_true",
                       help="allow a --target that is not a loopback address / 允许非本机目标")
    output.add_argument("--gateway-workers", type=int, metavar="N",
                       help="worker processes of the local gateway (default server.workers) / 本地网关工作进程数")
    output.add_argument("--processes", type=int, default=1, metavar="N",
                       help="Locust processes generating load on this machine (default 1) / 本机负载生成进程数")
    output.add_argument("--fixture", metavar="FILE",
                       help="reuse a fixture file from an earlier run instead of provisioning a new one "
                            "/ 复用之前生成的测试数据文件")
    output.add_argument("--out", metavar="DIR",
                       help="output directory (default loadtest-out/<UTC time>) / 输出目录")
    output.add_argument("--prepare-only", action="store_true",
                       help="provision and write spec.json and fixture.json for a distributed run, print the "
                            "Locust commands, and stop / 仅准备分布式运行所需文件并打印 Locust 命令")
    output.add_argument("--judge-only", action="store_true",
                       help="after a distributed run: check the answers in --out/answers against the journal "
                            "and the thresholds against --out's Locust reports / 分布式运行后仅做核对与判定")
    parser.set_defaults(handler=run_loadtest)


def options_from_args(args: argparse.Namespace, config: Config) -> "runner.Options":
    from loadtests import report, runner
    from loadtests import scenario as sc

    model = sc.load_model(args.traffic)
    if args.time_scale is not None:
        if args.time_scale <= 0:
            raise ConfigError(f"--time-scale {args.time_scale:g} is invalid: expected a number above 0",
                              f"--time-scale {args.time_scale:g} 无效：应大于 0")
        model = msgspec.structs.replace(model, timing=msgspec.structs.replace(model.timing,
                                                                             time_scale=args.time_scale))
    for name, value in (("--duration", args.duration), ("--users", args.users), ("--spawn-rate", args.spawn_rate),
                        ("--step-seconds", args.step_seconds), ("--processes", args.processes)):
        if value <= 0:
            raise ConfigError(f"{name} {value} is invalid: expected a number above 0", f"{name} {value} 无效：应大于 0")
    shape = sc.ShapeSpec(name=args.shape, duration_s=args.duration, users=args.users, spawn_rate=args.spawn_rate,
                         ramp_s=args.ramp, step_start=args.step_start, step_users=args.step_users,
                         step_s=args.step_seconds, step_p99_ms=args.step_p99_ms,
                         step_error_rate_max=max(args.max_error_rate, 0.001))
    if args.scenario == "mixed":
        scenarios = [name for name in sc.SCENARIOS if model.user_weights.get(name, 0) > 0]
    else:
        scenarios = [args.scenario]
    out = pathlib.Path(args.out or f"loadtest-out/{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%SZ}")
    return runner.Options(
        out_dir=out.resolve(), model=model, shape=shape, scenarios=scenarios,
        thresholds=report.Thresholds(p95_ms=args.p95_ms, p99_ms=args.p99_ms, error_rate_max=args.max_error_rate),
        target=args.target, allow_remote=args.allow_remote, processes=args.processes,
        gateway_workers=args.gateway_workers, config_path=args.config,
        fixture_path=pathlib.Path(args.fixture).resolve() if args.fixture else None, rules_path=args.rules,
        code_lifetime_s=config.fastpath.code_lifetime_s, clock_skew_s=config.fastpath.clock_skew_s,
        device_rate_per_s=config.server.device_rate_per_s, body_format=args.body_format, seed=args.seed)


def run_loadtest(args: argparse.Namespace, config: Config) -> int:
    from loadtests import runner

    options = options_from_args(args, config)
    if options.target is not None:
        runner.check_target(options.target, options.allow_remote)
    with runtime.database(config) as dsn:
        if args.prepare_only:
            _, _, spec_path = runner.prepare(options, dsn)
            print_distributed_commands(options, spec_path)
            return 0
        if args.judge_only:
            return runner.judge_directory(options, dsn)
        return runner.run(options, dsn)


def print_distributed_commands(options: "runner.Options", spec_path: pathlib.Path) -> None:
    from loadtests import runner

    classes = " ".join(runner.USER_CLASSES[name] for name in options.scenarios)
    out = options.out_dir
    print(f"已写入 / written: {spec_path} 与 / and {out / 'fixture.json'}")
    print("主节点 / master:")
    print(f"  TAPGATE_LOADTEST_SPEC={spec_path} locust -f {runner.LOCUSTFILE} --master --headless "
          f"--expect-workers {options.processes} --host {options.target or 'http://127.0.0.1:8080'} "
          f"--csv {out / 'locust'} --csv-full-history --html {out / 'report.html'} {classes}")
    print("每个工作节点 / each worker:")
    print(f"  TAPGATE_LOADTEST_SPEC={spec_path} locust -f {runner.LOCUSTFILE} --worker --master-host MASTER {classes}")
