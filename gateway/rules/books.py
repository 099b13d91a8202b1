"""Every published version of the rule set, to price each tap by the version in effect at its time."""

from __future__ import annotations

import bisect
from typing import Iterable

from gateway.rules.book import RuleBook


class RuleBooks:
    """Compiled versions ordered by effective time; ``marker`` identifies what was loaded.

    A tap uploaded late (an offline validator) is priced by the version in
    effect at its tap time, not the current one, so the gateway keeps every
    published version, not only the newest.
    """

    def __init__(self, books: Iterable[RuleBook] = (), marker: int = 0) -> None:
        ordered = sorted(books, key=lambda b: (b.effective_from_ms, b.version))
        self.books: tuple[RuleBook, ...] = tuple(ordered)
        self._starts = [b.effective_from_ms for b in ordered]
        self.marker = marker

    def for_time(self, tap_time_ms: int) -> RuleBook | None:
        """Return the version in effect at ``tap_time_ms``, or None before the first one."""
        index = bisect.bisect_right(self._starts, tap_time_ms)
        return self.books[index - 1] if index else None

    def by_version(self, version: int) -> RuleBook | None:
        return next((b for b in self.books if b.version == version), None)

    def __len__(self) -> int:
        return len(self.books)

    def __repr__(self) -> str:
        return f"<RuleBooks {[b.version for b in self.books]} marker={self.marker}>"
