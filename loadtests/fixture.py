"""Provisioning for a load test, and the fixture file the Locust processes read.

:func:`provision` makes everything a run needs ahead of time and stores the
public half in PostgreSQL, as the card platform and the device registry
would: an issuer key (public key in ``issuer_keys``), validators and gates
with secrets (``devices``), holders with a card and a phone each (their
credentials and holder keys stay in the fixture file only), lost cards and
accounts in arrears (``deny_list``). It also makes a rogue issuer key with
the same key id, whose credentials must fail the issuer signature check,
and ids for devices that are never registered.

The fixture file contains device secrets and holder keys, so it is written
with mode 0600. It is test data, never production data.
"""

from __future__ import annotations

import datetime as dt
import importlib.resources
import math
import os
import pathlib
import random
import secrets
import time

import asyncpg
import msgspec

from fastpath.entitlements import Entitlements, PriorityGroup
from fastpath.issuer import IssuerKey, issue_credential, new_token, parse_credential
from gateway.timeutil import LOCAL_TZ
from loadtests.scenario import TrafficModel

FIXTURE_VERSION = 1
# Source of the deny-list rows and actor of the rule-set publication that provisioning writes.
ACTOR = "loadtest"
# Rogue holders made by the rogue issuer key, enough to spread forged taps.
ROGUE_HOLDERS = 16
UNKNOWN_DEVICES = 16
DAY_MS = 86_400_000


class Holder(msgspec.Struct, kw_only=True):
    index: int
    # Rider category kind the entitlements were made for (see scenario.CATEGORY_KINDS).
    category: str
    # "ok", "lost" (the card is on the deny list) or "arrears" (the account is).
    status: str
    account_token: bytes
    card_credential: bytes
    card_seed: bytes
    phone_credential: bytes
    phone_seed: bytes


class Device(msgspec.Struct, kw_only=True):
    device_id: str
    secret: bytes
    # The user class that drives it: "bus", "scenic" or "venue".
    scenario: str
    operator_id: str
    route_id: str | None = None
    site_id: str | None = None


class Fixture(msgspec.Struct, kw_only=True):
    version: int = FIXTURE_VERSION
    # Short random tag in every device id of this fixture, so runs never collide.
    tag: str
    created_at_ms: int
    issuer_key_id: int
    issuer_public_key: bytes
    devices: list[Device]
    # Ids and secrets of devices that are not registered: the gateway must reject their requests.
    unknown_devices: list[Device]
    holders: list[Holder]
    # Holders whose credentials the rogue issuer signed.
    rogue_holders: list[Holder]

    def device_ids(self) -> list[str]:
        return [device.device_id for device in self.devices]


def entitlements_for(category: str, today: dt.date, rng: random.Random) -> Entitlements:
    """Return entitlements that make a holder of ``category`` on ``today`` (local date)."""
    def born(years: int) -> dt.date:
        return today - dt.timedelta(days=years * 365 + years // 4 + rng.randrange(1, 300))

    later = today + dt.timedelta(days=730)
    if category == "elderly":
        return Entitlements(birth_date=born(rng.randrange(66, 90)))
    if category == "child":
        return Entitlements(birth_date=born(rng.randrange(2, 5)))
    if category == "student":
        return Entitlements(birth_date=born(rng.randrange(16, 22)), student_until=later)
    if category == "disabled":
        return Entitlements(birth_date=born(rng.randrange(25, 60)), disability_until=later)
    if category == "priority":
        return Entitlements(birth_date=born(rng.randrange(30, 70)), priority_until=later,
                            priority_group=PriorityGroup.VETERAN)
    return Entitlements(birth_date=born(rng.randrange(25, 58)))


def _make_holder(issuer: IssuerKey, index: int, category: str, status: str, entitlements: Entitlements,
                 now_ms: int) -> Holder:
    """Issue one card and one phone credential (each with its own holder key) for one holder."""
    import nacl.signing

    holder_token = new_token()
    account_token = new_token()
    credentials = []
    for _ in range(2):
        seed = secrets.token_bytes(32)
        public_key = bytes(nacl.signing.SigningKey(seed).verify_key)
        credential = issue_credential(issuer, holder_token=holder_token, account_token=account_token,
                                      entitlements=entitlements, valid_from_ms=now_ms - DAY_MS,
                                      valid_until_ms=now_ms + 90 * DAY_MS, holder_public_key=public_key)
        credentials.append((credential, seed))
    (card, card_seed), (phone, phone_seed) = credentials
    return Holder(index=index, category=category, status=status, account_token=account_token,
                  card_credential=card, card_seed=card_seed, phone_credential=phone, phone_seed=phone_seed)


def _scale(counts: list[int], minimum: int) -> int:
    """Return the factor (1 or more) by which ``counts`` must grow to add up to ``minimum``."""
    total = sum(counts)
    return max(1, math.ceil(minimum / total)) if total else 1


def make_fixture(model: TrafficModel, issuer: IssuerKey, *, seed: int | None = None,
                 now_ms: int | None = None, devices_min: dict[str, int] | None = None) -> Fixture:
    """Make devices and holders for ``model``; nothing is written anywhere.

    ``devices_min`` maps a user class ("bus", "scenic", "venue") to the
    devices it needs at least; the model's buses and gates are multiplied
    to reach it.
    """
    rng = random.Random(seed)
    now_ms = now_ms if now_ms is not None else time.time_ns() // 1_000_000
    today = dt.datetime.fromtimestamp(now_ms / 1000, LOCAL_TZ).date()
    tag = secrets.token_hex(3)
    devices_min = devices_min or {}
    bus_factor = _scale([r.buses for r in model.routes], devices_min.get("bus", 0))
    site_factor = {kind: _scale([s.gates for s in model.sites if s.kind == kind], devices_min.get(kind, 0))
                   for kind in ("scenic", "venue")}

    devices: list[Device] = []
    for route in model.routes:
        for bus in range(route.buses * bus_factor):
            devices.append(Device(device_id=f"lt{tag}-{route.route_id}-v{bus + 1}"[:63],
                                  secret=secrets.token_bytes(32), scenario="bus",
                                  operator_id=route.operator_id, route_id=route.route_id))
    for site in model.sites:
        for gate in range(site.gates * site_factor[site.kind]):
            devices.append(Device(device_id=f"lt{tag}-{site.site_id}-g{gate + 1}"[:63],
                                  secret=secrets.token_bytes(32), scenario=site.kind,
                                  operator_id=site.operator_id, site_id=site.site_id))
    unknown = [Device(device_id=f"lt{tag}-unregistered-{n + 1}", secret=secrets.token_bytes(32),
                      scenario="unknown", operator_id="none") for n in range(UNKNOWN_DEVICES)]

    kinds = list(model.categories)
    weights = [model.categories[k] for k in kinds]
    statuses = (["lost"] * model.lost_cards + ["arrears"] * model.arrears_accounts
                + ["ok"] * (model.holders - model.lost_cards - model.arrears_accounts))
    rng.shuffle(statuses)
    holders = []
    for index, status in enumerate(statuses):
        category = rng.choices(kinds, weights)[0]
        holders.append(_make_holder(issuer, index, category, status, entitlements_for(category, today, rng), now_ms))

    # Same key id, different key: the gateway finds the key but the issuer signature fails.
    rogue = IssuerKey.generate(issuer.key_id)
    rogue_holders = [_make_holder(rogue, n, "adult", "ok", entitlements_for("adult", today, rng), now_ms)
                     for n in range(ROGUE_HOLDERS)]

    return Fixture(tag=tag, created_at_ms=now_ms, issuer_key_id=issuer.key_id,
                   issuer_public_key=issuer.public_key, devices=devices, unknown_devices=unknown,
                   holders=holders, rogue_holders=rogue_holders)


async def next_issuer_key_id(conn: asyncpg.Connection) -> int:
    """Return a key id that ``issuer_keys`` does not use yet."""
    highest = await conn.fetchval("SELECT max(key_id) FROM issuer_keys")
    if highest is None:
        return 1
    if highest >= 0xFFFF:
        free = await conn.fetchval(
            "SELECT min(n) FROM generate_series(0, 65535) AS n WHERE n NOT IN (SELECT key_id FROM issuer_keys)")
        if free is None:
            raise RuntimeError("issuer_keys uses every key id 0-65535; no id left for a load-test key")
        return int(free)
    return int(highest) + 1


async def store(conn: asyncpg.Connection, model: TrafficModel, fixture: Fixture) -> None:
    """Write the operators, issuer key, devices and deny-list rows of ``fixture`` in one transaction."""
    async with conn.transaction():
        # The rule set may already have created the operators; keep its names then.
        await conn.executemany(
            "INSERT INTO operators (operator_id, kind, name_zh, name_en) VALUES ($1, $2, $3, $4) "
            "ON CONFLICT (operator_id) DO NOTHING",
            [(op.operator_id, op.kind, op.name_zh, op.name_en) for op in model.operators])
        await conn.execute(
            "INSERT INTO issuer_keys (key_id, public_key, status) VALUES ($1, $2, 'active')",
            fixture.issuer_key_id, fixture.issuer_public_key)
        await conn.executemany(
            "INSERT INTO devices (device_id, operator_id, kind, route_id, site_id, secret) "
            "VALUES ($1, $2, $3, $4, $5, $6)",
            [(d.device_id, d.operator_id, "validator" if d.scenario == "bus" else "gate",
              d.route_id, d.site_id, d.secret) for d in fixture.devices])

        deny_rows = []
        for holder in fixture.holders:
            if holder.status == "lost":
                deny_rows.append(("card_lost", parse_credential(holder.card_credential).credential_id))
            elif holder.status == "arrears":
                deny_rows.append(("arrears", holder.account_token))
        await conn.executemany(
            "INSERT INTO deny_list (kind, subject, source) VALUES ($1, $2, $3) "
            "ON CONFLICT (kind, subject) DO UPDATE SET active = true, "
            "version = nextval('deny_list_version'), changed_at = now(), source = EXCLUDED.source",
            [(kind, subject, ACTOR) for kind, subject in deny_rows])


async def ensure_rule_set(conn: asyncpg.Connection, rules_path: str | os.PathLike[str] | None = None) -> int | None:
    """Publish a rule set effective now: ``rules_path`` if given, else the example one if none is published.

    Returns the version published, or None when a published rule set already
    exists and no file was given. The example's route, stop and site ids are
    the ones of the built-in traffic model.
    """
    from gateway.rules import store

    if rules_path is None:
        if await store.rules_marker(conn) != 0:
            return None
        text = (importlib.resources.files("gateway.rules.examples") / "yiyuan.toml").read_text(encoding="utf-8")
        fmt = "toml"
    else:
        path = pathlib.Path(rules_path)
        text = path.read_text(encoding="utf-8")
        fmt = {".yaml": "yaml", ".yml": "yaml", ".json": "json"}.get(path.suffix.lower(), "toml")
    version = await store.create_draft(conn, text, fmt, ACTOR, note="published by tapgate loadtest")
    await store.publish(conn, version, time.time_ns() // 1_000_000, ACTOR)
    return version


async def provision(dsn: str, model: TrafficModel, fixture_path: pathlib.Path,
                    issuer_key_path: pathlib.Path, *, seed: int | None = None,
                    devices_min: dict[str, int] | None = None,
                    rules_path: str | os.PathLike[str] | None = None) -> Fixture:
    """Make a fixture for ``model``, register it in the database at ``dsn`` and write the fixture file.

    Also publishes a rule set when needed (see :func:`ensure_rule_set`). The
    issuer private key is saved at ``issuer_key_path`` (mode 0600), which
    must not exist yet.
    """
    conn = await asyncpg.connect(dsn)
    try:
        await ensure_rule_set(conn, rules_path)
        issuer = IssuerKey.generate(await next_issuer_key_id(conn))
        fixture = make_fixture(model, issuer, seed=seed, devices_min=devices_min)
        await store(conn, model, fixture)
    finally:
        await conn.close()
    issuer.save(issuer_key_path)
    write_fixture(fixture, fixture_path)
    return fixture


def write_fixture(fixture: Fixture, path: pathlib.Path) -> None:
    """Write the fixture as JSON (bytes as base64), readable by its owner only."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as file:
        os.fchmod(file.fileno(), 0o600)
        file.write(msgspec.json.encode(fixture))


def read_fixture(path: str | os.PathLike[str]) -> Fixture:
    fixture = msgspec.json.decode(pathlib.Path(path).read_bytes(), type=Fixture)
    if fixture.version != FIXTURE_VERSION:
        raise ValueError(f"fixture {path} has version {fixture.version}, expected {FIXTURE_VERSION}; "
                         f"provision again with `tapgate loadtest`")
    return fixture
