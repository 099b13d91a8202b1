"""``tapgate keys`` and ``tapgate credential`` against a real PostgreSQL database."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import pathlib
import stat
import subprocess
import sys
import time

import asyncpg
import pytest

import fastpath
from fastpath.issuer import IssuerKey
from fastpath.reasons import Medium, Reason
from tapgate.cli import main


def rows(dsn: str) -> list[asyncpg.Record]:
    async def fetch() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(dsn)
        try:
            return await conn.fetch("SELECT key_id, public_key, status, retired_at, revoked_at, version "
                                    "FROM issuer_keys ORDER BY key_id")
        finally:
            await conn.close()

    return asyncio.run(fetch())


def mode(path: pathlib.Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


class TestKeys:
    def test_generate_register_list(self, dsn: str, tmp_path: pathlib.Path, capsys) -> None:
        key_file = tmp_path / "issuer-5.key"
        assert main(["keys", "generate", "--key-id", "5", "--out", str(key_file), "--register", "--dsn", dsn]) == 0
        assert mode(key_file) == 0o600
        key = IssuerKey.load(key_file)
        [row] = rows(dsn)
        assert row["key_id"] == 5
        assert bytes(row["public_key"]) == key.public_key
        assert row["status"] == "active"
        # The private seed never reaches the database.
        assert json.loads(key_file.read_text())["seed"] not in repr(row)

        assert main(["keys", "list", "--dsn", dsn]) == 0
        assert key.public_key.hex() in capsys.readouterr().out

    def test_generate_without_register_touches_no_database(self, tmp_path: pathlib.Path) -> None:
        key_file = tmp_path / "k.key"
        # No --dsn and no embedded server: generating alone must not need one.
        assert main(["keys", "generate", "--key-id", "9", "--out", str(key_file),
                     "--data-dir", str(tmp_path / "no-db")]) == 0
        assert mode(key_file) == 0o600
        assert not (tmp_path / "no-db").exists()

    def test_duplicate_key_id_rejected(self, dsn: str, tmp_path: pathlib.Path, capsys) -> None:
        assert main(["keys", "generate", "--key-id", "1", "--out", str(tmp_path / "a.key"), "--register",
                     "--dsn", dsn]) == 0
        status = main(["keys", "generate", "--key-id", "1", "--out", str(tmp_path / "b.key"), "--register",
                       "--dsn", dsn])
        assert status == 1
        assert "already has key id 1" in capsys.readouterr().err
        assert not (tmp_path / "b.key").exists()

    def test_register_existing_file(self, dsn: str, tmp_path: pathlib.Path) -> None:
        key = IssuerKey.generate(12)
        key.save(tmp_path / "k.key")
        assert main(["keys", "register", "--key-file", str(tmp_path / "k.key"), "--dsn", dsn]) == 0
        assert [r["key_id"] for r in rows(dsn)] == [12]

    def test_register_rejects_open_key_file(self, dsn: str, tmp_path: pathlib.Path, capsys) -> None:
        IssuerKey.generate(12).save(tmp_path / "k.key")
        os.chmod(tmp_path / "k.key", 0o644)
        assert main(["keys", "register", "--key-file", str(tmp_path / "k.key"), "--dsn", dsn]) == 1
        assert "chmod 600" in capsys.readouterr().err
        assert rows(dsn) == []

    def test_rotate_retires_old_key(self, dsn: str, tmp_path: pathlib.Path) -> None:
        assert main(["keys", "generate", "--key-id", "1", "--out", str(tmp_path / "1.key"), "--register",
                     "--dsn", dsn]) == 0
        assert main(["keys", "rotate", "--old-key-id", "1", "--key-id", "2", "--out", str(tmp_path / "2.key"),
                     "--dsn", dsn]) == 0
        old, new = rows(dsn)
        assert old["status"] == "retired"
        assert old["retired_at"] is not None
        assert old["version"] == 2
        assert new["status"] == "active"
        assert bytes(new["public_key"]) == IssuerKey.load(tmp_path / "2.key").public_key

    def test_rotate_needs_active_old_key(self, dsn: str, tmp_path: pathlib.Path, capsys) -> None:
        status = main(["keys", "rotate", "--old-key-id", "4", "--key-id", "5", "--out", str(tmp_path / "5.key"),
                       "--dsn", dsn])
        assert status == 1
        assert "not registered" in capsys.readouterr().err
        assert not (tmp_path / "5.key").exists()

    def test_retire_at_time_and_revoke(self, dsn: str, tmp_path: pathlib.Path) -> None:
        assert main(["keys", "generate", "--key-id", "3", "--out", str(tmp_path / "3.key"), "--register",
                     "--dsn", dsn]) == 0
        assert main(["keys", "retire", "--key-id", "3", "--at", "2026-06-01T08:00", "--dsn", dsn]) == 0
        [row] = rows(dsn)
        assert row["status"] == "retired"
        # A time without an offset is local time (UTC+8).
        assert row["retired_at"].isoformat() == "2026-06-01T00:00:00+00:00"
        assert main(["keys", "revoke", "--key-id", "3", "--dsn", dsn]) == 0
        [row] = rows(dsn)
        assert row["status"] == "revoked"
        assert row["revoked_at"] is not None
        assert row["version"] == 3

    def test_unknown_key_not_found(self, dsn: str, capsys) -> None:
        assert main(["keys", "revoke", "--key-id", "77", "--dsn", dsn]) == 1
        assert "issuer key 77 not found" in capsys.readouterr().err
        assert main(["keys", "retire", "--key-id", "77", "--dsn", dsn]) == 1

    def test_retired_key_ring_from_table(self, dsn: str, tmp_path: pathlib.Path) -> None:
        # The rows the command writes build a key ring that honours the retirement time.
        assert main(["keys", "generate", "--key-id", "3", "--out", str(tmp_path / "3.key"), "--register",
                     "--dsn", dsn]) == 0
        assert main(["keys", "retire", "--key-id", "3", "--at", "2026-06-01T08:00+08:00", "--dsn", dsn]) == 0
        [row] = rows(dsn)
        ring = fastpath.KeyRing()
        ring.add(row["key_id"], bytes(row["public_key"]), row["status"],
                 retired_at_ms=int(row["retired_at"].timestamp() * 1000))
        assert ring.get(3)[1:] == ("retired", 1_780_272_000_000)


class TestCredential:
    def issue(self, tmp_path: pathlib.Path, *extra: str) -> tuple[IssuerKey, pathlib.Path]:
        key = IssuerKey.generate(1)
        key.save(tmp_path / "issuer.key")
        holder = tmp_path / "rider.json"
        assert main(["credential", "issue", "--key-file", str(tmp_path / "issuer.key"), "--out", str(holder),
                     "--birth-date", "1950-02-01", *extra]) == 0
        return key, holder

    def test_issue_and_qr_verify(self, tmp_path: pathlib.Path, capsys) -> None:
        key, holder = self.issue(tmp_path, "--priority-group", "3", "--priority-until", "2030-01-01")
        assert mode(holder) == 0o600
        capsys.readouterr()
        png, svg = tmp_path / "code.png", tmp_path / "code.svg"
        now = time.time_ns() // 1_000_000
        assert main(["credential", "qr", str(holder), "--time-ms", str(now), "--png", str(png),
                     "--svg", str(svg)]) == 0
        text = capsys.readouterr().out.strip()
        assert len(text) == 391
        assert png.read_bytes().startswith(b"\x89PNG")
        assert b"<svg" in svg.read_bytes()[:400]
        assert json.loads(holder.read_text())["counter"] == 1
        assert mode(holder) == 0o600

        ring = fastpath.KeyRing()
        ring.add(1, key.public_key)
        result = fastpath.Verifier(ring).verify(Medium.QR, text.encode(), b"", now)
        assert result.reason == Reason.ACCEPTED
        assert result.entitlements.priority_group == 3

    def test_qr_counter_advances(self, tmp_path: pathlib.Path, capsys) -> None:
        _key, holder = self.issue(tmp_path)
        main(["credential", "qr", str(holder)])
        main(["credential", "qr", str(holder)])
        assert json.loads(holder.read_text())["counter"] == 2

    def test_answer_verifies_for_device(self, tmp_path: pathlib.Path, capsys) -> None:
        key, holder = self.issue(tmp_path)
        capsys.readouterr()
        assert main(["credential", "answer", str(holder), "--device-id", "gate-7"]) == 0
        response = base64.b64decode(capsys.readouterr().out.strip())
        ring = fastpath.KeyRing()
        ring.add(1, key.public_key)
        verifier = fastpath.Verifier(ring)
        now = time.time_ns() // 1_000_000
        assert verifier.verify(Medium.CARD, response, b"gate-7", now).reason == Reason.ACCEPTED
        assert verifier.verify(Medium.CARD, response, b"gate-8", now).reason == Reason.CHALLENGE_MISMATCH

    def test_show_prints_fields(self, tmp_path: pathlib.Path, capsys) -> None:
        _key, holder = self.issue(tmp_path, "--student-until", "2027-07-31")
        capsys.readouterr()
        assert main(["credential", "show", str(holder)]) == 0
        out = capsys.readouterr().out
        assert "birth_date        1950-02-01" in out
        assert "student_until     2027-07-31" in out
        assert "holder_seed" not in out

    def test_holder_file_readable_by_others_rejected(self, tmp_path: pathlib.Path, capsys) -> None:
        _key, holder = self.issue(tmp_path)
        os.chmod(holder, 0o644)
        assert main(["credential", "qr", str(holder)]) == 1
        err = capsys.readouterr().err
        assert "chmod 600" in err
        # The mode message is shown once, not wrapped as "not a valid holder file".
        assert err.count("chmod 600") == 2
        assert "not a valid tapgate holder file" not in err

    def test_bad_token_named(self, tmp_path: pathlib.Path, capsys) -> None:
        key = IssuerKey.generate(1)
        key.save(tmp_path / "issuer.key")
        status = main(["credential", "issue", "--key-file", str(tmp_path / "issuer.key"), "--out",
                       str(tmp_path / "r.json"), "--birth-date", "1950-02-01", "--holder-token", "abcd"])
        assert status == 1
        assert "--holder-token 'abcd' must be 32 hex digits" in capsys.readouterr().err

    def test_bad_nonce_named(self, tmp_path: pathlib.Path, capsys) -> None:
        _key, holder = self.issue(tmp_path)
        assert main(["credential", "answer", str(holder), "--device-id", "g", "--nonce", "00"]) == 1
        assert "--nonce '00' must be 32 hex digits" in capsys.readouterr().err


def test_help_in_subprocess() -> None:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("TAPGATE_")}
    result = subprocess.run([sys.executable, "-m", "tapgate", "--help"], capture_output=True, text=True,
                            env=environ, timeout=60)
    assert result.returncode == 0
    assert "keys" in result.stdout
    assert "credential" in result.stdout


@pytest.mark.parametrize("action", ["generate", "register", "list", "retire", "revoke", "rotate"])
def test_keys_actions_have_help(action: str, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["keys", action, "--help"])
    assert exit_info.value.code == 0
    assert "/" in capsys.readouterr().out
