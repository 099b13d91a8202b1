"""Helpers shared by subcommands: the database for a command, and migrating every component."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Iterator

from gateway import db
from gateway.config import Config
from gateway.logs import log_event

log = logging.getLogger(__name__)


def all_migrations() -> list[list[db.Migration]]:
    """Return the migration sequences of every component, lowest layer first."""
    from settlement import migrations as settlement_migrations

    return [db.gateway_migrations(), settlement_migrations()]


async def migrate_all(dsn: str) -> list[db.Migration]:
    applied: list[db.Migration] = []
    async with db.connection(dsn) as conn:
        for sequence in all_migrations():
            applied.extend(await db.migrate(conn, sequence))
    return applied


@contextlib.contextmanager
def database(config: Config, *, migrate: bool = True) -> Iterator[str]:
    """Yield a DSN for the command, starting the embedded server if none is configured."""
    with db.database(config) as dsn:
        if migrate:
            applied = asyncio.run(migrate_all(dsn))
            if applied:
                log_event(log, logging.INFO, "migrations.applied", count=len(applied))
        yield dsn
