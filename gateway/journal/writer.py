"""The group-commit journal writer of one worker process.

Appends from every connection of the worker wait a few milliseconds (or until
``batch_max`` entries are waiting), then go to PostgreSQL together in one
call of ``tapgate_journal_commit`` (migrations 0020 and 0026): one statement, one round
trip, one transaction. Each append resolves only after that transaction's
commit has been acknowledged by PostgreSQL (``synchronous_commit = on``), so
an acknowledged tap is durable.

If the commit fails, every append of the batch raises
:class:`JournalUnavailable` and nothing of the batch is acknowledged. The
commit may still have reached the disk if the connection was lost after
COMMIT was sent. The device then retries with the same tap id and gets the
original outcome back with status ``"retry"``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
import time
from typing import Iterable

import asyncpg
import msgspec

from gateway import metrics
from gateway.db import CONNECTION_ERRORS
from gateway.errors import DatabaseError, GatewayError
from gateway.journal.partitions import PARTITION_REFRESH_S, ensure_partitions
from gateway.logs import log_event
from gateway.timeutil import business_day, day_bounds, from_unix_ms, to_unix_ms

log = logging.getLogger(__name__)

DISCOUNT_KINDS = frozenset({"category", "transfer", "cap"})
STATUS_NAMES = ("new", "retry", "conflict")
_STATUS_MISSING_ROW = 3

# Errors caused by an entry's values (PostgreSQL classes 22 and 23, or asyncpg
# failing to encode a value), as opposed to a failed connection or server.
_ENTRY_ERRORS = (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError, asyncpg.exceptions._base.DataError)


_COMMIT_SQL = "SELECT * FROM tapgate_journal_commit($1, $2::tapgate_journal_entry[])"


class JournalError(GatewayError):
    """Root of the journal's exceptions."""


class JournalEntryError(JournalError, ValueError):
    """An entry handed to :meth:`Journal.append` has an invalid field."""


class JournalUnavailable(JournalError, DatabaseError, ConnectionError):
    """The entry was not journaled: PostgreSQL failed, or the writer is closed or overloaded.

    The server returns 503, and the device may retry the same tap id. It is a
    ``ConnectionError`` too, so handlers that catch connection faults catch it.
    """


class JournalIntegrityError(JournalUnavailable):
    """The journal's tables disagree (a key without its row): run ``tapgate journal verify``."""


class JournalEntry(msgspec.Struct, frozen=True):
    """One tap as decided by the pipeline, ready to be journaled.

    Times are Unix milliseconds. ``tap_kind`` is 0 board, 1 on, 2 off, 3 entry;
    ``medium`` 1 card, 2 QR; ``decision`` 1 accepted, 0 rejected.
    ``replay_key`` (QR codes) may be used by one tap only; ``rider_state`` is
    the holder's new encoded RiderState, stored only if the tap is accepted.
    ``adjustment_fen`` (zero or negative) and ``full_fare_adjustment_fen`` are
    an accepted tap-off's corrections of the maximum fare charged at its
    tap-on (``Price.adjustment_fen`` and ``Price.full_fare_adjustment_fen``).
    """

    device_id: str
    device_tap_id: int
    tap_time_ms: int
    received_at_ms: int
    offline: bool
    operator_id: str
    route_id: str | None
    stop_id: str | None
    site_id: str | None
    tap_kind: int
    medium: int
    credential_id: bytes | None
    holder_token: bytes | None
    account_token: bytes | None
    decision: int
    reason: int
    rider_category: str | None
    product_id: str | None
    fare_fen: int
    full_fare_fen: int
    discount_kinds: tuple[str, ...]
    rule_set_version: int | None
    request_digest: bytes
    replay_key: bytes | None = None
    rider_state: bytes | None = None
    adjustment_fen: int = 0
    full_fare_adjustment_fen: int = 0


@dataclasses.dataclass(frozen=True, slots=True)
class JournalOutcome:
    """The journal's record of an appended tap.

    For ``status == "new"`` this is the row just written (a replayed QR code
    shows decision 0, reason 43, fare 0). For ``"retry"`` and ``"conflict"`` it
    is the row written by the first request with that device tap id.
    The rider pays ``fare_fen + adjustment_fen`` for this tap.
    """

    status: str
    journal_id: int
    business_day: dt.date
    batch_id: int
    decision: int
    reason: int
    fare_fen: int
    full_fare_fen: int
    rider_category: str | None
    product_id: str | None
    discount_kinds: tuple[str, ...]
    rule_set_version: int | None
    adjustment_fen: int = 0
    full_fare_adjustment_fen: int = 0

    @property
    def accepted(self) -> bool:
        return self.decision == 1


_SMALLINT_MAX = 2 ** 15 - 1
_INTEGER_MAX = 2 ** 31 - 1
_BIGINT_MAX = 2 ** 63 - 1
_TEXT_FIELDS = ("device_id", "operator_id", "route_id", "stop_id", "site_id", "rider_category", "product_id")


def _check_entry(entry: JournalEntry) -> None:
    # Everything PostgreSQL would reject is caught here, so that one bad entry
    # is refused alone and does not fail the group commit it would join.
    problems = []

    if not 0 <= entry.device_tap_id <= _BIGINT_MAX:
        problems.append(f"device_tap_id={entry.device_tap_id} (expected 0 to 2^63-1)")
    for name in ("tap_time_ms", "received_at_ms"):
        value = getattr(entry, name)
        if not 0 <= value <= 253_402_300_799_999:
            problems.append(f"{name}={value} (expected Unix milliseconds up to year 9999)")
    for name in _TEXT_FIELDS:
        value = getattr(entry, name)
        if value is not None and "\x00" in value:
            problems.append(f"{name} contains a NUL character")
    if not 0 <= entry.reason <= _SMALLINT_MAX:
        problems.append(f"reason={entry.reason} (expected 0 to {_SMALLINT_MAX})")
    if entry.rule_set_version is not None and not 0 <= entry.rule_set_version <= _INTEGER_MAX:
        problems.append(f"rule_set_version={entry.rule_set_version} (expected 0 to {_INTEGER_MAX})")
    if entry.fare_fen > _INTEGER_MAX or entry.full_fare_fen > _INTEGER_MAX:
        problems.append(f"fare_fen={entry.fare_fen}, full_fare_fen={entry.full_fare_fen} (expected <= {_INTEGER_MAX})")
    if not -_INTEGER_MAX - 1 <= entry.adjustment_fen <= 0:
        problems.append(f"adjustment_fen={entry.adjustment_fen} (expected {-_INTEGER_MAX - 1} to 0)")
    if not -_INTEGER_MAX - 1 <= entry.full_fare_adjustment_fen <= _INTEGER_MAX:
        problems.append(f"full_fare_adjustment_fen={entry.full_fare_adjustment_fen} (expected a 32-bit integer)")
    if (entry.adjustment_fen or entry.full_fare_adjustment_fen) and (entry.tap_kind != 2 or entry.decision != 1):
        problems.append(f"adjustment_fen={entry.adjustment_fen}, full_fare_adjustment_fen="
                        f"{entry.full_fare_adjustment_fen} on a tap that is not an accepted tap-off (expected 0)")

    if entry.tap_kind not in (0, 1, 2, 3):
        problems.append(f"tap_kind={entry.tap_kind!r} (expected 0 board, 1 on, 2 off or 3 entry)")
    if entry.medium not in (1, 2):
        problems.append(f"medium={entry.medium!r} (expected 1 card or 2 QR)")
    if entry.decision not in (0, 1):
        problems.append(f"decision={entry.decision!r} (expected 1 accepted or 0 rejected)")
    if entry.fare_fen < 0 or entry.full_fare_fen < 0:
        problems.append(f"fare_fen={entry.fare_fen}, full_fare_fen={entry.full_fare_fen} (expected >= 0)")
    unknown = [kind for kind in entry.discount_kinds if kind not in DISCOUNT_KINDS]
    if unknown:
        problems.append(f"discount_kinds={unknown!r} (expected category, transfer or cap)")
    if len(entry.request_digest) != 32:
        problems.append(f"request_digest of {len(entry.request_digest)} bytes (expected SHA-256, 32 bytes)")
    if entry.replay_key is not None and len(entry.replay_key) != 32:
        problems.append(f"replay_key of {len(entry.replay_key)} bytes (expected 32)")

    if problems:
        text = "; ".join(problems)
        raise JournalEntryError(f"invalid journal entry for device {entry.device_id} tap {entry.device_tap_id}: {text}",
                                f"无效的流水记录（设备 {entry.device_id}，交易 {entry.device_tap_id}）：{text}")


@dataclasses.dataclass(slots=True)
class _Pending:
    entry: JournalEntry
    day: dt.date
    future: asyncio.Future[JournalOutcome]


class Journal:
    """Group-commit writer; one per worker process, shared by all its connections.

    ``pool`` is an asyncpg pool of the migrated database. A flush uses one
    connection for the time of its commit. ``worker`` names the writer in
    ``journal_batches``. ``pending_max`` bounds the entries waiting for a
    commit; beyond it :meth:`append` raises :class:`JournalUnavailable` at once.
    """

    def __init__(self, pool: asyncpg.Pool, *, worker: str, flush_interval_ms: float = 2.0, batch_max: int = 512,
                 day_cutoff: dt.time = dt.time(0, 0), pending_max: int | None = None,
                 commit_timeout_s: float = 10.0, maintain_partitions: bool = True) -> None:
        if batch_max < 1:
            raise ValueError(f"batch_max={batch_max}: expected at least 1")
        if flush_interval_ms <= 0:
            raise ValueError(f"flush_interval_ms={flush_interval_ms}: expected more than 0")
        self._pool = pool
        self.worker = worker
        self.flush_interval_s = flush_interval_ms / 1000.0
        self.batch_max = batch_max
        self.day_cutoff = day_cutoff
        self.pending_max = pending_max if pending_max is not None else 64 * batch_max
        self.commit_timeout_s = commit_timeout_s
        self._maintain_partitions = maintain_partitions
        self._pending: list[_Pending] = []
        self._first_at = 0.0
        self._last_commit_end = float("-inf")
        self._wakeup = asyncio.Event()
        self._full = asyncio.Event()
        self._closing = False
        self._started = False
        self._task: asyncio.Task[None] | None = None
        self._maintenance: asyncio.Task[None] | None = None
        self._failures = 0
        self._state_requests: dict[bytes, list[asyncio.Future[bytes | None]]] = {}
        self._state_task: asyncio.Task[None] | None = None
        self._day_bounds = (0, 0, dt.date(1970, 1, 1))
        # Counts for tests and benchmarks: batches committed, the new rows in
        # them, and the seconds spent in successful commit calls.
        self.batches_committed = 0
        self.entries_committed = 0
        self.commit_seconds = 0.0

    # --- lifecycle ---

    async def start(self) -> None:
        """Create missing day partitions, then start the flusher (and hourly partition upkeep)."""
        if self._started:
            return
        if self._maintain_partitions:
            async with self._pool.acquire() as conn:
                await ensure_partitions(conn, self.day_cutoff)
            self._maintenance = asyncio.create_task(self._keep_partitions(), name=f"journal-partitions-{self.worker}")
        self._started = True
        self._task = asyncio.create_task(self._run(), name=f"journal-flusher-{self.worker}")
        log_event(log, logging.INFO, "journal.started", worker=self.worker, batch_max=self.batch_max,
                  flush_interval_ms=self.flush_interval_s * 1000)

    async def close(self) -> None:
        """Flush everything pending, then stop. Appends after close raise JournalUnavailable."""
        if self._closing:
            if self._task is not None:
                await asyncio.shield(self._task)
            return
        self._closing = True
        self._wakeup.set()
        self._full.set()
        if self._maintenance is not None:
            self._maintenance.cancel()
            try:
                await self._maintenance
            except asyncio.CancelledError:
                pass
        if self._task is not None:
            await self._task
        log_event(log, logging.INFO, "journal.closed", worker=self.worker, batches=self.batches_committed,
                  entries=self.entries_committed)

    async def __aenter__(self) -> Journal:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # --- the API ---

    def append(self, entry: JournalEntry) -> asyncio.Future[JournalOutcome]:
        """Queue ``entry`` for the next group commit; await the result for its outcome.

        The future resolves after the commit is durable, or fails with
        :class:`JournalUnavailable`. Invalid fields raise
        :class:`JournalEntryError` at once.
        """
        if not self._started or self._closing:
            raise JournalUnavailable("the journal writer is not running", "流水写入器未运行",
                                     "start() it first, and append nothing after close()")
        _check_entry(entry)
        if len(self._pending) >= self.pending_max:
            metrics.JOURNAL_ENTRIES.labels("failed").inc()
            raise JournalUnavailable(
                f"the journal is overloaded: {len(self._pending)} entries wait for a commit",
                f"流水写入繁忙：{len(self._pending)} 笔等待提交", "retry shortly / 请稍后重试")
        day = self._business_day(entry.tap_time_ms)
        future: asyncio.Future[JournalOutcome] = asyncio.get_running_loop().create_future()
        if not self._pending:
            self._first_at = time.monotonic()
            self._wakeup.set()
        self._pending.append(_Pending(entry, day, future))
        if len(self._pending) >= self.batch_max:
            self._full.set()
        return future

    async def load_rider_states(self, holder_tokens: Iterable[bytes]) -> dict[bytes, bytes]:
        """Return the stored encoded rider state of each holder that has one, in one round trip.

        NOTE: the state written by the last commit wins. Two workers pricing
        taps of one holder at the same moment both start from the same state.
        """
        tokens = list(holder_tokens)
        if not tokens:
            return {}
        try:
            async with self._pool.acquire() as conn:
                rows = await conn.fetch(
                    "SELECT holder_token, state FROM rider_states WHERE holder_token = ANY($1::bytea[])", tokens)
        except CONNECTION_ERRORS as exc:
            raise JournalUnavailable(f"cannot load rider states: {exc}", f"无法读取乘客状态：{exc}") from exc
        return {bytes(row[0]): bytes(row[1]) for row in rows}

    def load_rider_state(self, holder_token: bytes) -> asyncio.Future[bytes | None]:
        """Return a future of one holder's stored encoded rider state (None if there is none).

        Calls made while a lookup is in flight are answered together by the
        next one, so concurrent taps share one round trip, as appends share
        one commit. Fails with :class:`JournalUnavailable` like
        :meth:`load_rider_states`.
        """
        future: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()
        self._state_requests.setdefault(bytes(holder_token), []).append(future)
        if self._state_task is None or self._state_task.done():
            self._state_task = asyncio.create_task(self._serve_state_requests(),
                                                   name=f"journal-states-{self.worker}")
        return future

    async def _serve_state_requests(self) -> None:
        while self._state_requests:
            requests, self._state_requests = self._state_requests, {}
            try:
                states = await self.load_rider_states(requests)
            except Exception as exc:
                error = exc if isinstance(exc, JournalUnavailable) else JournalUnavailable(
                    f"cannot load rider states: {exc}", f"无法读取乘客状态：{exc}")
                for futures in requests.values():
                    for future in futures:
                        _set_exception(future, error)
                continue
            for token, futures in requests.items():
                for future in futures:
                    if not future.done():
                        future.set_result(states.get(token))

    def _business_day(self, tap_time_ms: int) -> dt.date:
        # Most taps fall in the same business day as the previous one, so keep its bounds.
        start_ms, end_ms, day = self._day_bounds
        if start_ms <= tap_time_ms < end_ms:
            return day
        day = business_day(from_unix_ms(tap_time_ms), self.day_cutoff)
        start, end = day_bounds(day, self.day_cutoff)
        self._day_bounds = (to_unix_ms(start), to_unix_ms(end), day)
        return day

    @property
    def pending(self) -> int:
        return len(self._pending)

    # --- the flusher ---

    async def _run(self) -> None:
        while True:
            if not self._pending:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue

            # Let the group fill: wait until flush_interval after its first entry, or until it is full.
            # An entry that found the writer idle for a whole interval commits at once: at low load
            # waiting adds latency and gathers nothing, and under load commits follow each other
            # closely, so the interval still groups the entries.
            delay = self._first_at + self.flush_interval_s - time.monotonic()
            idle = self._first_at - self._last_commit_end >= self.flush_interval_s
            if delay > 0 and not idle and len(self._pending) < self.batch_max and not self._closing:
                self._full.clear()
                try:
                    await asyncio.wait_for(self._full.wait(), delay)
                except TimeoutError:
                    pass

            batch = self._pending[:self.batch_max]
            del self._pending[:self.batch_max]
            if self._pending:
                self._first_at = time.monotonic()
            metrics.JOURNAL_PENDING.set(len(self._pending))
            try:
                await self._commit(batch)
            except asyncio.CancelledError:
                # Cancelled without close() (the event loop is ending): nothing of this batch is
                # acknowledged, so fail its appends rather than leave them waiting.
                self._fail(batch, ConnectionError("the journal writer was cancelled"))
                raise
            except Exception as exc:
                # A bug while handling the results: fail what is still waiting and keep flushing.
                log.exception("journal.flush_error worker=%s entries=%d", self.worker, len(batch))
                error = JournalUnavailable(f"the journal writer failed: {exc}", f"流水写入器出错：{exc}")
                for item in batch:
                    _set_exception(item.future, error)
            self._last_commit_end = time.monotonic()

    async def _commit(self, batch: list[_Pending]) -> BaseException | None:
        """Commit ``batch`` and resolve its futures; return the connection error that failed it, if any."""
        records = [_record(item.entry, item.day) for item in batch]
        started = time.perf_counter()
        try:
            async with self._pool.acquire(timeout=self.commit_timeout_s) as conn:
                rows = await conn.fetch(_COMMIT_SQL, self.worker, records, timeout=self.commit_timeout_s)
        except _ENTRY_ERRORS as exc:
            if len(batch) > 1:
                # Some entry's value was rejected, and the whole transaction with it.
                # Commit the entries one by one, so only the bad one fails.
                log_event(log, logging.WARNING, "journal.batch_split", worker=self.worker, entries=len(batch),
                          error=type(exc).__name__, detail=str(exc)[:200])
                for index, item in enumerate(batch):
                    failure = await self._commit([item])
                    if failure is not None:
                        # PostgreSQL itself failed: each remaining entry would wait for a back-off
                        # and fail the same way, so fail them all now.
                        if index + 1 < len(batch):
                            self._fail(batch[index + 1:], failure)
                        return failure
                return None
            self._fail(batch, exc, bad_entry=True)
            return None
        except CONNECTION_ERRORS as exc:
            self._fail(batch, exc)
            await self._back_off()
            return exc
        except Exception as exc:
            # Anything else is a bug. Fail the appends so no caller waits forever,
            # and keep the flusher alive for the next batch.
            log.exception("journal.commit_error worker=%s entries=%d", self.worker, len(batch))
            self._fail(batch, exc)
            return None

        elapsed = time.perf_counter() - started
        self.commit_seconds += elapsed
        self._failures = 0
        metrics.JOURNAL_COMMITS.labels("ok").inc()
        metrics.JOURNAL_COMMIT_SECONDS.observe(elapsed)
        metrics.JOURNAL_BATCH_TAPS.observe(len(batch))
        counts = [0, 0, 0]
        by_ord = {row["ord"]: row for row in rows}
        for ord_, item in enumerate(batch, start=1):
            row = by_ord.get(ord_)
            status = _STATUS_MISSING_ROW if row is None else row["status"]
            if status == _STATUS_MISSING_ROW:
                _set_exception(item.future, JournalIntegrityError(
                    f"device {item.entry.device_id} tap {item.entry.device_tap_id} has a key in tap_keys "
                    "but no row in taps",
                    f"设备 {item.entry.device_id} 交易 {item.entry.device_tap_id} 有键但流水缺失",
                    "run `tapgate journal verify` / 请运行 `tapgate journal verify`"))
                continue
            counts[status] += 1
            _set_result(item.future, JournalOutcome(
                status=STATUS_NAMES[status], journal_id=row["tap_id"], business_day=row["business_day"],
                batch_id=row["batch_id"], decision=row["decision"], reason=row["reason"],
                fare_fen=row["fare_fen"], full_fare_fen=row["full_fare_fen"],
                rider_category=row["rider_category"], product_id=row["product_id"],
                discount_kinds=tuple(row["discount_kinds"] or ()), rule_set_version=row["rule_set_version"],
                adjustment_fen=row["adjustment_fen"], full_fare_adjustment_fen=row["full_fare_adjustment_fen"]))
        for status, count in enumerate(counts):
            if count:
                metrics.JOURNAL_ENTRIES.labels(STATUS_NAMES[status]).inc(count)
        if counts[0]:
            self.batches_committed += 1
            self.entries_committed += counts[0]
        return None

    def _fail(self, batch: list[_Pending], exc: BaseException, *, bad_entry: bool = False) -> None:
        metrics.JOURNAL_COMMITS.labels("failed").inc()
        metrics.JOURNAL_ENTRIES.labels("failed").inc(len(batch))
        error: JournalError
        if bad_entry:
            # PostgreSQL rejected this entry's values: a retry would fail the same way.
            entry = batch[0].entry
            log_event(log, logging.ERROR, "journal.entry_rejected", worker=self.worker, device=entry.device_id,
                      device_tap_id=entry.device_tap_id, error=type(exc).__name__, detail=str(exc)[:200])
            error = JournalEntryError(
                f"PostgreSQL rejected the journal entry of device {entry.device_id} tap {entry.device_tap_id}: {exc}",
                f"数据库拒绝了该流水记录（设备 {entry.device_id}，交易 {entry.device_tap_id}）：{exc}")
        else:
            self._failures += 1
            log_event(log, logging.ERROR, "journal.commit_failed", worker=self.worker, entries=len(batch),
                      failures=self._failures, error=type(exc).__name__, detail=str(exc)[:200])
            error = JournalUnavailable(f"the journal commit failed, the tap is not recorded: {exc}",
                                       f"流水提交失败，交易未记录：{exc}", "retry the same tap id / 请用同一交易号重试")
        for item in batch:
            _set_exception(item.future, error)

    async def _back_off(self) -> None:
        # After repeated failures wait a little before the next attempt, so a
        # PostgreSQL outage is not hammered; appends keep queueing meanwhile.
        if self._failures > 1 and not self._closing:
            await asyncio.sleep(min(0.05 * 2 ** (self._failures - 2), 0.5))

    async def _keep_partitions(self) -> None:
        while True:
            await asyncio.sleep(PARTITION_REFRESH_S)
            try:
                async with self._pool.acquire() as conn:
                    await ensure_partitions(conn, self.day_cutoff)
            except CONNECTION_ERRORS as exc:
                # Taps without a partition land in taps_default, so this is not fatal; try again next hour.
                log_event(log, logging.WARNING, "journal.partitions_failed", worker=self.worker, error=exc)


def _record(entry: JournalEntry, day: dt.date) -> tuple[object, ...]:
    # Field order of the tapgate_journal_entry composite type (0020, then the two fields added in 0026).
    return (entry.device_id, entry.device_tap_id, day, entry.tap_time_ms, entry.received_at_ms, entry.offline,
            entry.operator_id, entry.route_id, entry.stop_id, entry.site_id, entry.tap_kind, entry.medium,
            entry.credential_id, entry.holder_token, entry.account_token, entry.decision, entry.reason,
            entry.rider_category, entry.product_id, entry.fare_fen, entry.full_fare_fen,
            ",".join(entry.discount_kinds), entry.rule_set_version, entry.request_digest, entry.replay_key,
            entry.rider_state, entry.adjustment_fen, entry.full_fare_adjustment_fen)


def _set_result(future: asyncio.Future[JournalOutcome], outcome: JournalOutcome) -> None:
    # The caller may have been cancelled (client gone); the tap is journaled all the same.
    if not future.done():
        future.set_result(outcome)


def _set_exception(future: asyncio.Future, exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
        # Mark it retrieved, so an abandoned future does not log "exception was never retrieved".
        future.exception()
