"""Device side of the gateway API: request signing and a keep-alive asyncio client.

Every device request carries

    Authorization: TAPGATE-HMAC-SHA256 device=<device_id>,ts=<unix ms>,nonce=<32 hex>,sig=<64 hex>

where ``sig`` is the lower-case hex HMAC-SHA256, keyed with the device's
secret, of ``METHOD \\n TARGET \\n ts \\n nonce \\n hex(SHA-256(body))``.
TARGET is the request target as sent: the path plus ``?query`` if there is
one. The nonce must be new for every request. Tests, benchmarks, the load
tests and the demo use this module; a validator vendor can port it from
``canonical_request`` and ``sign_headers`` alone.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import hmac
import os
import ssl as ssl_module
import time
from typing import Any

import httptools
import msgspec

SCHEME = "TAPGATE-HMAC-SHA256"
JSON = "application/json"
MSGPACK = "application/msgpack"


@dataclasses.dataclass(frozen=True)
class DeviceCredentials:
    """A device's id and its shared secret (at least 16 bytes)."""

    device_id: str
    secret: bytes

    def __repr__(self) -> str:
        return f"DeviceCredentials(device_id={self.device_id!r}, secret=<{len(self.secret)} bytes>)"


def canonical_request(method: str, target: str, ts_ms: int, nonce: str, body: bytes) -> bytes:
    """Return the bytes that a request's signature covers."""
    body_hash = hashlib.sha256(body).hexdigest()
    return f"{method.upper()}\n{target}\n{ts_ms}\n{nonce}\n{body_hash}".encode("utf-8")


def signature(secret: bytes, method: str, target: str, ts_ms: int, nonce: str, body: bytes) -> str:
    # hmac.digest is OpenSSL's one-shot HMAC, several times cheaper than building an hmac.HMAC object.
    return hmac.digest(secret, canonical_request(method, target, ts_ms, nonce, body), "sha256").hex()


def sign_headers(creds: DeviceCredentials, method: str, path: str, body: bytes = b"",
                 now_ms: int | None = None, nonce: str | None = None) -> dict[str, str]:
    """Return the ``Authorization`` header for one request; ``path`` includes any query string."""
    ts_ms = int(time.time() * 1000) if now_ms is None else now_ms
    nonce = os.urandom(16).hex() if nonce is None else nonce
    sig = signature(creds.secret, method, path, ts_ms, nonce, body)
    return {"Authorization": f"{SCHEME} device={creds.device_id},ts={ts_ms},nonce={nonce},sig={sig}"}


def card_presented(card_response: bytes) -> str:
    """Encode a card's raw response for the ``presented`` field (standard base64)."""
    return base64.b64encode(card_response).decode("ascii")


@dataclasses.dataclass
class ClientResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    def decode(self) -> Any:
        """Decode the body by its content type (JSON or MessagePack)."""
        if self.headers.get("content-type", "").startswith(MSGPACK):
            return msgspec.msgpack.decode(self.body)
        return msgspec.json.decode(self.body) if self.body else None


class _ResponseReader:
    """httptools callbacks collecting one response at a time."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.headers: dict[str, str] = {}
        self.body: list[bytes] = []
        self.done: list[ClientResponse] = []

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.done.append(ClientResponse(self.parser.get_status_code(), self.headers, b"".join(self.body)))
        self.headers = {}
        self.body = []


class GatewayClient:
    """One keep-alive HTTP/1.1 connection to the gateway, signing every request as one device.

    Requests on one client run one after another. Open several clients for
    concurrency. ``content_type`` chooses JSON or MessagePack for bodies.
    """

    def __init__(self, host: str, port: int, creds: DeviceCredentials | None, *,
                 ssl: ssl_module.SSLContext | None = None, content_type: str = JSON,
                 timeout_s: float = 10.0) -> None:
        self.host = host
        self.port = port
        self.creds = creds
        self.ssl = ssl
        self.content_type = content_type
        self.timeout_s = timeout_s
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._lock = asyncio.Lock()

    async def __aenter__(self) -> "GatewayClient":
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def connect(self) -> None:
        self._reader, self._writer = await asyncio.wait_for(
            asyncio.open_connection(self.host, self.port, ssl=self.ssl), self.timeout_s)

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            try:
                await self._writer.wait_closed()
            except (ConnectionError, ssl_module.SSLError):
                pass
            self._writer = None
            self._reader = None

    def encode(self, value: Any) -> bytes:
        if self.content_type == MSGPACK:
            return msgspec.msgpack.encode(value)
        return msgspec.json.encode(value)

    async def request(self, method: str, target: str, body: bytes = b"", *,
                      headers: dict[str, str] | None = None, sign: bool = True) -> ClientResponse:
        """Send one request and return its response, reconnecting once if the server closed the connection."""
        all_headers = {"Host": f"{self.host}:{self.port}", "Content-Type": self.content_type,
                       "Accept": self.content_type}
        if sign and self.creds is not None:
            all_headers.update(sign_headers(self.creds, method, target, body))
        all_headers.update(headers or {})
        head = f"{method} {target} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in all_headers.items())
        head += f"Content-Length: {len(body)}\r\n\r\n"
        async with self._lock:
            return await asyncio.wait_for(self._exchange(head.encode("latin-1") + body), self.timeout_s)

    async def _exchange(self, data: bytes) -> ClientResponse:
        if self._writer is None or self._writer.is_closing():
            await self.connect()
        assert self._reader is not None and self._writer is not None
        self._writer.write(data)
        await self._writer.drain()
        reader = _ResponseReader()
        while not reader.done:
            chunk = await self._reader.read(65536)
            if not chunk:
                await self.close()
                raise ConnectionError("the gateway closed the connection before answering")
            reader.parser.feed_data(chunk)
        response = reader.done[0]
        if response.headers.get("connection", "").lower() == "close":
            await self.close()
        return response

    async def tap(self, tap: dict[str, Any]) -> ClientResponse:
        """POST one tap (fields as in the API reference) to ``/v1/taps``."""
        return await self.request("POST", "/v1/taps", self.encode(tap))

    async def tap_batch(self, taps: list[dict[str, Any]]) -> ClientResponse:
        """POST taps recorded offline to ``/v1/taps/batch``."""
        return await self.request("POST", "/v1/taps/batch", self.encode({"taps": taps}))

    async def deny_list(self, since: int = 0) -> ClientResponse:
        return await self.request("GET", f"/v1/deny-list?since={since}")
