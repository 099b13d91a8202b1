"""Provisioning into a real database, and the journal comparison against real ``taps`` rows."""

from __future__ import annotations

import os
import pathlib
import stat

import asyncpg
import msgspec
import pytest

from fastpath.issuer import parse_credential
from loadtests import scenario as sc
from loadtests.answers import Answer, AnswerLog, read_answers
from loadtests.check import check_run, compare
from loadtests.fixture import Fixture, provision, read_fixture


async def test_provision_registers_devices_key_and_deny_list(dsn: str, small_model: sc.TrafficModel,
                                                             tmp_path: pathlib.Path) -> None:
    made = await provision(dsn, small_model, tmp_path / "fixture.json", tmp_path / "issuer.key",
                           devices_min={"bus": 60})
    conn = await asyncpg.connect(dsn)
    try:
        devices = await conn.fetch("SELECT device_id, kind, route_id, site_id, secret FROM devices")
        key = await conn.fetchrow("SELECT public_key, status FROM issuer_keys WHERE key_id = $1", made.issuer_key_id)
        deny = await conn.fetch("SELECT kind, subject FROM deny_list WHERE active")
    finally:
        await conn.close()

    assert {d["device_id"]: bytes(d["secret"]) for d in devices} == {d.device_id: d.secret for d in made.devices}
    assert sum(1 for d in made.devices if d.scenario == "bus") >= 60
    assert bytes(key["public_key"]) == made.issuer_public_key
    lost = {parse_credential(h.card_credential).credential_id for h in made.holders if h.status == "lost"}
    arrears = {h.account_token for h in made.holders if h.status == "arrears"}
    assert {bytes(r["subject"]) for r in deny if r["kind"] == "card_lost"} == lost
    assert {bytes(r["subject"]) for r in deny if r["kind"] == "arrears"} == arrears
    assert len(lost) == small_model.lost_cards


async def test_fixture_file_private_and_readable(dsn: str, small_model: sc.TrafficModel,
                                                 tmp_path: pathlib.Path) -> None:
    path = tmp_path / "fixture.json"
    made = await provision(dsn, small_model, path, tmp_path / "issuer.key")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(tmp_path / "issuer.key").st_mode) == 0o600
    assert read_fixture(path) == made


async def test_second_provision_uses_new_key_id(dsn: str, small_model: sc.TrafficModel,
                                                tmp_path: pathlib.Path) -> None:
    first = await provision(dsn, small_model, tmp_path / "a.json", tmp_path / "a.key")
    second = await provision(dsn, small_model, tmp_path / "b.json", tmp_path / "b.key")
    assert second.issuer_key_id == first.issuer_key_id + 1
    assert not set(first.device_ids()) & set(second.device_ids())


def answer(device_id: str, tap_id: int, journal_id: int | None, decision: str = "accepted", reason: int = 0,
           kind: str = sc.VALID_QR, status: int = 200) -> Answer:
    return Answer(device_id=device_id, tap_id=tap_id, kind=kind, scenario="bus", medium="qr", sent_ms=0,
                  status=status, decision=decision if status == 200 else None,
                  reason=reason if status == 200 else None, journal_id=journal_id)


def row(device_id: str, device_tap_id: int, tap_id: int, decision: int = 1, reason: int = 0) -> dict:
    return {"device_id": device_id, "device_tap_id": device_tap_id, "tap_id": tap_id, "decision": decision,
            "reason": reason}


def test_compare_passes_matching_journal(small_fixture: Fixture) -> None:
    device = small_fixture.devices[0].device_id
    answers = [answer(device, 1, 100), answer(device, 2, 101, "rejected", 43, sc.REPLAYED_QR)]
    report = compare(answers, [row(device, 1, 100), row(device, 2, 101, 0, 43)], small_fixture, [61])
    assert report.passed
    assert report.acknowledged == 2
    assert report.by_kind[sc.REPLAYED_QR].reasons == {"43": 1}


@pytest.mark.parametrize("journal, counter", [
    ([], "journal_mismatches"),
    ([{"tap_id": 100}, {"tap_id": 107}], "journal_mismatches"),
    ([{"tap_id": 100, "decision": 0, "reason": 43}], "journal_mismatches"),
    ([{"tap_id": 999}], "journal_mismatches"),
    ([{"tap_id": 100}, {"tap_id": 300, "device_tap_id": 77}], "journal_rows_never_sent"),
])
def test_compare_finds_journal_problems(small_fixture: Fixture, journal: list[dict], counter: str) -> None:
    device = small_fixture.devices[0].device_id
    rows = [row(device, r.get("device_tap_id", 1), r["tap_id"], r.get("decision", 1), r.get("reason", 0))
            for r in journal]
    report = compare([answer(device, 1, 100)], rows, small_fixture, [61])
    assert not report.passed
    assert getattr(report, counter) == 1
    assert report.problems


def test_compare_fails_accepted_forgery(small_fixture: Fixture) -> None:
    device = small_fixture.devices[0].device_id
    report = compare([answer(device, 1, 100, kind=sc.FORGED_ISSUER)], [row(device, 1, 100)], small_fixture, [61])
    assert not report.passed
    assert report.forged_or_replayed_accepted == 1
    assert "forged_issuer" in report.problems[0]


def test_compare_fails_rejected_valid_code(small_fixture: Fixture) -> None:
    device = small_fixture.devices[0].device_id
    report = compare([answer(device, 1, 100, "rejected", 9)], [row(device, 1, 100, 0, 9)], small_fixture, [61])
    assert not report.passed
    assert report.valid_rejected == 1


def test_compare_counts_unacknowledged_rows(small_fixture: Fixture) -> None:
    device = small_fixture.devices[0].device_id
    answers = [answer(device, 1, 100), answer(device, 2, None, status=0)]
    report = compare(answers, [row(device, 1, 100), row(device, 2, 101)], small_fixture, [61])
    assert report.passed
    assert report.not_acknowledged == 1
    assert report.journal_rows_unacknowledged == 1


def test_compare_fails_unknown_device_row(small_fixture: Fixture) -> None:
    device = small_fixture.devices[0].device_id
    unknown = small_fixture.unknown_devices[0].device_id
    answers = [answer(device, 1, 100), answer(unknown, 5, None, kind=sc.UNKNOWN_DEVICE, status=401)]
    report = compare(answers, [row(device, 1, 100), row(unknown, 5, 101)], small_fixture, [61])
    assert not report.passed
    assert report.unknown_device_rows == 1


async def test_check_run_reads_journal(dsn: str, small_model: sc.TrafficModel, tmp_path: pathlib.Path) -> None:
    made = await provision(dsn, small_model, tmp_path / "fixture.json", tmp_path / "issuer.key")
    device = made.devices[0]
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            "INSERT INTO taps (tap_id, business_day, batch_id, device_id, device_tap_id, tap_time, received_at, "
            "operator_id, route_id, tap_kind, medium, decision, reason, request_digest) "
            "VALUES (nextval('tap_id_seq'), current_date, 1, $1, 1, now(), now(), $2, $3, 0, 2, 0, 43, '\\x00')",
            device.device_id, device.operator_id, device.route_id)
        journal_id = await conn.fetchval("SELECT tap_id FROM taps WHERE device_id = $1", device.device_id)
    finally:
        await conn.close()

    log = AnswerLog(tmp_path / "answers")
    log.write(answer(device.device_id, 1, journal_id, "rejected", 43, sc.REPLAYED_QR))
    log.close()
    assert len(list(read_answers(tmp_path / "answers"))) == 1

    good = await check_run(dsn, tmp_path / "answers", made, [61])
    assert good.passed
    assert good.journal_rows == 1

    log = AnswerLog(tmp_path / "answers")
    log.write(answer(device.device_id, 2, journal_id + 1))
    log.close()
    bad = await check_run(dsn, tmp_path / "answers", made, [61])
    assert not bad.passed
    assert bad.journal_mismatches == 1
    assert msgspec.json.decode(msgspec.json.encode(bad))["passed"] is False


async def test_provision_publishes_example_rules_once(dsn: str, small_model: sc.TrafficModel,
                                                      tmp_path: pathlib.Path) -> None:
    await provision(dsn, small_model, tmp_path / "a.json", tmp_path / "a.key")
    await provision(dsn, small_model, tmp_path / "b.json", tmp_path / "b.key")
    conn = await asyncpg.connect(dsn)
    try:
        published = await conn.fetch("SELECT rule_set_id FROM rule_set_versions WHERE status = 'published'")
    finally:
        await conn.close()
    assert [r["rule_set_id"] for r in published] == ["yiyuan"]


def test_model_ids_match_example_rule_set(small_model: sc.TrafficModel) -> None:
    # Every route, stop and site the traffic model taps must exist in the example rule set.
    import importlib.resources

    from gateway.rules import load_rule_set_document

    text = (importlib.resources.files("gateway.rules.examples") / "yiyuan.toml").read_text(encoding="utf-8")
    doc = load_rule_set_document(text, fmt="toml")
    routes = {route for network in doc.networks for route in network.routes}
    area_network_routes = {route for network in doc.networks if network.fare_structure == "area"
                           for route in network.routes}
    stops = {stop for area in doc.areas for stop in area.stops}
    assert {r.route_id for r in small_model.routes} <= routes
    for route in small_model.routes:
        assert (route.fare_structure == "area") == (route.route_id in area_network_routes)
        if route.fare_structure == "area":
            assert set(route.stops) <= stops
    assert {s.site_id for s in small_model.sites} == {s.site_id for s in doc.sites}


async def test_check_ignores_rows_before_run(dsn: str, small_model: sc.TrafficModel, tmp_path: pathlib.Path) -> None:
    # A reused fixture's devices have rows from earlier runs; they are not this run's strays.
    import time

    made = await provision(dsn, small_model, tmp_path / "fixture.json", tmp_path / "issuer.key")
    device = made.devices[0]
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            "INSERT INTO taps (tap_id, business_day, batch_id, device_id, device_tap_id, tap_time, received_at, "
            "operator_id, route_id, tap_kind, medium, decision, reason, request_digest) "
            "VALUES (nextval('tap_id_seq'), current_date, 1, $1, 9, now(), now() - interval '1 hour', $2, $3, "
            "0, 2, 1, 0, '\\x00')",
            device.device_id, device.operator_id, device.route_id)
    finally:
        await conn.close()
    (tmp_path / "answers").mkdir()

    everything = await check_run(dsn, tmp_path / "answers", made, [61])
    assert everything.journal_rows_never_sent == 1
    this_run = await check_run(dsn, tmp_path / "answers", made, [61], since_ms=time.time_ns() // 1_000_000 - 60_000)
    assert this_run.journal_rows == 0
