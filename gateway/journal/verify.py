"""Verification of the journal's hash chain, independent of the SQL that built it.

Every row of taps is re-encoded here (gateway.journal.encoding) and compared
with the row hashes its batch recorded. Every batch digest and chain hash is
recomputed. Every batch must link to the one before it, and the last one to
``journal_chain_head``. Nothing here trusts the functions in the database, so
replacing them does not hide a change.

TODO: a writer who rewrites rows, every later batch and the head
consistently is caught only against a chain hash kept outside the
database; nothing publishes such an anchor yet.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import AsyncIterator

import asyncpg

from gateway.journal import encoding

# Batches read per query. Their rows are read with them, so memory use is
# about CHUNK_BATCHES * batch size rows.
CHUNK_BATCHES = 200
# Recent genuine batches remembered to recognise a batch inserted into the chain.
_WINDOW = 64

ROW_ALTERED = "row_altered"
ROW_REMOVED = "row_removed"
ROW_INSERTED = "row_inserted"
BATCH_ALTERED = "batch_altered"
BATCH_REMOVED = "batch_removed"
BATCH_INSERTED = "batch_inserted"
HEAD_MISMATCH = "head_mismatch"


@dataclasses.dataclass(frozen=True)
class ChainProblem:
    """One break of the chain: what kind, where, and a bilingual explanation."""

    kind: str
    batch_id: int | None
    tap_id: int | None
    message_en: str
    message_zh: str


@dataclasses.dataclass
class ChainReport:
    batches_checked: int = 0
    rows_checked: int = 0
    head_batch_id: int = 0
    problems: list[ChainProblem] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def kinds(self) -> set[str]:
        return {problem.kind for problem in self.problems}

    def add(self, kind: str, batch_id: int | None, tap_id: int | None, en: str, zh: str) -> None:
        self.problems.append(ChainProblem(kind, batch_id, tap_id, en, zh))


@dataclasses.dataclass
class _Batch:
    batch_id: int
    prev_hash: bytes
    chain_hash: bytes
    # sha256(prev_hash || digest) as recomputed; differs from chain_hash if either was edited.
    computed_chain: bytes


async def verify_chain(conn: asyncpg.Connection, *, chunk_batches: int = CHUNK_BATCHES) -> ChainReport:
    """Check the whole journal and return a report of every altered, removed or inserted row or batch.

    Runs in one REPEATABLE READ read-only transaction, so batches committed
    meanwhile neither appear half nor move the head under the check.
    """
    report = ChainReport()
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        head = await conn.fetchrow("SELECT batch_id, chain_hash FROM journal_chain_head")
        report.head_batch_id = head["batch_id"]
        linker = _Linker(report)
        async for batch in _checked_batches(conn, report, chunk_batches):
            linker.push(batch)
        linker.finish(head["batch_id"], bytes(head["chain_hash"]))
    return report


async def _checked_batches(conn: asyncpg.Connection, report: ChainReport,
                           chunk_batches: int) -> AsyncIterator[_Batch]:
    """Yield every batch in batch_id order after checking its digest and its rows."""
    after = -(2 ** 63)
    while True:
        batches = await conn.fetch("""
            SELECT batch_id, committed_at, worker, tap_count, digest, prev_hash, chain_hash, tap_ids, row_hashes,
                   encoding_version
            FROM journal_batches WHERE batch_id > $1 ORDER BY batch_id LIMIT $2""", after, chunk_batches)
        last_chunk = len(batches) < chunk_batches
        # Rows are read by batch_id range, the last range open-ended, so every row is seen exactly once.
        upper = 2 ** 63 - 1 if last_chunk else batches[-1]["batch_id"]
        rows = await conn.fetch(
            f"SELECT {', '.join(encoding.TAP_COLUMNS)} FROM taps WHERE batch_id > $1 AND batch_id <= $2",
            after, upper)
        by_batch: dict[int, list[asyncpg.Record]] = collections.defaultdict(list)
        for row in rows:
            by_batch[row["batch_id"]].append(row)
        report.rows_checked += len(rows)

        for record in batches:
            report.batches_checked += 1
            yield _check_batch(record, by_batch.pop(record["batch_id"], []), report)
        for batch_id, orphans in sorted(by_batch.items()):
            for row in orphans:
                report.add(ROW_INSERTED, batch_id, row["tap_id"],
                           f"tap {row['tap_id']} names batch {batch_id}, which is not in journal_batches",
                           f"流水 {row['tap_id']} 所属批次 {batch_id} 不在 journal_batches 中")
        if last_chunk:
            return
        after = upper


def _check_batch(record: asyncpg.Record, rows: list[asyncpg.Record], report: ChainReport) -> _Batch:
    batch_id = record["batch_id"]
    version = record["encoding_version"]
    prev_hash = bytes(record["prev_hash"])
    digest = bytes(record["digest"])
    tap_ids = list(record["tap_ids"])
    hashes = bytes(record["row_hashes"])
    recorded = {tap_id: hashes[32 * i:32 * i + 32] for i, tap_id in enumerate(tap_ids)}

    # The batch row itself: its row list, header and digest must agree.
    # The digest's label names the encoding version, so a changed version fails here too.
    consistent = (version in encoding.COLUMN_TYPES and len(hashes) == 32 * len(tap_ids)
                  and record["tap_count"] == len(tap_ids) == len(recorded))
    if consistent:
        pairs = [(tap_id, recorded[tap_id]) for tap_id in tap_ids]
        expected = encoding.batch_digest(batch_id, record["committed_at"], record["worker"], pairs, version)
        consistent = expected == digest
    if not consistent:
        report.add(BATCH_ALTERED, batch_id, None,
                   f"batch {batch_id}: its recorded fields or row list do not match its digest",
                   f"批次 {batch_id}：记录的字段或流水清单与其摘要不符")
    computed_chain = encoding.chain_hash(prev_hash, digest)
    if computed_chain != bytes(record["chain_hash"]):
        report.add(BATCH_ALTERED, batch_id, None,
                   f"batch {batch_id}: chain_hash is not SHA-256(prev_hash || digest)",
                   f"批次 {batch_id}：chain_hash 不等于 SHA-256(prev_hash || digest)")

    # Its rows: each recorded row present and unchanged, and no other row.
    seen: set[int] = set()
    for row in rows:
        tap_id = row["tap_id"]
        seen.add(tap_id)
        wanted = recorded.get(tap_id)
        if wanted is None:
            report.add(ROW_INSERTED, batch_id, tap_id, f"tap {tap_id} is in batch {batch_id} but was not committed with it",
                       f"流水 {tap_id} 属于批次 {batch_id}，但不是随该批次提交的")
        elif not _row_intact(row, version, wanted):
            report.add(ROW_ALTERED, batch_id, tap_id, f"tap {tap_id} of batch {batch_id} was changed after commit",
                       f"批次 {batch_id} 的流水 {tap_id} 在提交后被修改")
    for tap_id in tap_ids:
        if tap_id not in seen:
            report.add(ROW_REMOVED, batch_id, tap_id, f"tap {tap_id} of batch {batch_id} is missing",
                       f"批次 {batch_id} 的流水 {tap_id} 缺失")
    return _Batch(batch_id, prev_hash, bytes(record["chain_hash"]), computed_chain)


def _row_intact(row: asyncpg.Record, version: int, recorded_hash: bytes) -> bool:
    if version not in encoding.COLUMN_TYPES or encoding.row_hash(row, version) != recorded_hash:
        return False
    # A v1 row was hashed before the adjustment columns existed, so they must still hold their default 0.
    return version != 1 or all(row[name] == 0 for name in encoding.UNHASHED_IN_V1)


class _Linker:
    """Follows prev_hash links in batch_id order, one batch of lookahead."""

    def __init__(self, report: ChainReport) -> None:
        self.report = report
        self.expected = {encoding.GENESIS_HASH}
        self.last_id = 0
        self.window: collections.OrderedDict[bytes, int] = collections.OrderedDict()
        self.accepted: collections.deque[_Batch] = collections.deque(maxlen=_WINDOW)
        self.current: _Batch | None = None

    def push(self, batch: _Batch) -> None:
        if self.current is not None:
            self._link(self.current, batch)
        self.current = batch

    def finish(self, head_batch_id: int, head_hash: bytes) -> None:
        if self.current is not None:
            self._link(self.current, None)
        report = self.report
        if head_batch_id == self.last_id and head_hash in self.expected:
            return
        if head_batch_id > self.last_id:
            report.add(BATCH_REMOVED, head_batch_id, None,
                       f"the chain head names batch {head_batch_id}, but the last batch found is {self.last_id}: "
                       "batches at the end were removed",
                       f"链头指向批次 {head_batch_id}，但找到的最后批次是 {self.last_id}：末尾的批次被删除")
        else:
            report.add(HEAD_MISMATCH, head_batch_id, None,
                       f"the chain head (batch {head_batch_id}) does not match the last batch {self.last_id}",
                       f"链头（批次 {head_batch_id}）与最后批次 {self.last_id} 不符")

    def _accept(self, batch: _Batch) -> None:
        # A batch whose own chain_hash was edited is still followed through its recomputed hash.
        self.expected = {batch.chain_hash, batch.computed_chain}
        self.last_id = batch.batch_id
        self.accepted.append(batch)
        self.window[batch.chain_hash] = batch.batch_id
        self.window[batch.computed_chain] = batch.batch_id
        while len(self.window) > 2 * _WINDOW:
            self.window.popitem(last=False)

    def _link(self, batch: _Batch, following: _Batch | None) -> None:
        report = self.report
        if batch.prev_hash in self.expected:
            self._accept(batch)
        elif following is not None and following.prev_hash in self.expected:
            # The next batch links past this one: this one was slipped in.
            report.add(BATCH_INSERTED, batch.batch_id, None,
                       f"batch {batch.batch_id} is not part of the chain (batch {following.batch_id} links past it)",
                       f"批次 {batch.batch_id} 不在链上（批次 {following.batch_id} 越过了它）")
        elif batch.prev_hash in self.window:
            # It links to an older batch: the batches accepted since then were slipped in.
            anchor = self.window[batch.prev_hash]
            for inserted in [b for b in self.accepted if b.batch_id > anchor]:
                report.add(BATCH_INSERTED, inserted.batch_id, None,
                           f"batch {inserted.batch_id} is not part of the chain (batch {batch.batch_id} links past it)",
                           f"批次 {inserted.batch_id} 不在链上（批次 {batch.batch_id} 越过了它）")
            self._accept(batch)
        else:
            report.add(BATCH_REMOVED, batch.batch_id, None,
                       f"batch {batch.batch_id} does not link to batch {self.last_id}: "
                       "batches between them were removed, or its prev_hash was changed",
                       f"批次 {batch.batch_id} 未链接到批次 {self.last_id}：其间的批次被删除，或其 prev_hash 被修改")
            self._accept(batch)
