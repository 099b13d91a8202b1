"""Logging as ``event key=value`` lines through the standard library.

Log lifecycle events and anomalies only, never each tap. Values are quoted
when they contain spaces. Never pass a secret, a card token in clear, a bank
account number or a person's name.
"""

from __future__ import annotations

import logging
import os
import sys

_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


def format_fields(event: str, fields: dict[str, object]) -> str:
    parts = [event]
    for key, value in fields.items():
        text = str(value)
        if text == "" or any(ch.isspace() or ch in "\"=" for ch in text):
            text = '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
        parts.append(f"{key}={text}")
    return " ".join(parts)


def log_event(logger: logging.Logger, level: int, event: str, **fields: object) -> None:
    """Log one ``event key=value ...`` line if ``level`` is enabled."""
    if logger.isEnabledFor(level):
        logger.log(level, "%s", format_fields(event, fields))


def configure(level: str | int | None = None) -> None:
    """Send the package's logs to stderr once per process.

    ``level`` defaults to ``TAPGATE_LOG_LEVEL`` and then to INFO.
    """
    if level is None:
        level = os.environ.get("TAPGATE_LOG_LEVEL", "INFO")
    if isinstance(level, str):
        level = level.upper()
    root = logging.getLogger()
    if not any(getattr(h, "_tapgate", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(_FORMAT))
        handler._tapgate = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(level)
    # asyncpg and aiohttp log at INFO for every connection; keep them to warnings.
    for noisy in ("asyncio", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
