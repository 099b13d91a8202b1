"""The tap journal: group-commit writer, hash chain and its verification.

See docs/journal.md for the row encoding, the chain and the guarantees.
"""

from gateway.journal.partitions import ensure_partitions, list_partitions
from gateway.journal.verify import ChainProblem, ChainReport, verify_chain
from gateway.journal.writer import (
    Journal,
    JournalEntry,
    JournalEntryError,
    JournalError,
    JournalIntegrityError,
    JournalOutcome,
    JournalUnavailable,
)

__all__ = [
    "ChainProblem", "ChainReport", "Journal", "JournalEntry", "JournalEntryError", "JournalError",
    "JournalIntegrityError", "JournalOutcome", "JournalUnavailable", "ensure_partitions", "list_partitions",
    "verify_chain",
]
