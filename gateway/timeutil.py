"""Local time for Yiyuan (Asia/Shanghai) and business days, whatever the server's time zone."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

LOCAL_TZ = ZoneInfo("Asia/Shanghai")
UTC = dt.timezone.utc


def parse_cutoff(text: str) -> dt.time:
    """Parse ``"HH:MM"`` (already validated by the configuration) into a time of day."""
    hours, _, minutes = text.partition(":")
    return dt.time(int(hours), int(minutes))


def to_local(moment: dt.datetime) -> dt.datetime:
    if moment.tzinfo is None:
        raise ValueError(f"naive datetime {moment!r}: pass an aware datetime (UTC or local)")
    return moment.astimezone(LOCAL_TZ)


def business_day(moment: dt.datetime, cutoff: dt.time = dt.time(0, 0)) -> dt.date:
    """Return the business day that ``moment`` belongs to.

    A business day D runs from ``cutoff`` local time on D to ``cutoff`` on
    D + 1, so with a cut-off of 02:00 a tap at 01:30 local time belongs to the
    previous calendar day.
    """
    local = to_local(moment)
    shifted = local - dt.timedelta(hours=cutoff.hour, minutes=cutoff.minute)
    return shifted.date()


def day_bounds(day: dt.date, cutoff: dt.time = dt.time(0, 0)) -> tuple[dt.datetime, dt.datetime]:
    """Return the UTC start (inclusive) and end (exclusive) of business day ``day``."""
    start = dt.datetime.combine(day, cutoff, tzinfo=LOCAL_TZ)
    end = dt.datetime.combine(day + dt.timedelta(days=1), cutoff, tzinfo=LOCAL_TZ)
    return start.astimezone(UTC), end.astimezone(UTC)


EPOCH = dt.datetime(1970, 1, 1, tzinfo=UTC)
_MS = dt.timedelta(milliseconds=1)


def from_unix_ms(ms: int) -> dt.datetime:
    return EPOCH + ms * _MS


def to_unix_ms(moment: dt.datetime) -> int:
    """Return whole milliseconds since the Unix epoch, without a float round trip."""
    return (to_local(moment) - EPOCH) // _MS
