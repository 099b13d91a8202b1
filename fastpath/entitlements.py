"""Entitlements carried in a credential: what fare rules need to know about the holder.

Dates travel as unsigned 16-bit day numbers counted from 1900-01-01 (day 1 is
1900-01-02), so the representable range is 1900-01-02 to 2079-06-06 and the
value 0 means "absent". An entitlement's end date is the last day on which it
applies (inclusive).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum

DAY_ZERO = dt.date(1900, 1, 1)
DAY_MAX = DAY_ZERO + dt.timedelta(days=0xFFFF)


class PriorityGroup(enum.IntEnum):
    """Codes of the priority groups (优抚对象) in the credential; fare rules decide what each one gets.

    Codes not listed here may appear in credentials from a newer issuer and
    are passed through as plain integers.
    """

    NONE = 0
    # 残疾军人 / disabled service members
    DISABLED_SERVICE_MEMBER = 1
    # 烈士遗属、因公牺牲和病故军人遗属 / families of martyrs and of service members who died in service
    BEREAVED_MILITARY_FAMILY = 2
    # 退役军人 / veterans
    VETERAN = 3
    # 现役军人家属 / families of serving members
    SERVING_MILITARY_FAMILY = 4


@dataclasses.dataclass(frozen=True, slots=True)
class Entitlements:
    """Age and concession facts of one holder; no name or ID number.

    ``birth_date`` lets an age rule apply from the right day without
    re-issuing the credential. The ``*_until`` dates are inclusive; ``None``
    means the holder has no such entitlement.
    """

    birth_date: dt.date | None
    disability_until: dt.date | None = None
    priority_until: dt.date | None = None
    student_until: dt.date | None = None
    priority_group: int = 0

    def age_on(self, day: dt.date) -> int | None:
        """Return the holder's age in whole years on ``day`` (local date), or None without a birth date."""
        if self.birth_date is None:
            return None
        born = self.birth_date
        years = day.year - born.year
        if (day.month, day.day) < (born.month, born.day):
            years -= 1
        return years

    def disabled_on(self, day: dt.date) -> bool:
        return self.disability_until is not None and day <= self.disability_until

    def priority_on(self, day: dt.date) -> bool:
        return self.priority_until is not None and self.priority_group != 0 and day <= self.priority_until

    def student_on(self, day: dt.date) -> bool:
        return self.student_until is not None and day <= self.student_until


def date_to_day_number(day: dt.date | None, field: str) -> int:
    """Encode ``day`` as days since 1900-01-01 (0 for None); raise ValueError outside the range."""
    if day is None:
        return 0
    if not isinstance(day, dt.date) or isinstance(day, dt.datetime):
        raise TypeError(f"{field} must be a datetime.date or None, got {type(day).__name__}")
    number = (day - DAY_ZERO).days
    if not 1 <= number <= 0xFFFF:
        raise ValueError(f"{field} = {day.isoformat()} is outside the encodable range "
                         f"1900-01-02 to {DAY_MAX.isoformat()}")
    return number


def day_number_to_date(number: int) -> dt.date | None:
    """Decode a day number; 0 is None."""
    if number == 0:
        return None
    return DAY_ZERO + dt.timedelta(days=number)


def entitlements_from_numbers(birth: int, disability: int, priority: int, student: int,
                              group: int) -> Entitlements:
    """Build :class:`Entitlements` from the raw credential fields (used by both verifiers)."""
    return Entitlements(
        birth_date=day_number_to_date(birth),
        disability_until=day_number_to_date(disability),
        priority_until=day_number_to_date(priority),
        student_until=day_number_to_date(student),
        priority_group=group,
    )
