"""The HTTP/1.1 protocol layer on its own: keep-alive, pipelining, and bad input from clients."""

from __future__ import annotations

import asyncio

import msgspec
import pytest

from gateway.app import plain_error_response
from gateway.http import ConnectionSet, HttpProtocol, Request, Response
from gateway.server import bind_socket


class EchoServer:
    """A server whose handler echoes method, path and body, sleeping ``delay`` seconds first if asked."""

    def __init__(self, *, body_max_bytes: int = 4096, request_timeout_s: float = 0.5) -> None:
        self.body_max_bytes = body_max_bytes
        self.request_timeout_s = request_timeout_s
        self.connections = ConnectionSet()
        self.server: asyncio.AbstractServer | None = None
        self.port = 0

    async def handle(self, request: Request) -> Response:
        if request.path == "/boom":
            raise RuntimeError("handler bug")
        delay = float(request.query.partition("=")[2] or 0) if request.query.startswith("delay=") else 0.0
        await asyncio.sleep(delay)
        return Response(200, msgspec.json.encode({"method": request.method, "path": request.path,
                                                  "body": request.body.decode()}))

    async def __aenter__(self) -> "EchoServer":
        sock = bind_socket("127.0.0.1", 0)
        self.port = sock.getsockname()[1]
        self.server = await asyncio.get_running_loop().create_server(
            lambda: HttpProtocol(self.handle, plain_error_response, self.connections,
                                 body_max_bytes=self.body_max_bytes, request_timeout_s=self.request_timeout_s),
            sock=sock)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self.server is not None
        self.server.close()
        self.connections.abort_all()
        await self.server.wait_closed()


async def read_responses(reader: asyncio.StreamReader, count: int, timeout_s: float = 5.0) -> list[tuple[int, bytes]]:
    """Read ``count`` responses (status, body) that carry a content-length."""
    found = []
    for _ in range(count):
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout_s)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        length = next(int(line.split(":")[1]) for line in lines if line.lower().startswith("content-length"))
        found.append((status, await asyncio.wait_for(reader.readexactly(length), timeout_s)))
    return found


def post(path: str, body: bytes, extra: str = "") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{extra}"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


async def test_pipelined_answers_in_request_order() -> None:
    async with EchoServer() as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        # The first request is the slowest, so its response is ready last but must be written first.
        writer.write(post("/a?delay=0.2", b"1") + post("/b?delay=0.05", b"2") + post("/c", b"3"))
        answers = await read_responses(reader, 3)
        writer.close()
    assert [msgspec.json.decode(body)["path"] for _, body in answers] == ["/a", "/b", "/c"]
    assert [msgspec.json.decode(body)["body"] for _, body in answers] == ["1", "2", "3"]


async def test_keep_alive_serves_many_requests() -> None:
    async with EchoServer() as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        for i in range(20):
            writer.write(post("/x", str(i).encode()))
            [(status, body)] = await read_responses(reader, 1)
            assert status == 200
            assert msgspec.json.decode(body)["body"] == str(i)
        writer.close()


async def test_malformed_request_line_gets_400() -> None:
    async with EchoServer() as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"THIS IS NOT HTTP\r\n\r\n")
        [(status, body)] = await read_responses(reader, 1)
        assert status == 400
        error = msgspec.json.decode(body)["error"]
        assert error["code"] == "malformed_http"
        assert error["message_zh"] and error["message_en"]
        assert await asyncio.wait_for(reader.read(), 2) == b""  # the server closed the connection
        writer.close()


async def test_oversized_body_gets_413_before_upload() -> None:
    async with EchoServer(body_max_bytes=4096) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        # Only the headers are sent, and the response must not wait for the announced body.
        writer.write(b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n")
        [(status, body)] = await read_responses(reader, 1)
        assert status == 413
        assert "100000" in msgspec.json.decode(body)["error"]["message_en"]
        writer.close()


async def test_oversized_chunked_body_gets_413() -> None:
    async with EchoServer(body_max_bytes=4096) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        chunk = b"a" * 3000
        writer.write(b"POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                     + b"%x\r\n" % len(chunk) + chunk + b"\r\n" + b"%x\r\n" % len(chunk) + chunk + b"\r\n0\r\n\r\n")
        [(status, _)] = await read_responses(reader, 1)
        assert status == 413
        writer.close()


async def test_slow_client_gets_408_within_timeout() -> None:
    async with EchoServer(request_timeout_s=0.3) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        started = asyncio.get_running_loop().time()
        writer.write(b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")  # 7 bytes never come
        [(status, body)] = await read_responses(reader, 1)
        waited = asyncio.get_running_loop().time() - started
        assert status == 408
        assert msgspec.json.decode(body)["error"]["code"] == "request_timeout"
        assert waited < 2.0
        writer.close()


async def test_handler_error_gets_500_and_connection_survives() -> None:
    async with EchoServer() as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(post("/boom", b"") + post("/ok", b"after"))
        (status1, _), (status2, body2) = await read_responses(reader, 2)
        writer.close()
    assert status1 == 500
    assert status2 == 200
    assert msgspec.json.decode(body2)["body"] == "after"


async def test_oversized_headers_get_431() -> None:
    async with EchoServer() as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET /x HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n")
        [(status, _)] = await read_responses(reader, 1)
        assert status == 431
        writer.close()


@pytest.mark.parametrize("garbage", [b"\x00\x01\x02\x03\r\n\r\n", b"GET / HTTP/9.9\r\n\r\n",
                                     b"POST /x HTTP/1.1\r\nContent-Length: -5\r\n\r\n"])
async def test_garbage_never_kills_the_server(garbage: bytes) -> None:
    async with EchoServer() as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(garbage)
        [(status, _)] = await read_responses(reader, 1)
        assert 400 <= status < 500
        writer.close()
        # A new connection is still served.
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(post("/after", b"ok"))
        [(status, _)] = await read_responses(reader, 1)
        assert status == 200
        writer.close()


async def test_half_closed_client_gets_pending_responses() -> None:
    async with EchoServer() as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(post("/slow?delay=0.1", b"late"))
        writer.write_eof()
        [(status, body)] = await read_responses(reader, 1)
        assert status == 200
        assert msgspec.json.decode(body)["body"] == "late"
        assert await asyncio.wait_for(reader.read(), 2) == b""
        writer.close()
