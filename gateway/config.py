"""Configuration: one TOML file plus ``TAPGATE_<SECTION>_<KEY>`` environment overrides.

The schema is a tree of msgspec structs, so a wrong type or an unknown key is
reported with its path, the value found and what is expected. Every field has
a default, so an empty file (or none) is a valid configuration.
"""

from __future__ import annotations

import os
import pathlib
import re
import tomllib
from typing import Any, Mapping

import msgspec

from gateway.errors import ConfigError, msgspec_message_zh

ENV_PREFIX = "TAPGATE_"


class DatabaseConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    # PostgreSQL DSN. Empty: start the embedded PostgreSQL in ``data_dir``.
    dsn: str = ""
    # Embedded PostgreSQL data directory. Empty: the user's state directory.
    data_dir: str = ""
    pool_min: int = 2
    pool_max: int = 8
    # Seconds to wait for a pool connection or a PostgreSQL connect to complete.
    connect_timeout_s: float = 5.0


class ServerConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    host: str = "127.0.0.1"
    port: int = 8080
    # Worker processes sharing the port through SO_REUSEPORT; 0 means one per core.
    workers: int = 2
    tls_cert: str = ""
    tls_key: str = ""
    # Largest request body accepted, in bytes.
    body_max_bytes: int = 1_048_576
    # Taps accepted in one offline batch upload.
    batch_taps_max: int = 1000
    # Seconds a client may take to send one request before the server returns 408.
    request_timeout_s: float = 10.0
    # Seconds SIGTERM waits for taps in flight before the worker exits.
    shutdown_timeout_s: float = 10.0
    # Seconds a device request's timestamp may differ from the gateway's clock.
    device_clock_skew_s: int = 300
    # A card tapped again on the same device within this many seconds is a duplicate.
    card_duplicate_window_s: int = 30
    # Seconds an online tap's tap_time_ms may differ from the time signed by the
    # card or phone. Fares depend on the tap time (peak hours, day types), so a
    # device cannot move an online tap to another hour. Offline uploads are
    # checked by the fast path against their recorded time instead.
    tap_time_tolerance_s: int = 120
    # Seconds between polls for deny-list, key and rule-set changes.
    refresh_interval_s: float = 1.0
    # Requests per second allowed per device (token bucket), and its burst size.
    device_rate_per_s: float = 50.0
    device_rate_burst: int = 200


class FastpathConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    # Seconds a presentation time may be ahead of the gateway's clock.
    clock_skew_s: int = 30
    # Seconds a dynamic QR code stays valid after its presentation time.
    code_lifetime_s: int = 60
    # Seconds a tap recorded offline may be uploaded after its tap time.
    offline_upload_max_s: int = 7 * 24 * 3600
    # Verified credentials kept in the cache of each worker.
    credential_cache_size: int = 100_000
    # Directory of issuer public keys for tools that verify outside the database.
    keys_dir: str = ""


class JournalConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    # Milliseconds a tap waits for others to join its group commit.
    flush_interval_ms: float = 2.0
    # Taps written in one group commit at most.
    batch_max: int = 512
    # Local time (Asia/Shanghai) at which one business day ends and the next
    # begins, "HH:MM". The journal is partitioned by business day.
    day_cutoff: str = "00:00"


class AdminConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    host: str = "127.0.0.1"
    port: int = 8081


class SettlementConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    # File with the 32-byte key that encrypts bank account numbers at rest.
    account_key_file: str = ""
    # Directory where bank files and reports are written.
    output_dir: str = "settlement-out"
    # Rides allowed on an account in arrears before validators reject it.
    arrears_grace_rides: int = 0
    # Unpaid amount in fen tolerated before an account counts as in arrears.
    arrears_grace_fen: int = 0


class Config(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    database: DatabaseConfig = msgspec.field(default_factory=DatabaseConfig)
    server: ServerConfig = msgspec.field(default_factory=ServerConfig)
    fastpath: FastpathConfig = msgspec.field(default_factory=FastpathConfig)
    journal: JournalConfig = msgspec.field(default_factory=JournalConfig)
    admin: AdminConfig = msgspec.field(default_factory=AdminConfig)
    settlement: SettlementConfig = msgspec.field(default_factory=SettlementConfig)


def _section_types() -> dict[str, type[msgspec.Struct]]:
    return {field.name: field.type for field in msgspec.structs.fields(Config)}


def _env_overrides(environ: Mapping[str, str]) -> dict[str, dict[str, str]]:
    sections = _section_types()
    overrides: dict[str, dict[str, str]] = {}
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        rest = name[len(ENV_PREFIX):].lower()
        section, _, key = rest.partition("_")
        if section not in sections or not key:
            continue
        fields = {f.name for f in msgspec.structs.fields(sections[section])}
        if key not in fields:
            raise ConfigError(
                f"unknown environment variable {name}: section [{section}] has no key {key!r}",
                f"未知的环境变量 {name}：[{section}] 节中没有 {key!r} 这一项",
                f"valid keys: {', '.join(sorted(fields))}",
            )
        overrides.setdefault(section, {})[key] = value
    return overrides


def _explain(exc: msgspec.ValidationError, source: str, source_zh: str | None = None) -> ConfigError:
    # msgspec reports "Expected `int`, got `str` - at `$.server.port`".
    text = str(exc)
    return ConfigError(
        f"invalid configuration in {source}: {text}",
        f"配置无效（{source_zh or source}）：{msgspec_message_zh(text)}",
        "fix the value at the path shown, or remove it to use the default / 请修改所示路径上的值，或删除该项以使用默认值",
    )


_TOML_POSITION = re.compile(r"\(at line (\d+), column (\d+)\)")


def load_config(path: str | os.PathLike[str] | None = None,
                environ: Mapping[str, str] | None = None) -> Config:
    """Read ``path`` (TOML) if given, apply environment overrides, and validate.

    Environment values are strings; they are converted to the field's type
    (``TAPGATE_SERVER_PORT=9000`` becomes the integer 9000).
    """
    environ = os.environ if environ is None else environ
    raw: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        file = pathlib.Path(path)
        source = str(file)
        try:
            raw = tomllib.loads(file.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ConfigError(
                f"configuration file not found: {file}",
                f"找不到配置文件：{file}",
                "check the path given with --config / 请检查 --config 给出的路径",
            ) from exc
        except tomllib.TOMLDecodeError as exc:
            # tomllib's detail is English only ("Expected ']' at the end of a table
            # declaration (at line 1, column 8)"); the Chinese half gives its position.
            position = _TOML_POSITION.search(str(exc))
            where = f"，错误位于第 {position.group(1)} 行第 {position.group(2)} 列" if position else ""
            raise ConfigError(
                f"configuration file {file} is not valid TOML: {exc}",
                f"配置文件 {file} 不是有效的 TOML{where}",
            ) from exc

    try:
        config = msgspec.convert(raw, Config)
    except msgspec.ValidationError as exc:
        raise _explain(exc, source) from exc

    overrides = _env_overrides(environ)
    if overrides:
        merged = msgspec.to_builtins(config)
        for section, values in overrides.items():
            merged[section].update(values)
        try:
            # strict=False converts "9000" to 9000 and "true" to True.
            config = msgspec.convert(merged, Config, strict=False)
        except msgspec.ValidationError as exc:
            names = ", ".join(f"{ENV_PREFIX}{s.upper()}_{k.upper()}" for s, v in overrides.items() for k in v)
            raise _explain(exc, f"environment {names}", f"环境变量 {names}") from exc

    _check_ranges(config)
    return config


def _require(condition: bool, path: str, value: object, expected_en: str, expected_zh: str) -> None:
    if not condition:
        raise ConfigError(
            f"invalid configuration: {path} = {value!r}, expected {expected_en}",
            f"配置无效：{path} = {value!r}，应为{expected_zh}",
        )


def _check_ranges(config: Config) -> None:
    db = config.database
    _require(db.pool_min >= 1, "$.database.pool_min", db.pool_min, "at least 1", "不小于 1 的整数")
    _require(db.pool_max >= db.pool_min, "$.database.pool_max", db.pool_max,
             f"at least pool_min ({db.pool_min})", f"不小于 pool_min（{db.pool_min}）的整数")
    server = config.server
    for path, port in (("$.server.port", server.port), ("$.admin.port", config.admin.port)):
        _require(0 <= port <= 65535, path, port, "a TCP port from 0 to 65535", "0 到 65535 之间的 TCP 端口")
    _require(server.workers >= 0, "$.server.workers", server.workers, "0 (one per core) or more", "0（每核一个）或更大")
    _require(bool(server.tls_cert) == bool(server.tls_key), "$.server.tls_key", server.tls_key,
             "both tls_cert and tls_key, or neither", "tls_cert 与 tls_key 同时设置或同时留空")
    _require(server.tap_time_tolerance_s >= 0, "$.server.tap_time_tolerance_s", server.tap_time_tolerance_s,
             "0 seconds or more", "不小于 0 秒")
    _require(server.body_max_bytes >= 1024, "$.server.body_max_bytes", server.body_max_bytes,
             "at least 1024 bytes", "不小于 1024 字节")
    journal = config.journal
    _require(0 < journal.flush_interval_ms <= 1000, "$.journal.flush_interval_ms", journal.flush_interval_ms,
             "more than 0 and at most 1000 milliseconds", "大于 0 且不超过 1000 毫秒")
    _require(1 <= journal.batch_max <= 10_000, "$.journal.batch_max", journal.batch_max,
             "1 to 10000 taps", "1 到 10000 笔")
    fp = config.fastpath
    _require(fp.code_lifetime_s > 0, "$.fastpath.code_lifetime_s", fp.code_lifetime_s,
             "more than 0 seconds", "大于 0 秒")
    _require(fp.credential_cache_size >= 0, "$.fastpath.credential_cache_size", fp.credential_cache_size,
             "0 (no cache) or more", "0（不缓存）或更大")
    cutoff = journal.day_cutoff
    hh, sep, mm = cutoff.partition(":")
    valid = sep == ":" and hh.isdigit() and mm.isdigit() and int(hh) < 24 and int(mm) < 60 and len(mm) == 2
    _require(valid, "$.journal.day_cutoff", cutoff, 'a local time "HH:MM" such as "02:00"',
             '本地时间 "HH:MM"，例如 "02:00"')
