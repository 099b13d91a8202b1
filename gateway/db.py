"""PostgreSQL access: choosing the server, connection pools and schema migrations.

Migrations are SQL files named ``NNNN_description.sql`` in a package's
``migrations/`` folder. Each component (``gateway``, ``settlement``) has its
own sequence of versions in ``schema_migrations``, so a lower layer never
needs to know the migrations of the one above it. Each file runs in its own
transaction under an advisory lock: a failing file leaves the database at the
previous version, and two migrators never interleave.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib.resources
import logging
import os
import re
from typing import AsyncIterator, Iterator

import asyncpg

from gateway.config import Config
from gateway.errors import DatabaseError, MigrationError
from gateway.logs import log_event

log = logging.getLogger(__name__)

# Arbitrary constant that identifies the migration lock among advisory locks.
_MIGRATION_LOCK = 0x7A9_6A7E
_FILE_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")

DSN_ENV = "TAPGATE_DATABASE_DSN"

# Failures of the connection or the server, as opposed to bugs. asyncpg raises
# InternalClientError too when a connection breaks in the middle of an
# operation ("cannot switch to state 12; another operation is in progress"),
# which was seen while PostgreSQL restarted under load.
CONNECTION_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError,
                     TimeoutError)


@dataclasses.dataclass(frozen=True)
class Migration:
    component: str
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()

    @property
    def label(self) -> str:
        return f"{self.component}/{self.version:04d}_{self.name}.sql"


def discover(component: str, package: str | None = None) -> list[Migration]:
    """Return the migrations shipped in ``<package>/migrations/``, ordered by version."""
    package = package or component
    folder = importlib.resources.files(package) / "migrations"
    found: list[Migration] = []
    for entry in folder.iterdir():
        match = _FILE_NAME.match(entry.name)
        if not match:
            continue
        found.append(Migration(component, int(match.group(1)), match.group(2), entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"two migrations of {component} share a version: {versions}",
                             f"{component} 的两个迁移文件版本号相同：{versions}")
    return found


_BOOKKEEPING = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    component   text        NOT NULL,
    version     integer     NOT NULL,
    name        text        NOT NULL,
    checksum    text        NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (component, version)
)
"""


async def applied_versions(conn: asyncpg.Connection, component: str) -> dict[int, str]:
    exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    if not exists:
        return {}
    rows = await conn.fetch("SELECT version, checksum FROM schema_migrations WHERE component = $1", component)
    return {row["version"]: row["checksum"] for row in rows}


def _check_history(component: str, migrations: list[Migration], applied: dict[int, str]) -> None:
    known = {m.version: m for m in migrations}
    for version, checksum in sorted(applied.items()):
        migration = known.get(version)
        if migration is None:
            raise MigrationError(
                f"the database has {component} migration {version:04d}, which this version of tapgate does not ship",
                f"数据库中有 {component} 迁移 {version:04d}，但本版本的 tapgate 没有该迁移",
                "run a tapgate version at least as new as the one that migrated this database",
            )
        if migration.checksum != checksum:
            raise MigrationError(
                f"{migration.label} was changed after it was applied (checksum differs)",
                f"{migration.label} 在应用后被修改（校验和不一致）",
                "never edit an applied migration; add a new one instead / 不要修改已应用的迁移，请新增迁移",
            )


async def migrate(conn: asyncpg.Connection, migrations: list[Migration]) -> list[Migration]:
    """Apply the migrations that are missing, in order, and return them.

    Applying them twice changes nothing. A failing file raises
    :class:`MigrationError` naming it, and the database stays at the version
    before that file.
    """
    if not migrations:
        return []
    component = migrations[0].component
    applied_now: list[Migration] = []
    await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK)
    try:
        await conn.execute(_BOOKKEEPING)
        applied = await applied_versions(conn, component)
        _check_history(component, migrations, applied)
        for migration in migrations:
            if migration.version in applied:
                continue
            try:
                async with conn.transaction():
                    await conn.execute(migration.sql)
                    await conn.execute(
                        "INSERT INTO schema_migrations (component, version, name, checksum) VALUES ($1, $2, $3, $4)",
                        component, migration.version, migration.name, migration.checksum)
            except asyncpg.PostgresError as exc:
                log_event(log, logging.ERROR, "migration.failed", migration=migration.label, error=exc)
                raise MigrationError(
                    f"migration {migration.label} failed and was rolled back: {exc}",
                    f"迁移 {migration.label} 失败，已回滚：{exc}",
                    f"the database stays at {component} version {max(applied, default=0):04d}",
                ) from exc
            applied[migration.version] = migration.checksum
            applied_now.append(migration)
            log_event(log, logging.INFO, "migration.applied", migration=migration.label)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK)
    return applied_now


async def check_current(conn: asyncpg.Connection, migrations: list[Migration]) -> None:
    """Raise :class:`MigrationError` unless every migration in ``migrations`` is applied."""
    if not migrations:
        return
    component = migrations[0].component
    applied = await applied_versions(conn, component)
    _check_history(component, migrations, applied)
    missing = [m.label for m in migrations if m.version not in applied]
    if missing:
        raise MigrationError(
            f"the database schema is not current: {len(missing)} {component} migrations are missing, first {missing[0]}",
            f"数据库结构不是最新的：缺少 {len(missing)} 个 {component} 迁移，第一个是 {missing[0]}",
            "run `tapgate migrate` / 请运行 `tapgate migrate`",
        )


def gateway_migrations() -> list[Migration]:
    return discover("gateway")


async def connect(dsn: str, timeout_s: float = 5.0) -> asyncpg.Connection:
    try:
        return await asyncpg.connect(dsn, timeout=timeout_s)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        raise DatabaseError(
            f"cannot connect to PostgreSQL at {redact_dsn(dsn)}: {exc}",
            f"无法连接 PostgreSQL（{redact_dsn(dsn)}）：{exc}",
            "check --dsn or TAPGATE_DATABASE_DSN, or leave both empty to use the embedded server",
        ) from exc


async def create_pool(dsn: str, *, min_size: int = 2, max_size: int = 8,
                      timeout_s: float = 5.0) -> asyncpg.Pool:
    try:
        return await asyncpg.create_pool(dsn, min_size=min_size, max_size=max_size, timeout=timeout_s)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        raise DatabaseError(
            f"cannot connect to PostgreSQL at {redact_dsn(dsn)}: {exc}",
            f"无法连接 PostgreSQL（{redact_dsn(dsn)}）：{exc}",
            "check --dsn or TAPGATE_DATABASE_DSN, or leave both empty to use the embedded server",
        ) from exc


def redact_dsn(dsn: str) -> str:
    """Return ``dsn`` with any password replaced by ``***``, fit for logs and messages."""
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", dsn)


@contextlib.contextmanager
def database(config: Config) -> Iterator[str]:
    """Yield the DSN to use: the configured one, or an embedded server started for the duration."""
    if config.database.dsn:
        yield config.database.dsn
        return
    from gateway.pgembed import EmbeddedPostgres

    server = EmbeddedPostgres(config.database.data_dir or None)
    server.start()
    try:
        yield server.dsn
    finally:
        server.stop()


@contextlib.asynccontextmanager
async def connection(dsn: str, timeout_s: float = 5.0) -> AsyncIterator[asyncpg.Connection]:
    conn = await connect(dsn, timeout_s)
    try:
        yield conn
    finally:
        await conn.close()


def dsn_from_env() -> str:
    return os.environ.get(DSN_ENV, "")
