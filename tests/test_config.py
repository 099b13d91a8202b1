"""Configuration file and environment overrides."""

from __future__ import annotations

import pathlib

import pytest

from gateway.config import load_config
from gateway.errors import ConfigError


def test_defaults_without_file() -> None:
    config = load_config(None, environ={})
    assert config.database.dsn == ""
    assert config.server.port == 8080
    assert config.journal.day_cutoff == "00:00"


def test_file_and_env_override(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "tapgate.toml"
    path.write_text('[server]\nport = 9000\nworkers = 4\n[journal]\nday_cutoff = "02:00"\n')
    config = load_config(path, environ={"TAPGATE_SERVER_PORT": "9100"})
    assert config.server.port == 9100
    assert config.server.workers == 4
    assert config.journal.day_cutoff == "02:00"


def test_wrong_type_names_key_and_value(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[server]\nport = "eighty"\n')
    with pytest.raises(ConfigError, match=r"Expected `int`, got `str` - at `\$\.server\.port`"):
        load_config(path, environ={})


def test_unknown_key_rejected(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[server]\nprot = 80\n")
    with pytest.raises(ConfigError, match=r"unknown field `prot`"):
        load_config(path, environ={})


def test_unknown_env_key_lists_valid_keys() -> None:
    with pytest.raises(ConfigError, match=r"TAPGATE_SERVER_PROT.*valid keys: .*port"):
        load_config(None, environ={"TAPGATE_SERVER_PROT": "80"})


def test_env_value_of_wrong_type() -> None:
    with pytest.raises(ConfigError, match=r"TAPGATE_SERVER_WORKERS") as info:
        load_config(None, environ={"TAPGATE_SERVER_WORKERS": "many"})
    assert info.value.message_zh.startswith("配置无效（环境变量 TAPGATE_SERVER_WORKERS）：")
    assert info.value.message_en.startswith("invalid configuration in environment TAPGATE_SERVER_WORKERS: ")


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('[journal]\nday_cutoff = "25:00"\n', r"\$\.journal\.day_cutoff = '25:00', expected a local time"),
        ("[server]\nport = 70000\n", r"\$\.server\.port = 70000, expected a TCP port"),
        ('[server]\ntls_cert = "a.pem"\n', r"tls_cert and tls_key"),
        ("[database]\npool_min = 4\npool_max = 2\n", r"\$\.database\.pool_max = 2, expected at least pool_min"),
    ],
)
def test_out_of_range_values(tmp_path: pathlib.Path, toml: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError, match=message):
        load_config(path, environ={})


def test_messages_are_bilingual(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[server]\nport = 70000\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert "配置无效" in str(info.value)
    assert "invalid configuration" in str(info.value)


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match="configuration file not found: /no/such.toml"):
        load_config("/no/such.toml", environ={})


def test_type_error_in_chinese_half(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[server]\nport = "eighty"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert info.value.message_zh.endswith("应为 int 类型，实际为 str（位置 `$.server.port`）")
    assert "Expected" not in info.value.message_zh


def test_toml_syntax_error_position_in_chinese(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[server\nport = 80\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert info.value.message_zh == f"配置文件 {path} 不是有效的 TOML，错误位于第 1 行第 8 列"
    assert "(at line 1, column 8)" in info.value.message_en
