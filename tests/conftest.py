"""Shared fixtures: one PostgreSQL per test session, and a fresh migrated database per test.

The server is the one named by ``TAPGATE_TEST_DSN`` (a role allowed to create
databases), or else an embedded one in a temporary directory. Each test that
asks for ``dsn`` gets its own database, cloned from a migrated template, so
tests never see each other's rows.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import pathlib
import urllib.parse
import uuid

import asyncpg
import pytest

from gateway.pgembed import EmbeddedPostgres
from tapgate import runtime

TEST_DSN_ENV = "TAPGATE_TEST_DSN"
TEMPLATE = "tapgate_test_template"

_counter = itertools.count()


def _with_database(dsn: str, name: str) -> str:
    parts = urllib.parse.urlsplit(dsn)
    return urllib.parse.urlunsplit(parts._replace(path="/" + name))


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory):
    """Yield the DSN of a server's maintenance database (``postgres``)."""
    external = os.environ.get(TEST_DSN_ENV)
    if external:
        yield _with_database(external, "postgres")
        return
    server = EmbeddedPostgres(tmp_path_factory.mktemp("pg") / "data")
    server.start()
    try:
        yield _with_database(server.dsn, "postgres")
    finally:
        server.destroy()


@pytest.fixture(scope="session")
def embedded_server(tmp_path_factory: pytest.TempPathFactory):
    """A second embedded server, for tests that stop or restart PostgreSQL."""
    server = EmbeddedPostgres(tmp_path_factory.mktemp("pg-own") / "data")
    server.start()
    try:
        yield server
    finally:
        server.destroy()


async def _recreate(admin_dsn: str, name: str, template: str | None = None) -> None:
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        clause = f' TEMPLATE "{template}"' if template else ""
        await conn.execute(f'CREATE DATABASE "{name}"{clause}')
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def template_dsn(pg_server: str) -> str:
    """Build the migrated template database once per session."""
    suffix = uuid.uuid4().hex[:8]
    name = f"{TEMPLATE}_{suffix}"

    async def build() -> None:
        await _recreate(pg_server, name)
        await runtime.migrate_all(_with_database(pg_server, name))

    asyncio.run(build())
    return name


@pytest.fixture
def dsn(pg_server: str, template_dsn: str):
    """DSN of a new database holding the full, migrated schema and no rows."""
    name = f"t_{os.getpid()}_{next(_counter)}_{uuid.uuid4().hex[:6]}"
    asyncio.run(_recreate(pg_server, name, template_dsn))
    yield _with_database(pg_server, name)

    async def drop() -> None:
        conn = await asyncpg.connect(pg_server)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    asyncio.run(drop())


@pytest.fixture
def empty_dsn(pg_server: str):
    """DSN of a new, empty database with no migrations applied."""
    name = f"e_{os.getpid()}_{next(_counter)}_{uuid.uuid4().hex[:6]}"
    asyncio.run(_recreate(pg_server, name))
    yield _with_database(pg_server, name)


@pytest.fixture
def repo_root() -> pathlib.Path:
    return pathlib.Path(__file__).resolve().parent.parent
