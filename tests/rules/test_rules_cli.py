"""``tapgate rules`` run as a user runs it: in a subprocess against a test database."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

from gateway.rules import example_document_text


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("TAPGATE_")}
    return subprocess.run([sys.executable, "-m", "tapgate", "rules", *args], capture_output=True, text=True,
                          timeout=120, env=environ)


def _write(tmp_path: pathlib.Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_validate_example(tmp_path: pathlib.Path) -> None:
    result = run_cli("validate", _write(tmp_path, "yiyuan.toml", example_document_text()))
    assert result.returncode == 0, result.stderr
    assert "有效 / valid: yiyuan （示例 / illustrative）" in result.stdout


def test_validate_reports_every_problem(tmp_path: pathlib.Path) -> None:
    text = example_document_text().replace("price_fen = 100\n", "price_fen = \"1元\"\n", 1)
    text = text.replace('fare_percent = 50\nname_zh = "老年人"', 'fare_percent = 500\nname_zh = "老年人"', 1)
    result = run_cli("validate", _write(tmp_path, "bad.toml", text))
    assert result.returncode == 1
    assert '$.rider_categories[2].fare_percent：当前值 500，应为0 到 100 之间的整数' in result.stderr
    assert '$.products[0].price_fen: found "1元", expected an integer from 0 to 10000000' in result.stderr
    assert "共 2 处问题 / 2 problem(s)" in result.stderr


def test_validate_unknown_extension(tmp_path: pathlib.Path) -> None:
    result = run_cli("validate", _write(tmp_path, "rules.txt", "x"))
    assert result.returncode == 1
    assert "cannot tell the format of 'rules.txt'" in result.stderr


def test_validate_non_utf8_file(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "gbk.toml"
    path.write_bytes("[rule_set]\nname_zh = \"沂源\"\n".encode("gbk"))
    result = run_cli("validate", str(path))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "is not UTF-8 text" in result.stderr
    assert "请将文件另存为 UTF-8 编码" in result.stderr


def test_diff_files(tmp_path: pathlib.Path) -> None:
    old = _write(tmp_path, "old.toml", example_document_text())
    new = _write(tmp_path, "new.toml", example_document_text().replace("amount_fen = 1000", "amount_fen = 800"))
    result = run_cli("diff", old, new)
    assert result.returncode == 0, result.stderr
    assert "~ $.caps[daily].amount_fen: 1000 -> 800" in result.stdout
    assert "共 1 处差异 / 1 change(s)" in result.stdout


def test_publish_list_show_diff_versions(dsn: str, tmp_path: pathlib.Path) -> None:
    first = _write(tmp_path, "v1.toml", example_document_text())
    published = run_cli("publish", "--dsn", dsn, "--file", first, "--actor", "alice", "--note", "first")
    assert published.returncode == 0, published.stderr
    assert "已发布 / published: version 1" in published.stdout

    second = _write(tmp_path, "v2.toml", example_document_text().replace("price_fen = 100\n", "price_fen = 80\n", 1))
    drafted = run_cli("draft", "--dsn", dsn, second, "--based-on", "1", "--actor", "bob")
    assert drafted.returncode == 0, drafted.stderr
    assert "version 2" in drafted.stdout

    listing = run_cli("list", "--dsn", dsn)
    assert listing.returncode == 0, listing.stderr
    assert "1 | published | yiyuan |" in listing.stdout
    assert "2 | draft | yiyuan | - | bob |" in listing.stdout

    diff = run_cli("diff", "--dsn", dsn, "1", "2")
    assert "~ $.products[urban-single].price_fen: 100 -> 80" in diff.stdout

    shown = run_cli("show", "--dsn", dsn, "1")
    assert shown.stdout == example_document_text()
    audit = run_cli("show", "--dsn", dsn, "2", "--as", "audit")
    assert "bob create_draft" in audit.stdout
    assert "changed $.products[urban-single].price_fen: 100 -> 80" in audit.stdout

    again = run_cli("publish", "--dsn", dsn, "--version", "1")
    assert again.returncode == 1
    assert "已发布，不可修改" in again.stderr

    past = run_cli("publish", "--dsn", dsn, "--version", "2", "--effective-from", "2020-01-01 00:00")
    assert past.returncode == 1
    assert "is in the past" in past.stderr

    simulated = run_cli("simulate", "--dsn", dsn, "--version", "2", "--from", "2026-12-01", "--to", "2026-12-02",
                        "--no-progress")
    assert simulated.returncode == 0, simulated.stderr
    assert "交易 / taps read: 0" in simulated.stdout


def test_import_gtfs_writes_yaml(tmp_path: pathlib.Path) -> None:
    feed = pathlib.Path(__file__).parent / "data" / "gtfs"
    output = tmp_path / "imported.yaml"
    result = run_cli("import-gtfs", str(feed), "-o", str(output), "--rule-set-id", "yy")
    assert result.returncode == 0, result.stderr
    assert "共 10 项未能完整映射 / 10 item(s) not fully mapped" in result.stdout
    validated = run_cli("validate", str(output))
    assert validated.returncode == 0, validated.stderr
    assert "有效 / valid: yy" in validated.stdout
