"""HTTP/1.1 server protocol on asyncio: httptools parses requests, the application handles them.

One :class:`HttpProtocol` per connection. Requests may be pipelined: each
complete request starts a task at once, so taps on one connection join the
same group commit, and the responses are written strictly in request order.
Limits that protect a worker from its clients:

- a request (headers and body) must arrive within ``request_timeout_s``,
  else the client gets 408 and the connection is closed;
- a body larger than ``body_max_bytes`` gets 413 before it is read;
- headers larger than ``HEADERS_MAX_BYTES`` get 431;
- at most ``PIPELINE_MAX`` requests wait per connection, beyond which the
  protocol stops reading from the socket until responses are written;
- an idle keep-alive connection is closed after ``KEEPALIVE_IDLE_S``.

Malformed HTTP gets 400 and a closed connection. Nothing a client sends
raises out of this module: an unexpected error in the application gets a
500 response and is logged.
"""

from __future__ import annotations

import asyncio
import collections
import http
import logging
from typing import Awaitable, Callable

import httptools

from gateway.logs import log_event

log = logging.getLogger(__name__)

HEADERS_MAX_BYTES = 16 * 1024
PIPELINE_MAX = 64
KEEPALIVE_IDLE_S = 75.0


class Request:
    """One parsed HTTP request. Header names are lower-case ``bytes``."""

    __slots__ = ("method", "path", "query", "headers", "body", "keep_alive", "peer")

    def __init__(self, method: str, path: str, query: str, headers: dict[bytes, bytes], body: bytes,
                 keep_alive: bool, peer: str) -> None:
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers
        self.body = body
        self.keep_alive = keep_alive
        self.peer = peer


class Response:
    """An HTTP response: status, extra headers and a complete body."""

    __slots__ = ("status", "headers", "body", "content_type")

    def __init__(self, status: int, body: bytes = b"", content_type: bytes = b"application/json",
                 headers: list[tuple[bytes, bytes]] | None = None) -> None:
        self.status = status
        self.body = body
        self.content_type = content_type
        self.headers = headers or []


Handler = Callable[[Request], Awaitable[Response]]
# Builds the body of a response to bad HTTP: (status, code, English message, Chinese message) -> Response.
ErrorFactory = Callable[[int, str, str, str], Response]

_STATUS_LINES = {
    status.value: f"HTTP/1.1 {status.value} {status.phrase}\r\n".encode("ascii") for status in http.HTTPStatus
}


def encode_response(response: Response, keep_alive: bool) -> bytes:
    head = [
        _STATUS_LINES.get(response.status) or f"HTTP/1.1 {response.status} Status\r\n".encode("ascii"),
        b"content-type: ", response.content_type, b"\r\n",
        b"content-length: ", str(len(response.body)).encode("ascii"), b"\r\n",
    ]
    for name, value in response.headers:
        head += (name, b": ", value, b"\r\n")
    if not keep_alive:
        head.append(b"connection: close\r\n")
    head.append(b"\r\n")
    head.append(response.body)
    return b"".join(head)


class _Limits:
    __slots__ = ("body_max_bytes", "request_timeout_s", "keepalive_idle_s")

    def __init__(self, body_max_bytes: int, request_timeout_s: float, keepalive_idle_s: float) -> None:
        self.body_max_bytes = body_max_bytes
        self.request_timeout_s = request_timeout_s
        self.keepalive_idle_s = keepalive_idle_s


class ConnectionSet:
    """The open connections of one server, so a drain can close the idle ones."""

    def __init__(self) -> None:
        self.connections: set[HttpProtocol] = set()
        self.draining = False
        self._empty = asyncio.Event()
        self._empty.set()

    def add(self, protocol: "HttpProtocol") -> None:
        self.connections.add(protocol)
        self._empty.clear()

    def discard(self, protocol: "HttpProtocol") -> None:
        self.connections.discard(protocol)
        if not self.connections:
            self._empty.set()

    def begin_drain(self) -> None:
        """Close idle connections now; busy ones close after their last pending response."""
        self.draining = True
        for protocol in list(self.connections):
            protocol.drain()

    async def wait_closed(self) -> None:
        await self._empty.wait()

    def abort_all(self) -> None:
        for protocol in list(self.connections):
            protocol.abort()


class HttpProtocol(asyncio.Protocol):
    """Parse requests from one connection, run the handler, write the responses in request order."""

    def __init__(self, handler: Handler, error_response: ErrorFactory, connections: ConnectionSet, *,
                 body_max_bytes: int, request_timeout_s: float,
                 keepalive_idle_s: float = KEEPALIVE_IDLE_S) -> None:
        self._handler = handler
        self._error_response = error_response
        self._connections = connections
        self._limits = _Limits(body_max_bytes, request_timeout_s, keepalive_idle_s)
        self._loop = asyncio.get_running_loop()
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._peer = ""

        # State of the request being parsed.
        self._url = b""
        self._headers: dict[bytes, bytes] = {}
        self._header_bytes = 0
        self._body: list[bytes] = []
        self._body_bytes = 0
        self._in_request = False

        # Responses not yet written, in request order: (task, keep_alive).
        self._pending: collections.deque[tuple[asyncio.Task[Response], bool]] = collections.deque()
        self._reading_paused = False
        self._closing = False
        self._eof = False
        self._timer: asyncio.TimerHandle | None = None
        self._timer_due = 0.0
        self._deadline = 0.0
        self._deadline_callback: Callable[[], None] | None = None
        # Set by a parser callback to stop feeding the parser and respond with an error.
        self._reject: tuple[int, str, str, str] | None = None

    # -- asyncio.Protocol -------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self._peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else ""
        self._connections.add(self)
        if self._connections.draining:
            self._closing = True
            transport.close()
            return
        self._arm_timer(self._limits.keepalive_idle_s, self._on_idle_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        self._stop_timer()
        for task, _ in self._pending:
            # The client is gone; let the task finish (its tap is journaled) but drop the response.
            task.remove_done_callback(self._on_response_ready)
        self._pending.clear()
        self._connections.discard(self)

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(400, "upgrade_not_supported", "protocol upgrade is not supported", "不支持协议升级")
            return
        except httptools.HttpParserError as exc:
            if self._reject is not None:
                self._fail(*self._reject)
            else:
                self._fail(400, "malformed_http", f"malformed HTTP request: {exc}", f"HTTP 请求格式错误：{exc}")
            return

    def eof_received(self) -> bool | None:
        # A half-closed client still gets the responses it is waiting for; the
        # connection closes once they are written.
        self._eof = True
        return bool(self._pending)

    # -- httptools callbacks ----------------------------------------------

    def on_message_begin(self) -> None:
        self._in_request = True
        self._url = b""
        self._headers = {}
        self._header_bytes = 0
        self._body = []
        self._body_bytes = 0
        self._arm_timer(self._limits.request_timeout_s, self._on_request_timeout)

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._header_bytes += len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value)
        if self._header_bytes > HEADERS_MAX_BYTES:
            self._reject = (431, "headers_too_large", f"request headers exceed {HEADERS_MAX_BYTES} bytes",
                            f"请求头超过 {HEADERS_MAX_BYTES} 字节")
            raise httptools.HttpParserError("headers too large")
        self._headers[name.lower()] = value

    def on_headers_complete(self) -> None:
        length = self._headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self._limits.body_max_bytes:
            self._reject = (413, "body_too_large",
                            f"request body of {int(length)} bytes exceeds the limit of "
                            f"{self._limits.body_max_bytes} bytes",
                            f"请求体 {int(length)} 字节，超过上限 {self._limits.body_max_bytes} 字节")
            raise httptools.HttpParserError("body too large")
        if self._headers.get(b"expect", b"").lower() == b"100-continue" and self._transport is not None:
            self._transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        if self._body_bytes > self._limits.body_max_bytes:
            self._reject = (413, "body_too_large",
                            f"request body exceeds the limit of {self._limits.body_max_bytes} bytes",
                            f"请求体超过上限 {self._limits.body_max_bytes} 字节")
            raise httptools.HttpParserError("body too large")
        self._body.append(body)

    def on_message_complete(self) -> None:
        self._in_request = False
        self._cancel_timer()
        parsed = httptools.parse_url(self._url)
        path = parsed.path.decode("ascii", "replace") if parsed.path else "/"
        query = parsed.query.decode("ascii", "replace") if parsed.query else ""
        keep_alive = self._parser.should_keep_alive() and not self._connections.draining
        body = b"".join(self._body) if len(self._body) != 1 else self._body[0]
        request = Request(self._parser.get_method().decode("ascii", "replace"), path, query,
                          self._headers, body, keep_alive, self._peer)
        task = self._loop.create_task(self._run(request))
        self._pending.append((task, keep_alive))
        task.add_done_callback(self._on_response_ready)
        if len(self._pending) >= PIPELINE_MAX and not self._reading_paused and self._transport is not None:
            self._transport.pause_reading()
            self._reading_paused = True

    # -- responding ----------------------------------------------------------

    async def _run(self, request: Request) -> Response:
        try:
            return await self._handler(request)
        except Exception as exc:  # the handler's faults must never take the connection or the worker down
            log_event(log, logging.ERROR, "http.handler_failed", path=request.path,
                      error=f"{type(exc).__name__}: {exc}")
            return self._error_response(500, "internal_error", "internal error; retry the request",
                                        "内部错误，请重试")

    def _on_response_ready(self, _task: asyncio.Task[Response]) -> None:
        transport = self._transport
        if transport is None:
            return
        while self._pending and self._pending[0][0].done():
            task, keep_alive = self._pending.popleft()
            response = task.result()
            keep_alive = keep_alive and not self._connections.draining
            transport.write(encode_response(response, keep_alive))
            if not keep_alive:
                self._close_after_write()
                return
        if self._reading_paused and len(self._pending) < PIPELINE_MAX // 2:
            transport.resume_reading()
            self._reading_paused = False
        if not self._pending and not self._in_request:
            if self._connections.draining or self._eof:
                self._close_after_write()
            else:
                self._arm_timer(self._limits.keepalive_idle_s, self._on_idle_timeout)

    def _fail(self, status: int, code: str, message_en: str, message_zh: str) -> None:
        """Respond to a request that cannot be parsed, after the responses already due, then close."""
        self._reject = None
        self._in_request = False
        response = self._error_response(status, code, message_en, message_zh)
        self._closing = True
        self._cancel_timer()
        if self._pending:
            # Earlier pipelined requests get their responses first, then this error.
            async def after_pending() -> Response:
                return response

            task = self._loop.create_task(after_pending())
            self._pending.append((task, False))
            task.add_done_callback(self._on_response_ready)
        elif self._transport is not None:
            self._transport.write(encode_response(response, keep_alive=False))
            self._close_after_write()

    def _close_after_write(self) -> None:
        self._closing = True
        self._cancel_timer()
        if self._transport is not None and not self._transport.is_closing():
            self._transport.close()

    # -- timers and draining ----------------------------------------------

    # One lazy timer per connection. Arming records the deadline and its
    # callback, and replaces the timer handle only if the new deadline is
    # earlier than the handle's. A handle that fires before the recorded
    # deadline re-arms for it. So a keep-alive connection creates no timer
    # handle per request.

    def _arm_timer(self, delay_s: float, callback: Callable[[], None]) -> None:
        due = self._loop.time() + delay_s
        self._deadline = due
        self._deadline_callback = callback
        if self._timer is not None:
            if self._timer_due <= due:
                return
            self._timer.cancel()
        self._timer_due = due
        self._timer = self._loop.call_at(due, self._on_timer)

    def _cancel_timer(self) -> None:
        self._deadline_callback = None

    def _stop_timer(self) -> None:
        self._deadline_callback = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_timer(self) -> None:
        self._timer = None
        callback = self._deadline_callback
        if callback is None:
            return
        if self._loop.time() < self._deadline:
            self._timer_due = self._deadline
            self._timer = self._loop.call_at(self._deadline, self._on_timer)
            return
        self._deadline_callback = None
        callback()

    def _on_request_timeout(self) -> None:
        if self._closing or not self._in_request:
            return
        self._fail(408, "request_timeout",
                   f"the request was not complete within {self._limits.request_timeout_s:g} s",
                   f"请求未在 {self._limits.request_timeout_s:g} 秒内发送完毕")

    def _on_idle_timeout(self) -> None:
        if not self._pending and not self._in_request:
            self._close_after_write()

    def drain(self) -> None:
        """Close now if idle; otherwise send the pending responses with ``connection: close``, then close."""
        if not self._pending and not self._in_request:
            self._close_after_write()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()
