"""Taps over real HTTP: accepted, each rejection reason, retries, conflicts, batches and MessagePack."""

from __future__ import annotations

import asyncio
import datetime as dt

import asyncpg
import msgspec

from gateway.client import MSGPACK
from gateway.reasons import Reason
from tests.gateway.conftest import DAY_MS, GATE, ROUTE, SITE, VALIDATOR, GatewayEnv, now_ms


async def wait_for_refresh(env: GatewayEnv) -> None:
    """Wait longer than two refresh intervals, so the worker has polled PostgreSQL since a change."""
    await asyncio.sleep(2.5 * env.worker.config.server.refresh_interval_s + 0.1)


async def test_qr_tap_accepted_and_journaled(gateway_env: GatewayEnv) -> None:
    env = gateway_env
    tap = env.qr_tap(env.phone())
    async with env.client() as client:
        response = await client.tap(tap)
    assert response.status == 200
    answer = response.decode()
    assert answer["decision"] == "accepted"
    assert answer["reason"] == 0
    assert answer["reason_name"] == "accepted"
    assert answer["tap_id"] == tap["tap_id"]
    assert answer["fare_fen"] > 0
    assert answer["display_zh"] and answer["display_en"]
    assert abs(answer["server_time_ms"] - now_ms()) < 5000

    [row] = await env.journal_rows()
    assert row["tap_id"] == answer["journal_id"]
    assert row["device_tap_id"] == tap["tap_id"]
    assert row["decision"] == 1
    assert row["fare_fen"] == answer["fare_fen"]
    assert row["operator_id"] == "yiyuan-bus"
    assert row["route_id"] == ROUTE
    assert row["medium"] == 2


async def test_card_tap_accepted(gateway_env: GatewayEnv) -> None:
    env = gateway_env
    async with env.client() as client:
        response = await client.tap(env.card_tap(env.card()))
    assert response.status == 200
    assert response.decode()["decision"] == "accepted"
    [row] = await env.journal_rows()
    assert row["medium"] == 1


async def test_elderly_rider_priced_by_rules(gateway_env: GatewayEnv) -> None:
    env = gateway_env
    adult = env.qr_tap(env.phone())
    elderly = env.qr_tap(env.phone(birth_date=dt.date(1940, 5, 1)))
    async with env.client() as client:
        adult_answer = (await client.tap(adult)).decode()
        elderly_answer = (await client.tap(elderly)).decode()
    assert elderly_answer["decision"] == "accepted"
    assert elderly_answer["fare_fen"] < adult_answer["fare_fen"]
    assert elderly_answer["full_fare_fen"] == adult_answer["full_fare_fen"]
    assert elderly_answer["rider_category"] != adult_answer["rider_category"]


async def test_msgpack_tap_answered_in_msgpack(gateway_env: GatewayEnv) -> None:
    env = gateway_env
    async with env.client(content_type=MSGPACK) as client:
        response = await client.tap(env.qr_tap(env.phone()))
    assert response.status == 200
    assert response.headers["content-type"] == MSGPACK
    assert msgspec.msgpack.decode(response.body)["decision"] == "accepted"


async def test_retry_returns_original_answer(gateway_env: GatewayEnv) -> None:
    env = gateway_env
    tap = env.qr_tap(env.phone())
    async with env.client() as client:
        first = (await client.tap(tap)).decode()
        # A retry is a new request (new nonce) with the same body.
        second_response = await client.tap(tap)
    second = second_response.decode()
    assert second_response.status == 200
    assert second["journal_id"] == first["journal_id"]
    assert second["decision"] == first["decision"] == "accepted"
    assert second["fare_fen"] == first["fare_fen"]
    assert len(await env.journal_rows()) == 1


async def test_same_tap_id_other_body_gets_409(gateway_env: GatewayEnv) -> None:
    env = gateway_env
    phone = env.phone()
    tap = env.qr_tap(phone)
    other = env.qr_tap(phone, tap_id=tap["tap_id"])
    async with env.client() as client:
        assert (await client.tap(tap)).status == 200
        response = await client.tap(other)
    assert response.status == 409
    error = response.decode()["error"]
    assert error["code"] == "tap_id_conflict"
    assert error["field"] == "$.tap_id"
    assert error["message_zh"] and error["message_en"]
    assert len(await env.journal_rows()) == 1


async def test_replayed_qr_code_rejected(gateway_env: GatewayEnv) -> None:
    env = gateway_env
    first = env.qr_tap(env.phone())
    replay = dict(first, tap_id=next(env.tap_ids))
    async with env.client() as client:
        assert (await client.tap(first)).decode()["decision"] == "accepted"
        answer = (await client.tap(replay)).decode()
    assert answer["decision"] == "rejected"
    assert answer["reason"] == Reason.REPLAYED
    assert answer["fare_fen"] == 0
    rows = await env.journal_rows()
    assert [row["reason"] for row in rows] == [0, Reason.REPLAYED]


async def test_card_tapped_twice_is_duplicate(gateway_env: GatewayEnv) -> None:
    env = gateway_env
    card = env.card()
    async with env.client() as client:
        first = (await client.tap(env.card_tap(card))).decode()
        second = (await client.tap(env.card_tap(card))).decode()
    assert first["decision"] == "accepted"
    assert second["decision"] == "rejected"
    assert second["reason"] == Reason.DUPLICATE_TAP


async def test_expired_code_rejected(gateway_env: GatewayEnv) -> None:
    env = gateway_env
    old = now_ms() - 10 * 60_000
    tap = env.qr_tap(env.phone(), tap_time_ms=old)
    async with env.client() as client:
        answer = (await client.tap(tap)).decode()
    assert answer["decision"] == "rejected"
    assert answer["reason"] == Reason.CODE_EXPIRED
    assert answer["display_zh"] == "乘车码已过期，请刷新"
    [row] = await env.journal_rows()
    assert row["decision"] == 0
    assert row["reason"] == Reason.CODE_EXPIRED


async def test_forged_signature_rejected(gateway_env: GatewayEnv) -> None:
    env = gateway_env
    card = env.card()
    tap = env.card_tap(card)
    raw = bytearray(__import__("base64").b64decode(tap["presented"]))
    raw[-1] ^= 0x01  # flip one bit of the card's signature
    tap["presented"] = __import__("base64").b64encode(bytes(raw)).decode()
    async with env.client() as client:
        answer = (await client.tap(tap)).decode()
    assert answer["reason"] == Reason.HOLDER_SIGNATURE_INVALID


async def test_unreadable_card_response_is_malformed(gateway_env: GatewayEnv) -> None:
    env = gateway_env
    tap = env.card_tap(env.card(), presented="not base64!")
    async with env.client() as client:
        answer = (await client.tap(tap)).decode()
    assert answer["reason"] == Reason.MALFORMED


async def test_card_answer_for_other_reader_rejected(gateway_env: GatewayEnv) -> None:
    env = gateway_env
    tap = env.card_tap(env.card(), device_id="another-reader")
    async with env.client() as client:
        answer = (await client.tap(tap)).decode()
    assert answer["reason"] == Reason.CHALLENGE_MISMATCH


async def test_lost_card_rejected_after_refresh(gateway_env: GatewayEnv) -> None:
    from gateway.denylist import add_entry

    env = gateway_env
    card = env.card()
    conn = await __import__("asyncpg").connect(env.dsn)
    try:
        await add_entry(conn, "card_lost", card.fields.credential_id, "test")
    finally:
        await conn.close()
    await wait_for_refresh(env)
    async with env.client() as client:
        answer = (await client.tap(env.card_tap(card))).decode()
    assert answer["reason"] == Reason.CARD_REPORTED_LOST


async def test_account_in_arrears_rejected(gateway_env: GatewayEnv) -> None:
    from gateway.denylist import add_entry

    env = gateway_env
    phone = env.phone()
    conn = await __import__("asyncpg").connect(env.dsn)
    try:
        await add_entry(conn, "arrears", phone.fields.account_token, "test")
    finally:
        await conn.close()
    await wait_for_refresh(env)
    async with env.client() as client:
        answer = (await client.tap(env.qr_tap(phone))).decode()
    assert answer["reason"] == Reason.ACCOUNT_IN_ARREARS


async def test_revoked_issuer_key_reaches_worker(gateway_env: GatewayEnv) -> None:
    env = gateway_env
    await env.execute("UPDATE issuer_keys SET status = 'revoked', revoked_at = now(), version = version + 1")
    await wait_for_refresh(env)
    async with env.client() as client:
        answer = (await client.tap(env.qr_tap(env.phone()))).decode()
    assert answer["reason"] == Reason.REVOKED_KEY


async def test_gate_entry_once_per_day(gateway_env: GatewayEnv) -> None:
    env = gateway_env
    card = env.card()
    # The first entry was recorded offline two minutes ago, past the card duplicate
    # window, so the fare rules decide the second one.
    earlier = now_ms() - 120_000
    async with env.client(env.gate) as client:
        first = (await client.tap(env.card_tap(card, GATE, tap_time_ms=earlier, route_id=None, stop_id=None,
                                               site_id=SITE, tap_kind="entry", offline=True))).decode()
        second = (await client.tap(env.card_tap(card, GATE, route_id=None, stop_id=None, site_id=SITE,
                                                tap_kind="entry"))).decode()
    assert first["decision"] == "accepted"
    assert second["reason"] == Reason.ALREADY_ENTERED_TODAY
    assert second["display_zh"]


async def test_batch_upload_of_offline_taps(gateway_env: GatewayEnv) -> None:
    env = gateway_env
    earlier = now_ms() - 3_600_000
    taps = [env.qr_tap(env.phone(), tap_time_ms=earlier + i * 1000, offline=True) for i in range(5)]
    async with env.client() as client:
        response = await client.tap_batch(taps)
        again = await client.tap_batch(taps)
    assert response.status == 200
    results = response.decode()["results"]
    assert [r["tap_id"] for r in results] == [t["tap_id"] for t in taps]
    assert all(r["decision"] == "accepted" for r in results)
    assert all(r["status"] == "new" for r in results)
    assert [r["status"] for r in again.decode()["results"]] == ["retry"] * 5
    rows = await env.journal_rows()
    assert len(rows) == 5
    assert all(row["offline"] for row in rows)


async def test_offline_tap_too_old_rejected(gateway_env: GatewayEnv) -> None:
    env = gateway_env
    # A tap 36 days old is past the 7-day offline upload limit. The fast path
    # rejects it before pricing, although no rule set was in effect then either.
    old = now_ms() - 36 * DAY_MS
    async with env.client() as client:
        answer = (await client.tap(env.qr_tap(env.phone(), tap_time_ms=old, offline=True))).decode()
    assert answer["reason"] == Reason.OFFLINE_UPLOAD_TOO_LATE


async def test_offline_tap_at_time_zero_rejected(gateway_env: GatewayEnv) -> None:
    # The fast path reads tap time 0 as an online tap. As an offline upload it
    # used to pass the time checks at the server's clock, be priced at 1970
    # and claim the QR code's replay key with a tap time that the replay-key
    # retention deletes at its next run.
    env = gateway_env
    tap = env.qr_tap(env.phone(), offline=True)
    async with env.client() as client:
        answer = (await client.tap(dict(tap, tap_time_ms=0))).decode()
    assert answer["reason"] == Reason.OFFLINE_UPLOAD_TOO_LATE
    conn = await asyncpg.connect(env.dsn)
    try:
        assert await conn.fetchval("SELECT count(*) FROM replay_keys") == 0
    finally:
        await conn.close()


async def test_batch_over_limit_gets_422(gateway_env: GatewayEnv) -> None:
    env = gateway_env
    limit = env.worker.config.server.batch_taps_max
    phone = env.phone()
    tap = env.qr_tap(phone, offline=True)
    taps = [dict(tap, tap_id=i) for i in range(limit + 1)]
    async with env.client() as client:
        response = await client.tap_batch(taps)
    assert response.status == 422
    assert response.decode()["error"]["field"] == "$.taps"
    assert await env.journal_rows() == []


async def test_values_the_journal_cannot_store_get_422(gateway_env: GatewayEnv) -> None:
    # A time past year 9999 or a NUL in an id used to reach the journal writer and answer 500.
    env = gateway_env
    tap = env.qr_tap(env.phone())
    async with env.client() as client:
        far = await client.tap(dict(tap, tap_time_ms=2**62))
        nul = await client.tap(dict(tap, tap_id=tap["tap_id"] + 1, stop_id="a\x00b"))
    assert far.status == 422
    assert far.decode()["error"]["field"] == "$.tap_time_ms"
    assert nul.status == 422
    assert nul.decode()["error"]["field"] == "$.stop_id"
    assert await env.journal_rows() == []


async def test_deny_list_delta(gateway_env: GatewayEnv) -> None:
    from gateway.denylist import add_entry, remove_entry

    env = gateway_env
    lost = env.card().fields.credential_id
    conn = await __import__("asyncpg").connect(env.dsn)
    try:
        await add_entry(conn, "card_lost", lost, "test")
        async with env.client() as client:
            full = (await client.deny_list(0)).decode()
            await remove_entry(conn, "card_lost", lost, "test")
            delta = (await client.deny_list(full["version"])).decode()
            empty = (await client.deny_list(delta["version"])).decode()
    finally:
        await conn.close()
    assert [(e["kind"], e["subject"], e["active"]) for e in full["entries"]] == [("card_lost", lost.hex(), True)]
    assert [(e["subject"], e["active"]) for e in delta["entries"]] == [(lost.hex(), False)]
    assert delta["version"] > full["version"]
    assert empty["entries"] == []
    assert empty["version"] == delta["version"]


async def test_concurrent_taps_all_journaled(gateway_env: GatewayEnv) -> None:
    env = gateway_env
    taps = [env.qr_tap(env.phone()) for _ in range(40)]
    clients = [env.client() for _ in range(8)]
    for client in clients:
        await client.connect()
    try:
        answers = await asyncio.gather(*(clients[i % 8].tap(tap) for i, tap in enumerate(taps)))
    finally:
        for client in clients:
            await client.close()
    assert all(a.status == 200 for a in answers)
    rows = await env.journal_rows()
    assert sorted(row["device_tap_id"] for row in rows) == sorted(t["tap_id"] for t in taps)
    assert {a.decode()["journal_id"] for a in answers} == {row["tap_id"] for row in rows}


async def test_validator_tap_fills_route_from_registry(gateway_env: GatewayEnv) -> None:
    env = gateway_env
    tap = env.qr_tap(env.phone())
    del tap["route_id"]
    async with env.client() as client:
        answer = (await client.tap(tap)).decode()
    assert answer["decision"] == "accepted"
    [row] = await env.journal_rows(VALIDATOR)
    assert row["route_id"] == ROUTE


async def test_late_upload_priced_by_version_then_in_effect(gateway_env: GatewayEnv) -> None:
    from gateway.rules import example_document_text, store

    env = gateway_env
    # A fare rise to 150 fen takes effect one hour ago; a tap recorded offline
    # two hours ago keeps the old 100 fen fare.
    text = example_document_text().replace('product_id = "urban-single"\nkind = "single_ride"\nprice_fen = 100',
                                           'product_id = "urban-single"\nkind = "single_ride"\nprice_fen = 150')
    assert "price_fen = 150" in text
    conn = await __import__("asyncpg").connect(env.dsn)
    try:
        version = await store.create_draft(conn, text, "toml", "test")
        await store.publish(conn, version, now_ms() - 3_600_000, "test", allow_past=True)
    finally:
        await conn.close()
    await wait_for_refresh(env)
    async with env.client() as client:
        old = (await client.tap(env.qr_tap(env.phone(), tap_time_ms=now_ms() - 7_200_000, offline=True))).decode()
        new = (await client.tap(env.qr_tap(env.phone()))).decode()
    assert old["fare_fen"] == 100
    assert new["fare_fen"] == 150
    rows = await env.journal_rows()
    assert [row["rule_set_version"] for row in rows] == [version - 1, version]


async def test_tap_before_any_rule_set_rejected(dsn: str) -> None:
    from gateway.server import Worker
    from tests.gateway.conftest import GatewayEnv as Env, seed, worker_config

    issuer, validator, gate = await seed(dsn, rules_from_ms=now_ms() - 3_600_000)
    worker = Worker(worker_config(), dsn)
    await worker.start()
    env = Env(dsn, worker, issuer, validator, gate)
    try:
        async with env.client() as client:
            answer = (await client.tap(env.qr_tap(env.phone(), tap_time_ms=now_ms() - 2 * 3_600_000,
                                                  offline=True))).decode()
    finally:
        await worker.drain(5.0)
    assert answer["reason"] == Reason.NO_RULE_SET
    assert answer["display_en"] == "No fare rules in effect"


async def test_unknown_issuer_key_rejected(gateway_env: GatewayEnv) -> None:
    from fastpath.issuer import IssuerKey, Phone

    env = gateway_env
    stranger = IssuerKey.generate(key_id=9)
    phone = Phone.new(stranger, valid_from_ms=now_ms() - DAY_MS)
    async with env.client() as client:
        answer = (await client.tap(env.qr_tap(phone))).decode()
    assert answer["reason"] == Reason.UNKNOWN_KEY


async def test_expired_credential_rejected(gateway_env: GatewayEnv) -> None:
    from fastpath.issuer import Phone

    env = gateway_env
    phone = Phone.new(env.issuer, valid_from_ms=now_ms() - 10 * DAY_MS, valid_until_ms=now_ms() - DAY_MS)
    async with env.client() as client:
        answer = (await client.tap(env.qr_tap(phone))).decode()
    assert answer["reason"] == Reason.CREDENTIAL_EXPIRED


async def test_revoked_credential_rejected(gateway_env: GatewayEnv) -> None:
    from gateway.denylist import add_entry

    env = gateway_env
    phone = env.phone()
    conn = await __import__("asyncpg").connect(env.dsn)
    try:
        await add_entry(conn, "credential_revoked", phone.fields.credential_id, "test")
    finally:
        await conn.close()
    await wait_for_refresh(env)
    async with env.client() as client:
        answer = (await client.tap(env.qr_tap(phone))).decode()
    assert answer["reason"] == Reason.CREDENTIAL_REVOKED


async def test_route_without_fare_rejected(gateway_env: GatewayEnv) -> None:
    from gateway import devices
    from gateway.client import DeviceCredentials

    env = gateway_env
    conn = await __import__("asyncpg").connect(env.dsn)
    try:
        secret = await devices.add_device(conn, "bus-99-001", "yiyuan-bus", "validator", route_id="99")
    finally:
        await conn.close()
    await wait_for_refresh(env)
    async with env.client(DeviceCredentials("bus-99-001", secret)) as client:
        answer = (await client.tap(env.qr_tap(env.phone(), route_id="99"))).decode()
    assert answer["decision"] == "rejected"
    assert answer["reason"] == Reason.NO_FARE_RULE
    assert answer["fare_fen"] == 0


async def test_code_from_future_rejected(gateway_env: GatewayEnv) -> None:
    env = gateway_env
    ahead = now_ms() + 5 * 60_000
    tap = env.qr_tap(env.phone(), tap_time_ms=ahead)
    tap["tap_time_ms"] = now_ms()
    async with env.client() as client:
        answer = (await client.tap(tap)).decode()
    assert answer["reason"] == Reason.CODE_FROM_FUTURE


async def test_credential_not_yet_valid_rejected(gateway_env: GatewayEnv) -> None:
    from fastpath.issuer import Phone

    env = gateway_env
    phone = Phone.new(env.issuer, valid_from_ms=now_ms() + DAY_MS)
    async with env.client() as client:
        answer = (await client.tap(env.qr_tap(phone))).decode()
    assert answer["reason"] == Reason.CREDENTIAL_NOT_YET_VALID


async def test_altered_credential_fails_issuer_signature(gateway_env: GatewayEnv) -> None:
    import base64

    env = gateway_env
    tap = env.card_tap(env.card())
    raw = bytearray(base64.b64decode(tap["presented"]))
    raw[2 + 40] ^= 0x01  # one bit of the holder token inside the issuer-signed credential body
    tap["presented"] = base64.b64encode(bytes(raw)).decode()
    async with env.client() as client:
        answer = (await client.tap(tap)).decode()
    assert answer["reason"] == Reason.ISSUER_SIGNATURE_INVALID


async def test_online_tap_time_must_match_signed_time(gateway_env: GatewayEnv) -> None:
    # A fresh, validly signed code whose online tap claims another hour: a
    # device must not move a tap to off-peak or to another day.
    env = gateway_env
    tap = env.qr_tap(env.phone())
    tap["tap_time_ms"] = now_ms() - 3 * 3_600_000
    async with env.client() as client:
        answer = (await client.tap(tap)).decode()
    assert answer["decision"] == "rejected"
    assert answer["reason"] == Reason.TAP_TIME_INVALID
    assert answer["fare_fen"] == 0
    [row] = await env.journal_rows()
    assert row["reason"] == Reason.TAP_TIME_INVALID
