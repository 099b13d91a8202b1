"""``tapgate serve``: run the tap gateway with its worker processes."""

from __future__ import annotations

import argparse
import ssl

import msgspec

from gateway import workers
from gateway.config import Config
from gateway.errors import ConfigError
from tapgate import runtime


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    serve = subparsers.add_parser(
        "serve", parents=[common],
        help="run the tap gateway for validators and gates / 运行面向验票机与闸机的交易网关",
        description="Start PostgreSQL (embedded unless --dsn is given), apply migrations, and serve the device "
                    "API with several worker processes sharing one port. SIGTERM or Ctrl-C stops accepting, "
                    "answers the taps in flight and flushes the journal. "
                    "/ 启动 PostgreSQL（未指定 --dsn 时使用内嵌服务器）并执行迁移，然后以多个工作进程共享同一端口"
                    "提供设备接口。SIGTERM 或 Ctrl-C 停止接收新连接，处理完进行中的交易并写完流水后退出。")
    serve.add_argument("--host", metavar="ADDR",
                       help="address to listen on (default server.host, 127.0.0.1) / 监听地址")
    serve.add_argument("--port", type=int, metavar="PORT",
                       help="TCP port to listen on; 0 picks a free one (default server.port, 8080) / 监听端口")
    serve.add_argument("--workers", type=int, metavar="N",
                       help="worker processes; 0 means one per CPU core (default server.workers, 2) / 工作进程数")
    serve.add_argument("--tls-cert", metavar="FILE",
                       help="PEM certificate chain; serve HTTPS when given with --tls-key / PEM 证书链文件")
    serve.add_argument("--tls-key", metavar="FILE", help="PEM private key of the certificate / 证书私钥文件")
    serve.set_defaults(handler=run_serve)


def apply_overrides(args: argparse.Namespace, config: Config) -> Config:
    changes = {name: value for name, value in (
        ("host", args.host), ("port", args.port), ("workers", args.workers),
        ("tls_cert", args.tls_cert), ("tls_key", args.tls_key)) if value is not None}
    if not changes:
        return config
    server = msgspec.structs.replace(config.server, **changes)
    # Re-validate through the configuration's own checks (port range, TLS pair).
    from gateway.config import _check_ranges

    updated = msgspec.structs.replace(config, server=server)
    _check_ranges(updated)
    return updated


def check_tls_files(config: Config) -> None:
    """Load the certificate and key once here, so a bad path is reported before PostgreSQL and workers start."""
    server = config.server
    if not server.tls_cert:
        return
    from gateway.server import tls_context

    try:
        tls_context(server.tls_cert, server.tls_key)
    except (OSError, ssl.SSLError) as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError(
            f"cannot load the TLS certificate {server.tls_cert!r} and key {server.tls_key!r}: {reason}",
            f"无法加载 TLS 证书 {server.tls_cert!r} 与私钥 {server.tls_key!r}：{reason}",
            "check --tls-cert and --tls-key (server.tls_cert, server.tls_key): both are PEM files "
            "/ 请检查 --tls-cert 与 --tls-key（server.tls_cert、server.tls_key），两者均应为 PEM 文件") from None


def run_serve(args: argparse.Namespace, config: Config) -> int:
    config = apply_overrides(args, config)
    check_tls_files(config)
    # NOTE: server.shutdown_timeout_s bounds the workers' drain; stopping an
    # embedded PostgreSQL afterwards takes its own few seconds.
    with runtime.database(config) as dsn:
        return workers.supervise(config, dsn)
