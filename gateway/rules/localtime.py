"""Fast local-time arithmetic for pricing, independent of the process time zone.

Pricing needs the local (Asia/Shanghai) day and minute of every tap. Building a
``datetime`` with ``ZoneInfo`` per tap costs about a microsecond, so the UTC
offset is looked up once per UTC hour and cached. An hour whose offset changes
inside it is not cached and is resolved exactly per call.
"""

from __future__ import annotations

import datetime as dt

from gateway.timeutil import LOCAL_TZ, UTC

DAY_MS = 86_400_000
HOUR_MS = 3_600_000
MINUTE_MS = 60_000
# date.toordinal() of 1970-01-01.
EPOCH_ORDINAL = 719_163

_offsets: dict[int, int] = {}
_OFFSETS_MAX = 100_000


def _offset_ms(ms: int) -> int:
    moment = dt.datetime.fromtimestamp(ms // 1000, UTC)
    offset = LOCAL_TZ.utcoffset(moment)
    return (offset.days * 86_400 + offset.seconds) * 1000


def local_ms(ms: int) -> int:
    """Return ``ms`` (Unix milliseconds) shifted to local wall-clock milliseconds."""
    hour = ms // HOUR_MS
    offset = _offsets.get(hour)
    if offset is None:
        offset = _offset_ms(ms)
        if _offset_ms(hour * HOUR_MS) == offset == _offset_ms(hour * HOUR_MS + HOUR_MS - 1):
            if len(_offsets) >= _OFFSETS_MAX:
                _offsets.clear()
            _offsets[hour] = offset
    return ms + offset


def local_day_and_minute(ms: int) -> tuple[int, int]:
    """Return (local epoch day, local minute of day) of Unix milliseconds ``ms``."""
    local = local_ms(ms)
    return local // DAY_MS, (local % DAY_MS) // MINUTE_MS


def epoch_day_to_date(epoch_day: int) -> dt.date:
    return dt.date.fromordinal(epoch_day + EPOCH_ORDINAL)


def date_to_epoch_day(day: dt.date) -> int:
    return day.toordinal() - EPOCH_ORDINAL


def weekday(epoch_day: int) -> int:
    """Return the weekday of a local epoch day, Monday 0 (1970-01-01 was a Thursday)."""
    return (epoch_day + 3) % 7


def age_on(birth: dt.date, day: dt.date) -> int:
    """Return the age in whole years on ``day``; the birthday itself counts.

    Someone born on 29 February becomes a year older on 1 March in common
    years, because 28 February is before the birthday. In a leap year they
    become older on 29 February itself.
    """
    years = day.year - birth.year
    if (day.month, day.day) < (birth.month, birth.day):
        years -= 1
    return years
