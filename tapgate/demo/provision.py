"""Register the demo county in PostgreSQL through the product's own tools.

Each step uses the path an operator of the system would use: ``tapgate keys
register`` for the issuer public key, the rule store for the rule set,
:mod:`gateway.devices` for operators and devices (which makes each device's
secret), :mod:`gateway.denylist` for the card issuer's lost-card reports and
for accounts in arrears, and :mod:`settlement.accounts` for the card
issuer's account export. In production the arrears entries come from
settlement when a bank returns a rejected debit. The demo's day is the
first one, so the demo lists them directly, as an earlier day would have.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import io
import os
import pathlib

import asyncpg

from gateway import devices as registry
from gateway.rules import example_document_text
from gateway.timeutil import LOCAL_TZ
from settlement import accounts
from settlement.crypto import AccountCipher
from tapgate.demo.world import BANKS, FEE_BP, World

ACTOR = "demo"


class ProvisionError(RuntimeError):
    """A provisioning step failed; the message names the step."""


def register_issuer_key(world: World, key_path: pathlib.Path, dsn: str) -> None:
    """Save the issuer key (mode 0600) and register its public key with ``tapgate keys register``."""
    from tapgate.cli import main

    world.issuer.save(key_path)
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        status = main(["keys", "register", "--key-file", str(key_path), "--dsn", dsn, "--log-level", "WARNING"])
    if status != 0:
        raise ProvisionError(f"`tapgate keys register --key-file {key_path}` failed with exit status {status}: "
                             f"{output.getvalue().strip()}")


async def publish_rule_set(conn: asyncpg.Connection, day: dt.date) -> int:
    """Publish the illustrative Yiyuan rule set, effective from the start of the day before ``day``."""
    from gateway.rules import store

    version = await store.create_draft(conn, example_document_text("yiyuan"), "toml", ACTOR,
                                       note="illustrative Yiyuan rule set published by tapgate demo")
    start = dt.datetime.combine(day - dt.timedelta(days=1), dt.time(0, 0), tzinfo=LOCAL_TZ)
    await store.publish(conn, version, int(start.timestamp()) * 1000, ACTOR, allow_past=True)
    return version


async def register_devices(conn: asyncpg.Connection, world: World) -> None:
    """Add the operators and devices; each device keeps the secret the registry made for it."""
    for operator in world.model.operators:
        await registry.add_operator(conn, operator.operator_id, operator.kind, operator.name_zh, operator.name_en)
    for device in world.devices:
        device.secret = await registry.add_device(conn, device.device_id, device.operator_id, device.kind,
                                                  route_id=device.route_id, site_id=device.site_id)


async def report_lost_and_arrears(conn: asyncpg.Connection, world: World) -> None:
    """Put the lost cards and the accounts in arrears on the deny list."""
    from gateway.denylist import add_entry

    for holder in world.holders_with("lost"):
        await add_entry(conn, "card_lost", holder.card.fields.credential_id, "card-issuer")
    for holder in world.holders_with("arrears"):
        await add_entry(conn, "arrears", holder.account_token, "settlement")


def _csv(rows: list[list[object]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerows(rows)
    return out.getvalue()


def write_account_files(world: World, folder: pathlib.Path) -> dict[str, pathlib.Path]:
    """Write the banks, operator accounts and the card issuer's rider account export as CSV (mode 0600)."""
    folder.mkdir(parents=True, exist_ok=True)
    banks = [accounts.HEADERS["banks"]]
    for number, (code, name_zh, name_en) in enumerate(BANKS, start=1):
        banks.append([code, name_zh, name_en, f"99990000000000{number:04d}"])
    operators = [accounts.HEADERS["operators"]]
    for number, operator in enumerate(world.model.operators, start=1):
        operators.append([operator.operator_id, BANKS[number % len(BANKS)][0], f"99991111000000{number:04d}",
                          FEE_BP[operator.kind]])
    riders = [accounts.HEADERS["riders"]]
    riders.extend([h.account_token.hex(), h.bank_code, h.account_number]
                  for h in world.holders if h.account_number is not None)

    paths = {}
    for kind, rows in (("banks", banks), ("operators", operators), ("riders", riders)):
        path = folder / f"{kind}.csv"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(_csv(rows))
        paths[kind] = path
    return paths


async def import_account_files(conn: asyncpg.Connection, paths: dict[str, pathlib.Path],
                               cipher: AccountCipher) -> int:
    """Import banks, operator accounts and rider accounts; return the rider accounts imported."""
    imported = 0
    for kind in ("banks", "operators", "riders"):
        path = paths[kind]
        report = await accounts.import_accounts(conn, path.read_text(encoding="utf-8"), kind, cipher,
                                                source_name=path.name)
        if report.problems:
            line, message = report.problems[0]
            raise ProvisionError(f"importing {path.name} reported {len(report.problems)} bad rows, "
                                 f"first on line {line}: {message}")
        imported = report.imported
    return imported
