"""The registry of validators and gates: who may submit taps, for which operator and route or site.

Workers keep every device in memory and reload the table when a poll finds a
change (a new row count or a later ``updated_at``), so a disabled device or
a rotated secret takes effect within one refresh interval. The functions
below the registry are the administrative operations behind
``tapgate devices`` and ``tapgate operators``.
"""

from __future__ import annotations

import dataclasses
import os

import asyncpg

from gateway.errors import GatewayError

SECRET_BYTES = 32
DEVICE_KINDS = ("validator", "gate")
OPERATOR_KINDS = ("bus", "scenic", "venue")


class DeviceError(GatewayError, ValueError):
    """An administrative request on operators or devices is invalid (unknown id, wrong kind, duplicate)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Device:
    device_id: str
    operator_id: str
    kind: str
    route_id: str | None
    site_id: str | None
    status: str
    secret: bytes = dataclasses.field(repr=False)

    @property
    def active(self) -> bool:
        return self.status == "active"


class DeviceRegistry:
    """All devices of the database, in memory, reloaded when the table changes."""

    def __init__(self) -> None:
        self._devices: dict[str, Device] = {}
        self._marker: tuple[object, ...] | None = None

    def __len__(self) -> int:
        return len(self._devices)

    def get(self, device_id: str) -> Device | None:
        return self._devices.get(device_id)

    async def refresh(self, conn: asyncpg.Connection) -> bool:
        """Reload the devices if the table changed since the last call; return whether it did."""
        marker = tuple(await conn.fetchrow("SELECT count(*), max(updated_at) FROM devices"))
        if marker == self._marker:
            return False
        rows = await conn.fetch(
            "SELECT device_id, operator_id, kind, route_id, site_id, status, secret FROM devices")
        self._devices = {row["device_id"]: Device(**dict(row)) for row in rows}
        self._marker = marker
        return True


async def add_operator(conn: asyncpg.Connection, operator_id: str, kind: str, name_zh: str, name_en: str) -> None:
    if kind not in OPERATOR_KINDS:
        raise DeviceError(f"invalid operator kind {kind!r}: expected one of {', '.join(OPERATOR_KINDS)}",
                          f"运营单位类型 {kind!r} 无效，应为 {'、'.join(OPERATOR_KINDS)} 之一")
    try:
        await conn.execute(
            "INSERT INTO operators (operator_id, kind, name_zh, name_en) VALUES ($1, $2, $3, $4)",
            operator_id, kind, name_zh, name_en)
    except asyncpg.UniqueViolationError as exc:
        raise DeviceError(f"operator {operator_id!r} already exists", f"运营单位 {operator_id!r} 已存在") from exc
    except asyncpg.CheckViolationError as exc:
        raise DeviceError(
            f"invalid operator id {operator_id!r}: use 1-63 lower-case letters, digits, '_', '.' or '-'",
            f"运营单位编号 {operator_id!r} 无效：请使用 1 到 63 个小写字母、数字、'_'、'.' 或 '-'") from exc


async def list_operators(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    return await conn.fetch("SELECT operator_id, kind, name_zh, name_en, created_at FROM operators ORDER BY operator_id")


async def add_device(conn: asyncpg.Connection, device_id: str, operator_id: str, kind: str, *,
                     route_id: str | None = None, site_id: str | None = None) -> bytes:
    """Register a device and return its new secret, which is shown to the caller once."""
    if kind not in DEVICE_KINDS:
        raise DeviceError(f"invalid device kind {kind!r}: expected validator or gate",
                          f"设备类型 {kind!r} 无效，应为 validator（车载验票机）或 gate（闸机）")
    if kind == "validator" and (not route_id or site_id):
        raise DeviceError("a validator needs --route and no --site", "车载验票机需要 --route，且不能有 --site")
    if kind == "gate" and (not site_id or route_id):
        raise DeviceError("a gate needs --site and no --route", "闸机需要 --site，且不能有 --route")
    secret = os.urandom(SECRET_BYTES)
    try:
        await conn.execute(
            "INSERT INTO devices (device_id, operator_id, kind, route_id, site_id, secret) "
            "VALUES ($1, $2, $3, $4, $5, $6)", device_id, operator_id, kind, route_id, site_id, secret)
    except asyncpg.UniqueViolationError as exc:
        raise DeviceError(f"device {device_id!r} already exists", f"设备 {device_id!r} 已存在") from exc
    except asyncpg.ForeignKeyViolationError as exc:
        raise DeviceError(f"operator {operator_id!r} not found; add it first with `tapgate operators add`",
                          f"找不到运营单位 {operator_id!r}，请先用 `tapgate operators add` 添加") from exc
    except asyncpg.CheckViolationError as exc:
        raise DeviceError(
            f"invalid device id {device_id!r}: use 1-63 letters, digits, '_', '.' or '-'",
            f"设备编号 {device_id!r} 无效：请使用 1 到 63 个字母、数字、'_'、'.' 或 '-'") from exc
    return secret


async def list_devices(conn: asyncpg.Connection, operator_id: str | None = None) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT device_id, operator_id, kind, route_id, site_id, status, updated_at FROM devices "
        "WHERE $1::text IS NULL OR operator_id = $1 ORDER BY device_id", operator_id)


async def set_device_status(conn: asyncpg.Connection, device_id: str, status: str) -> None:
    found = await conn.fetchval(
        "UPDATE devices SET status = $2, updated_at = clock_timestamp() WHERE device_id = $1 RETURNING 1",
        device_id, status)
    if found is None:
        raise DeviceError(f"device {device_id!r} not found", f"找不到设备 {device_id!r}")


async def rotate_secret(conn: asyncpg.Connection, device_id: str) -> bytes:
    """Replace a device's secret and return the new one; requests signed with the old one fail from now on."""
    secret = os.urandom(SECRET_BYTES)
    found = await conn.fetchval(
        "UPDATE devices SET secret = $2, updated_at = clock_timestamp() WHERE device_id = $1 RETURNING 1",
        device_id, secret)
    if found is None:
        raise DeviceError(f"device {device_id!r} not found", f"找不到设备 {device_id!r}")
    return secret
