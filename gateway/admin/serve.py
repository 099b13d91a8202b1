"""Run the admin API on ``config.admin.host``/``port`` until SIGINT or SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Iterable

from aiohttp import web

from gateway import db
from gateway.admin.app import Extension, create_admin_app
from gateway.config import Config
from gateway.logs import log_event

log = logging.getLogger(__name__)


async def serve_admin(config: Config, dsn: str, extensions: Iterable[Extension] = (),
                      stop: asyncio.Event | None = None, started: asyncio.Event | None = None) -> None:
    """Serve until ``stop`` is set (or a signal arrives when ``stop`` is None)."""
    pool = await db.create_pool(dsn, min_size=1, max_size=max(2, config.database.pool_max // 2),
                                timeout_s=config.database.connect_timeout_s)
    runner = web.AppRunner(create_admin_app(pool, config, extensions), access_log=None)
    try:
        await runner.setup()
        site = web.TCPSite(runner, config.admin.host, config.admin.port)
        await site.start()
        log_event(log, logging.INFO, "admin.started", host=config.admin.host, port=config.admin.port)
        if stop is None:
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(signum, stop.set)
        if started is not None:
            started.set()
        await stop.wait()
    finally:
        await runner.cleanup()
        await pool.close()
        log_event(log, logging.INFO, "admin.stopped")


def run_admin(config: Config, dsn: str, extensions: Iterable[Extension] = ()) -> None:
    """Block serving the admin API; returns after SIGINT or SIGTERM."""
    asyncio.run(serve_admin(config, dsn, extensions))
