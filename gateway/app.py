"""Routes of the tap server: authentication, body decoding, and the responses of every endpoint.

Bodies are JSON or MessagePack, chosen by ``Content-Type`` for requests, and
responses use the same format (``Accept`` chooses for GET). Every error
response has the shape ``{"error": {"code", "message_zh", "message_en", "field"?}}``.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import re
import time
from typing import Any, Awaitable, Callable

import msgspec

from gateway import auth, denylist, http_metrics
from gateway.db import CONNECTION_ERRORS
from gateway.errors import DatabaseError, msgspec_message_zh
from gateway.http import Request, Response
from gateway.http_schema import (DenyEntry, DenyListResponse, ErrorBody, ErrorDetail, TapResponse, TapBatchResponse,
                                 TapBatchRequest, TapRequest)
from gateway.logs import log_event
from gateway.pipeline import TapOutcome, TapPipeline
from gateway.ratelimit import TokenBuckets

log = logging.getLogger(__name__)

JSON = b"application/json"
MSGPACK = b"application/msgpack"

_json_encoder = msgspec.json.Encoder()
_msgpack_encoder = msgspec.msgpack.Encoder()
_DECODERS = {
    (JSON, TapRequest): msgspec.json.Decoder(TapRequest),
    (MSGPACK, TapRequest): msgspec.msgpack.Decoder(TapRequest),
    (JSON, TapBatchRequest): msgspec.json.Decoder(TapBatchRequest),
    (MSGPACK, TapBatchRequest): msgspec.msgpack.Decoder(TapBatchRequest),
}
_FIELD_PATH = re.compile(r"at `(\$[^`]*)`")
_FIELD_NAME = re.compile(r"(?:unknown|required) field `([^`]+)`")


class HttpError(Exception):
    """A response other than 200, raised inside a route and turned into an error body."""

    def __init__(self, status: int, code: str, message_en: str, message_zh: str, *, field: str | None = None,
                 headers: list[tuple[bytes, bytes]] | None = None) -> None:
        super().__init__(message_en)
        self.status = status
        self.code = code
        self.message_en = message_en
        self.message_zh = message_zh
        self.field = field
        self.headers = headers or []


def encode_body(value: Any, content_type: bytes) -> bytes:
    return _msgpack_encoder.encode(value) if content_type == MSGPACK else _json_encoder.encode(value)


def error_response(status: int, code: str, message_en: str, message_zh: str, *, field: str | None = None,
                   content_type: bytes = JSON, headers: list[tuple[bytes, bytes]] | None = None) -> Response:
    body = ErrorBody(error=ErrorDetail(code=code, message_zh=message_zh, message_en=message_en, field=field))
    return Response(status, encode_body(body, content_type), content_type, headers)


def plain_error_response(status: int, code: str, message_en: str, message_zh: str) -> Response:
    """Error response for requests that could not be parsed at all (always JSON)."""
    return error_response(status, code, message_en, message_zh)


def _body_type(request: Request) -> bytes:
    """Return JSON or MSGPACK from the request's Content-Type, or raise 415."""
    value = request.headers.get(b"content-type", b"")
    media = value.split(b";", 1)[0].strip().lower()
    if media == JSON:
        return JSON
    if media in (MSGPACK, b"application/x-msgpack", b"application/vnd.msgpack"):
        return MSGPACK
    shown = media.decode("latin-1") or "(none)"
    raise HttpError(415, "unsupported_media_type",
                    f"unsupported Content-Type {shown}; send application/json or application/msgpack",
                    f"不支持的 Content-Type {shown}，请使用 application/json 或 application/msgpack")


def _answer_type(request: Request) -> bytes:
    """Return the format of the response: the request body's format, else the one ``Accept`` names."""
    sent = request.headers.get(b"content-type", b"")
    if b"msgpack" in sent:
        return MSGPACK
    accept = request.headers.get(b"accept", b"")
    return MSGPACK if b"msgpack" in accept and b"json" not in accept else JSON


def decode_body(request: Request, content_type: bytes, schema: type) -> Any:
    """Decode and validate a body; raise 400 for bad syntax and 422 naming the field for bad values."""
    try:
        return _DECODERS[(content_type, schema)].decode(request.body)
    except msgspec.ValidationError as exc:
        text = str(exc)
        raise HttpError(422, "invalid_field", f"invalid request body: {text}",
                        f"请求体字段无效：{msgspec_message_zh(text)}", field=_field_path(text)) from exc
    except msgspec.DecodeError as exc:
        kind = "MessagePack" if content_type == MSGPACK else "JSON"
        raise HttpError(400, "malformed_body", f"request body is not valid {kind}: {exc}",
                        f"请求体不是有效的 {kind}：{msgspec_message_zh(str(exc))}") from exc


def _field_path(message: str) -> str | None:
    """Return the JSON path of the field that a msgspec validation message names."""
    # msgspec: "Expected `int`, got `str` - at `$.tap_time_ms`", or for a field
    # of the object itself "Object contains unknown field `x`" (at the root, no path).
    at = _FIELD_PATH.search(message)
    path = at.group(1) if at else "$"
    name = _FIELD_NAME.search(message)
    if name:
        return f"{path}.{name.group(1)}"
    return path if at else None


Route = Callable[[Request], Awaitable[Response]]


class AnomalyLog:
    """Log a rejected authentication at most once per kind per minute, counting the ones left out."""

    INTERVAL_S = 60.0

    def __init__(self) -> None:
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def note(self, kind: str, **fields: object) -> None:
        now = time.monotonic()
        if now - self._last.get(kind, -self.INTERVAL_S) < self.INTERVAL_S:
            self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
            return
        self._last[kind] = now
        log_event(log, logging.WARNING, "auth.rejected", kind=kind, suppressed=self._suppressed.pop(kind, 0),
                  **fields)


class _Deadline:
    __slots__ = ("task", "due", "expired")

    def __init__(self, task: asyncio.Task[Any] | None, due: float) -> None:
        self.task = task
        self.due = due
        self.expired = False


class DeadlineWatch:
    """Cancel tasks that run longer than ``timeout_s``, checked every ``timeout_s / 20`` (at most 0.1 s).

    Every deadline is ``timeout_s`` after its start, so deadlines come due in
    the order they were set, and one periodic timer serves them all. A task
    is cancelled at most one check interval after its deadline. The caller
    clears ``task`` when it is done and, on cancellation, checks ``expired``
    and calls ``task.uncancel()``, as ``asyncio.timeout`` does.
    """

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.interval_s = min(0.1, timeout_s / 20)
        self._entries: collections.deque[_Deadline] = collections.deque()
        self._timer: asyncio.TimerHandle | None = None

    def watch(self) -> _Deadline:
        """Start the deadline of the current task."""
        loop = asyncio.get_running_loop()
        entry = _Deadline(asyncio.current_task(), loop.time() + self.timeout_s)
        self._entries.append(entry)
        if self._timer is None:
            self._timer = loop.call_at(entry.due + self.interval_s, self._check)
        return entry

    def _check(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        entries = self._entries
        while entries and (entries[0].task is None or entries[0].due <= now):
            entry = entries.popleft()
            if entry.task is not None and not entry.task.done():
                entry.expired = True
                entry.task.cancel()
        # Entries whose task has finished are dropped on a later check; none is older than timeout_s.
        self._timer = loop.call_at(now + self.interval_s, self._check) if entries else None


class GatewayApp:
    """The request handler of one worker; ``worker`` is the :class:`gateway.server.Worker` it serves."""

    def __init__(self, worker: Any) -> None:
        self.worker = worker
        self.config = worker.config
        self.pipeline: TapPipeline = worker.pipeline
        server = self.config.server
        self.buckets = TokenBuckets(server.device_rate_per_s, server.device_rate_burst)
        self.anomalies = AnomalyLog()
        self.deadlines = DeadlineWatch(self.config.database.connect_timeout_s)
        self.routes: dict[str, dict[str, Route]] = {
            "/v1/taps": {"POST": self.post_tap},
            "/v1/taps/batch": {"POST": self.post_tap_batch},
            "/v1/deny-list": {"GET": self.get_deny_list},
            "/healthz": {"GET": self.get_healthz},
            "/readyz": {"GET": self.get_readyz},
            "/metrics": {"GET": self.get_metrics},
        }

    async def handle(self, request: Request) -> Response:
        methods = self.routes.get(request.path)
        if methods is None:
            response = error_response(404, "not_found", f"no such endpoint {request.path}",
                                      f"没有此接口 {request.path}")
        elif request.method not in methods:
            allowed = ", ".join(methods).encode("ascii")
            response = error_response(405, "method_not_allowed",
                                      f"method {request.method} is not allowed on {request.path}; use "
                                      f"{allowed.decode()}", f"{request.path} 不支持 {request.method} 方法",
                                      headers=[(b"allow", allowed)])
        else:
            try:
                response = await methods[request.method](request)
            except HttpError as exc:
                response = error_response(exc.status, exc.code, exc.message_en, exc.message_zh, field=exc.field,
                                          content_type=_answer_type(request), headers=exc.headers)
        http_metrics.count_request(request.path if methods else "other", response.status)
        return response

    # -- device authentication --------------------------------------------

    def _authenticate(self, request: Request, now_ms: int) -> auth.Authenticated:
        target = f"{request.path}?{request.query}" if request.query else request.path
        result = auth.authenticate(self.worker.registry, request.method, target,
                                   request.headers.get(b"authorization"), request.body, now_ms,
                                   self.config.server.device_clock_skew_s)
        if isinstance(result, auth.AuthFailure):
            self.anomalies.note(result.code, peer=request.peer)
            raise HttpError(result.status, result.code, result.message_en, result.message_zh,
                            headers=[(b"www-authenticate", auth.SCHEME.encode("ascii"))])
        wait_s = self.buckets.take(result.device.device_id)
        if wait_s > 0:
            retry = str(max(1, int(wait_s + 0.999))).encode("ascii")
            raise HttpError(429, "rate_limited",
                            f"device {result.device.device_id!r} exceeds {self.config.server.device_rate_per_s:g} "
                            "requests per second; retry later",
                            f"设备 {result.device.device_id!r} 请求过于频繁，请稍后重试",
                            headers=[(b"retry-after", retry)])
        return result

    async def _nonce_ok(self, claim: asyncio.Future[bool]) -> None:
        try:
            fresh = await claim
        except ConnectionError as exc:
            raise _unavailable(str(exc)) from exc
        if not fresh:
            self.anomalies.note("replayed_request")
            failure = auth.REPLAYED
            raise HttpError(failure.status, failure.code, failure.message_en, failure.message_zh)

    def _check_place(self, device: Any, tap: TapRequest, index: int | None = None) -> None:
        """Raise 403 unless the tap is for the device's own route or site; 422 for a wrong tap kind."""
        where = f"$.taps[{index}]" if index is not None else "$"
        if device.kind == "validator":
            if tap.site_id is not None:
                raise HttpError(403, "wrong_site",
                                f"device {device.device_id!r} is a validator on route {device.route_id!r} and "
                                "submits no site_id; leave site_id empty",
                                f"设备 {device.device_id!r} 是线路 {device.route_id!r} 的车载验票机，不能提交 site_id，"
                                "请将 site_id 留空", field=f"{where}.site_id")
            if tap.route_id is not None and tap.route_id != device.route_id:
                raise HttpError(403, "wrong_route",
                                f"device {device.device_id!r} may submit taps only for route {device.route_id!r}",
                                f"设备 {device.device_id!r} 只能提交线路 {device.route_id!r} 的交易",
                                field=f"{where}.route_id")
            if tap.tap_kind == "entry":
                raise HttpError(422, "invalid_field", "a validator's tap_kind is board, on or off",
                                "车载验票机的 tap_kind 应为 board、on 或 off", field=f"{where}.tap_kind")
        else:
            if tap.route_id is not None:
                raise HttpError(403, "wrong_route",
                                f"device {device.device_id!r} is a gate at site {device.site_id!r} and submits "
                                "no route_id; leave route_id empty",
                                f"设备 {device.device_id!r} 是场所 {device.site_id!r} 的闸机，不能提交 route_id，"
                                "请将 route_id 留空", field=f"{where}.route_id")
            if tap.site_id is not None and tap.site_id != device.site_id:
                raise HttpError(403, "wrong_site",
                                f"device {device.device_id!r} may submit taps only for site {device.site_id!r}",
                                f"设备 {device.device_id!r} 只能提交场所 {device.site_id!r} 的交易",
                                field=f"{where}.site_id")
            if tap.tap_kind != "entry":
                raise HttpError(422, "invalid_field", "a gate's tap_kind is entry", "闸机的 tap_kind 应为 entry",
                                field=f"{where}.tap_kind")

    @staticmethod
    def _fill_place(device: Any, tap: TapRequest) -> None:
        if device.kind == "validator":
            tap.route_id = device.route_id
        else:
            tap.site_id = device.site_id

    # -- routes ---------------------------------------------------------------

    async def post_tap(self, request: Request) -> Response:
        started = time.perf_counter()
        received_at_ms = int(time.time() * 1000)
        authenticated = self._authenticate(request, received_at_ms)
        content_type = _body_type(request)
        tap: TapRequest = decode_body(request, content_type, TapRequest)
        device = authenticated.device
        self._check_place(device, tap)
        self._fill_place(device, tap)

        # The nonce claim and the tap's processing run together; a replayed
        # request carries the original body, so the journal records nothing new for it.
        claim = self.worker.nonces.claim(authenticated.nonce, device.device_id, authenticated.ts_ms)
        outcome = await self._process(device, tap, received_at_ms)
        await self._nonce_ok(claim)

        answer = outcome.answer
        http_metrics.TAP_LATENCY.observe(time.perf_counter() - started)
        http_metrics.count_tap(answer.decision, answer.reason_name)
        if outcome.conflict:
            raise HttpError(409, "tap_id_conflict",
                            f"tap_id {tap.tap_id} of device {device.device_id!r} was already used for a "
                            "different tap; use a new tap_id for a new tap",
                            f"设备 {device.device_id!r} 的 tap_id {tap.tap_id} 已用于另一笔交易，新交易须使用新的 tap_id",
                            field="$.tap_id")
        return Response(200, encode_body(answer, content_type), content_type)

    async def post_tap_batch(self, request: Request) -> Response:
        received_at_ms = int(time.time() * 1000)
        authenticated = self._authenticate(request, received_at_ms)
        content_type = _body_type(request)
        batch: TapBatchRequest = decode_body(request, content_type, TapBatchRequest)
        limit = self.config.server.batch_taps_max
        if not 1 <= len(batch.taps) <= limit:
            raise HttpError(422, "invalid_field", f"invalid batch size {len(batch.taps)}: a batch contains 1 to {limit} taps",
                            f"一批应包含 1 到 {limit} 笔交易，实际 {len(batch.taps)} 笔", field="$.taps")
        device = authenticated.device
        for index, tap in enumerate(batch.taps):
            self._check_place(device, tap, index)
            self._fill_place(device, tap)

        claim = self.worker.nonces.claim(authenticated.nonce, device.device_id, authenticated.ts_ms)
        # Taps are started in tap-time order: taps of one holder then take
        # their holder lock, and so their rider state, in that order.
        order = sorted(range(len(batch.taps)), key=lambda i: batch.taps[i].tap_time_ms)
        tasks = {i: asyncio.ensure_future(self._process(device, batch.taps[i], received_at_ms)) for i in order}
        try:
            outcomes: list[TapOutcome] = [await tasks[i] for i in range(len(batch.taps))]
        finally:
            for task in tasks.values():
                if not task.done():
                    task.cancel()
        await self._nonce_ok(claim)
        for outcome in outcomes:
            http_metrics.count_tap(outcome.answer.decision, outcome.answer.reason_name)
        answer = TapBatchResponse(results=[o.answer for o in outcomes], server_time_ms=int(time.time() * 1000))
        return Response(200, encode_body(answer, content_type), content_type)

    async def _process(self, device: Any, tap: TapRequest, received_at_ms: int) -> TapOutcome:
        # The deadline watch cancels this task at the deadline, as asyncio.timeout would, without a timer
        # handle per tap. The timer's call_at and cancellation were 3 % of a worker's profile under load.
        entry = self.deadlines.watch()
        try:
            try:
                return await self.pipeline.process(device, tap, received_at_ms)
            except asyncio.CancelledError as exc:
                if entry.expired and entry.task.uncancel() == 0:
                    raise TimeoutError(f"the tap timed out after {self.deadlines.timeout_s:g} s") from exc
                raise
            finally:
                entry.task = None
        except (DatabaseError, *CONNECTION_ERRORS) as exc:
            # DatabaseError includes the journal's JournalUnavailable; OSError includes ConnectionError.
            self.worker.note_database_error(exc)
            raise _unavailable(f"{type(exc).__name__}: {exc}") from exc

    async def get_deny_list(self, request: Request) -> Response:
        received_at_ms = int(time.time() * 1000)
        authenticated = self._authenticate(request, received_at_ms)
        since = _query_int(request.query, "since", default=0)
        claim = self.worker.nonces.claim(authenticated.nonce, authenticated.device.device_id, authenticated.ts_ms)
        await self._nonce_ok(claim)
        try:
            async with self.worker.pool.acquire(timeout=self.config.database.connect_timeout_s) as conn:
                changes = await denylist.delta(conn, since)
        except CONNECTION_ERRORS as exc:
            self.worker.note_database_error(exc)
            raise _unavailable(f"{type(exc).__name__}: {exc}") from exc
        entries = [DenyEntry(kind=e.kind, subject=e.subject.hex(), active=e.active, version=e.version)
                   for e in changes.entries]
        answer = DenyListResponse(since=since, version=changes.version, entries=entries, more=changes.more)
        content_type = _answer_type(request)
        return Response(200, encode_body(answer, content_type), content_type)

    async def get_healthz(self, request: Request) -> Response:
        return Response(200, b'{"status":"ok"}')

    async def get_readyz(self, request: Request) -> Response:
        problem = await self.worker.readiness_problem()
        if problem is None:
            return Response(200, b'{"status":"ready"}')
        en, zh = problem
        return error_response(503, "not_ready", en, zh, headers=[(b"retry-after", b"1")])

    async def get_metrics(self, request: Request) -> Response:
        self.worker.update_cache_metrics()
        return Response(200, http_metrics.exposition(), http_metrics.CONTENT_TYPE)


def _unavailable(detail: str) -> HttpError:
    return HttpError(503, "database_unavailable",
                     f"the journal database is unavailable, the tap was not acknowledged ({detail}); "
                     "retry the same request with the same tap_id",
                     "交易记录数据库暂不可用，本笔交易未确认，请使用相同的 tap_id 重试",
                     headers=[(b"retry-after", b"1")])


def _query_int(query: str, name: str, default: int) -> int:
    for part in query.split("&"):
        key, _, value = part.partition("=")
        if key == name:
            if not value.isdigit() or len(value) > 18:
                raise HttpError(422, "invalid_field", f"query parameter {name} must be a non-negative integer, "
                                f"got {value!r}", f"查询参数 {name} 应为非负整数，实际为 {value!r}", field=name)
            return int(value)
    return default
