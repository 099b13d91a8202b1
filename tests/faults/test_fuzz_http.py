"""Fuzzing HTTP request handling: raw bytes to a live worker's socket.

A real worker (devices, keys, rules, PostgreSQL) runs on its own event loop
in a background thread, so hypothesis can drive it from plain blocking
sockets. Each example opens a connection, sends its bytes, half-closes, and
must see either a complete HTTP/1.1 answer or the connection closed within
a few seconds; afterwards a fresh GET /healthz must still be answered. Three
kinds of input: random bytes; requests assembled from plausible and hostile
parts (methods, targets, versions, Content-Length and Transfer-Encoding
values, chunk sizes, headers, bodies); and genuine signed tap requests with
a few bytes changed. A changed request may be answered 200 only if what the
journal recorded is exactly the tap that was signed.
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
import threading
import time
from typing import Iterator

import asyncpg
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.client import sign_headers
from gateway.server import Worker
from tests.faults.conftest import examples, fault_config
from tests.gateway import conftest as gw

ANSWER_TIMEOUT_S = 5.0


class ThreadedWorker:
    """A worker on its own event loop in a daemon thread, started and drained by the fixture."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.env: gw.GatewayEnv | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="fuzz-worker", daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._start())
        except BaseException as exc:  # reported to the test thread
            self.error = exc
            self.ready.set()
            return
        self.ready.set()
        self.loop.run_forever()

    async def _start(self) -> None:
        issuer, validator, gate = await gw.seed(self.dsn)
        # request_timeout_s bounds how long a half-sent request can hold a connection.
        worker = Worker(fault_config(request_timeout_s=1.0), self.dsn, name="fuzz-worker")
        await worker.start()
        self.env = gw.GatewayEnv(self.dsn, worker, issuer, validator, gate)

    def stop(self) -> None:
        if self.env is not None:
            asyncio.run_coroutine_threadsafe(self.env.worker.drain(5.0), self.loop).result(15)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture(scope="module")
def live(pg_server: str, template_dsn: str) -> Iterator[gw.GatewayEnv]:
    # One database and one worker for the module's examples; the dsn fixture is per test.
    import uuid

    from tests.conftest import _recreate, _with_database

    name = f"fuzz_http_{uuid.uuid4().hex[:8]}"
    asyncio.run(_recreate(pg_server, name, template_dsn))
    worker = ThreadedWorker(_with_database(pg_server, name))
    worker.thread.start()
    assert worker.ready.wait(60), "the fuzz worker did not start"
    if worker.error is not None:
        raise worker.error
    assert worker.env is not None
    try:
        yield worker.env
    finally:
        worker.stop()


def complete(received: bytes) -> bool:
    """Whether ``received`` ends at the end of a complete answer."""
    rest = received
    while rest:
        head, sep, rest = rest.partition(b"\r\n\r\n")
        if not sep:
            return False
        match = [line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")]
        if not match:
            return False
        length = int(match[0].split(b":", 1)[1])
        if len(rest) < length:
            return False
        rest = rest[length:]
    return bool(received)


def send(port: int, data: bytes) -> bytes:
    """Send ``data``, half-close, and return what arrives until the server closes or goes quiet.

    A keep-alive connection stays open after its answers (a half-closed one
    too, until the idle timeout), so complete answers followed by half a
    second of silence also end the exchange. Anything else that lasts longer
    than ``ANSWER_TIMEOUT_S`` is a hang.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=ANSWER_TIMEOUT_S) as sock:
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed before reading everything
        received = b""
        deadline = time.monotonic() + ANSWER_TIMEOUT_S
        while True:
            quiet = 0.5 if complete(received) else max(0.05, deadline - time.monotonic())
            sock.settimeout(quiet)
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            except socket.timeout:
                if complete(received):
                    break
                raise AssertionError(f"no complete answer and no close within {ANSWER_TIMEOUT_S} s "
                                     f"for {data[:200]!r}; got {received[:200]!r}") from None
            if not chunk:
                break
            received += chunk
    return received


def check_answers(received: bytes) -> list[int]:
    """Every answer in ``received`` must be a well-formed HTTP/1.1 response; return their statuses."""
    statuses = []
    rest = received
    while rest:
        head, sep, rest = rest.partition(b"\r\n\r\n")
        assert sep, f"incomplete answer head: {head[:200]!r}"
        lines = head.split(b"\r\n")
        assert lines[0].startswith(b"HTTP/1.1 "), lines[0]
        status = int(lines[0].split()[1])
        headers = dict(line.lower().split(b": ", 1) for line in lines[1:])
        length = int(headers[b"content-length"])
        assert len(rest) >= length, "answer body shorter than its Content-Length"
        body, rest = rest[:length], rest[length:]
        if status >= 400 and headers.get(b"content-type", b"").startswith(b"application/json"):
            error = msgspec.json.decode(body)["error"]
            assert error["message_zh"] and error["message_en"], error
        statuses.append(status)
    return statuses


def healthy(port: int) -> None:
    answer = send(port, b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    assert check_answers(answer) == [200], answer[:300]


@settings(max_examples=examples(150), deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=2000))
def test_random_bytes(live: gw.GatewayEnv, data: bytes) -> None:
    check_answers(send(live.port, data))
    healthy(live.port)


methods = st.sampled_from([b"GET", b"POST", b"PUT", b"DELETE", b"HEAD", b"OPTIONS", b"CONNECT", b"PRI", b"post",
                           b"G\x00T", b""])
targets = st.one_of(st.sampled_from([b"/v1/taps", b"/v1/taps/batch", b"/v1/deny-list?since=0", b"/readyz",
                                     b"/metrics", b"/healthz", b"*", b"http://x/v1/taps", b"/v1/taps?a=%00",
                                     b"/v1/deny-list?since=99999999999999999999", b"/" + b"a" * 9000]),
                    st.binary(max_size=40))
versions = st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/0.9", b"HTTP/1.1 extra", b""])
header_names = st.sampled_from([b"Content-Length", b"Transfer-Encoding", b"Content-Type", b"Authorization",
                                b"Connection", b"Expect", b"Host", b"Upgrade", b"X-" + b"a" * 100, b""])
header_values = st.one_of(
    st.sampled_from([b"0", b"-1", b"18446744073709551616", b"99999999", b"5, 5", b"chunked", b"gzip, chunked",
                     b"application/json", b"application/msgpack", b"close", b"keep-alive", b"100-continue",
                     b"websocket", b"TAPGATE-HMAC-SHA256 device=bus-1-001,ts=1,nonce=" + b"0" * 32 +
                     b",sig=" + b"0" * 64]),
    st.binary(max_size=60))
bodies = st.one_of(st.binary(max_size=300),
                   st.sampled_from([b'{"tap_id": 1}', b"[]", b"{}", b"\x81\xa6tap_id\x01", b"5\r\nhello\r\n0\r\n\r\n",
                                    b"ffffffffffffffff\r\nx", b'{"taps": [' + b"{}," * 50 + b"{}]}"]))


@st.composite
def assembled_requests(draw) -> bytes:
    line = draw(methods) + b" " + draw(targets) + b" " + draw(versions) + b"\r\n"
    headers = b"".join(draw(header_names) + b": " + draw(header_values) + b"\r\n"
                       for _ in range(draw(st.integers(0, 6))))
    request = line + headers + b"\r\n" + draw(bodies)
    # Sometimes two requests back to back, to exercise pipelining.
    return request * draw(st.sampled_from([1, 1, 1, 2]))


@settings(max_examples=examples(200), deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(assembled_requests())
def test_assembled_requests(live: gw.GatewayEnv, data: bytes) -> None:
    check_answers(send(live.port, data))
    healthy(live.port)


def signed_tap_request(env: gw.GatewayEnv) -> tuple[bytes, dict]:
    tap = env.qr_tap(env.phone())
    body = msgspec.json.encode(tap)
    auth = sign_headers(env.validator, "POST", "/v1/taps", body)["Authorization"]
    head = (f"POST /v1/taps HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nAuthorization: {auth}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    return head + body, tap


def journaled(env: gw.GatewayEnv, device_tap_id: int) -> list[asyncpg.Record]:
    async def fetch() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(env.dsn)
        try:
            return await conn.fetch("SELECT request_digest, decision FROM taps WHERE device_id = $1 "
                                    "AND device_tap_id = $2", gw.VALIDATOR, device_tap_id)
        finally:
            await conn.close()

    return asyncio.run(fetch())


@settings(max_examples=examples(120), deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(st.data())
def test_mutated_signed_request_never_accepted(live: gw.GatewayEnv, data: st.DataObject) -> None:
    from gateway.http_schema import TapRequest
    from gateway.pipeline import request_digest

    original, tap = signed_tap_request(live)
    request = bytearray(original)
    for _ in range(data.draw(st.integers(1, 3))):
        # The request's length varies (tap ids, times), so positions are drawn independently of it.
        position = data.draw(st.integers(0, 1 << 20)) % len(request)
        request[position] = data.draw(st.integers(0, 255))
    statuses = check_answers(send(live.port, bytes(request)))
    rows = journaled(live, tap["tap_id"])
    if 200 in statuses:
        # Accepted: the journal must hold the very tap that was signed, not a changed one.
        signed_digest = request_digest(msgspec.convert(tap, TapRequest))
        assert [bytes(r["request_digest"]) for r in rows] == [signed_digest], bytes(request)
    else:
        assert rows == [], (statuses, bytes(request))
    healthy(live.port)


def test_unchanged_signed_request_accepted(live: gw.GatewayEnv) -> None:
    # The mutation test is meaningful only if the unchanged request gets through.
    original, tap = signed_tap_request(live)
    assert check_answers(send(live.port, original)) == [200]
    assert len(journaled(live, tap["tap_id"])) == 1
    assert hashlib.sha256(original).digest()
