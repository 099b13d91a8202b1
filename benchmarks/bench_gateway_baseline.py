"""The comparison server of bench_gateway.py: the tap endpoint written the way most teams would.

FastAPI on uvicorn, a pydantic model for the body, and the same device HMAC
check. PyNaCl verifies the same QR code (issuer signature, then the holder's
signature, with no credential cache). Each tap is one INSERT through an
asyncpg pool, committed durably on its own. No fare rules and no deny lists,
so it does less work per tap than the gateway.

Configured by environment variables set by bench_gateway.py:
``BASELINE_DSN``, ``BASELINE_ISSUER`` (key id and public key hex, "1:ab…")
and ``BASELINE_DEVICES`` (JSON object of device id to secret hex).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import re
import time
from typing import Literal

import asyncpg
import nacl.exceptions
import nacl.signing
from fastapi import FastAPI, HTTPException, Request
from pydantic import BaseModel, ConfigDict

from fastpath import wire

SCHEMA = """
CREATE TABLE IF NOT EXISTS baseline_taps (
    id            bigserial PRIMARY KEY,
    device_id     text NOT NULL,
    device_tap_id bigint NOT NULL,
    tap_time      timestamptz NOT NULL,
    credential_id bytea NOT NULL,
    holder_token  bytea NOT NULL,
    decision      smallint NOT NULL,
    request_digest bytea NOT NULL,
    UNIQUE (device_id, device_tap_id)
)
"""

_HEADER = re.compile(r"^TAPGATE-HMAC-SHA256 device=([^,]+),ts=(\d+),nonce=([0-9a-f]{32}),sig=([0-9a-f]{64})$")
CODE_LIFETIME_MS = 60_000
SKEW_MS = 30_000


class Tap(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tap_id: int
    tap_time_ms: int
    medium: Literal["card", "qr"]
    presented: str
    tap_kind: Literal["board", "on", "off", "entry"]
    route_id: str | None = None
    stop_id: str | None = None
    site_id: str | None = None
    offline: bool = False


state: dict[str, object] = {}


@contextlib.asynccontextmanager
async def lifespan(_app: FastAPI):
    key_id, _, public_hex = os.environ["BASELINE_ISSUER"].partition(":")
    state["issuer"] = {int(key_id): nacl.signing.VerifyKey(bytes.fromhex(public_hex))}
    state["devices"] = {d: bytes.fromhex(s) for d, s in json.loads(os.environ["BASELINE_DEVICES"]).items()}
    pool = await asyncpg.create_pool(os.environ["BASELINE_DSN"], min_size=4, max_size=16)
    async with pool.acquire() as conn:
        await conn.execute(SCHEMA)
    state["pool"] = pool
    yield
    await pool.close()


app = FastAPI(lifespan=lifespan)


def check_auth(request: Request, body: bytes) -> str:
    match = _HEADER.match(request.headers.get("authorization", ""))
    if match is None:
        raise HTTPException(401, "missing or malformed Authorization header")
    device_id, ts, nonce, sig = match.groups()
    secret = state["devices"].get(device_id)  # type: ignore[union-attr]
    if secret is None:
        raise HTTPException(401, "unknown device")
    message = f"POST\n{request.url.path}\n{ts}\n{nonce}\n{hashlib.sha256(body).hexdigest()}".encode()
    if not hmac.compare_digest(hmac.new(secret, message, hashlib.sha256).hexdigest(), sig):
        raise HTTPException(401, "invalid request signature")
    return device_id


def verify_qr(text: str, now_ms: int) -> tuple[bool, bytes, bytes]:
    """Return (valid, credential id, holder token) for a QR text, checking both signatures."""
    envelope = wire.base45_decode(text.encode("ascii")[wire.QR_PREFIX_LEN:])
    credential = envelope[wire.OFF_CREDENTIAL:wire.OFF_DYNAMIC]
    body, issuer_signature = credential[:wire.BODY_LEN], credential[wire.BODY_LEN:]
    fields = wire.decode_body(body)
    dynamic = envelope[wire.OFF_DYNAMIC:wire.OFF_DYNAMIC + wire.QR_DYNAMIC_LEN]
    holder_signature = envelope[wire.OFF_DYNAMIC + wire.QR_DYNAMIC_LEN:]
    presented_at_ms = int.from_bytes(dynamic[:8], "big")
    try:
        state["issuer"][fields.key_id].verify(body, issuer_signature)  # type: ignore[index]
        nacl.signing.VerifyKey(fields.holder_public_key).verify(
            wire.QR_CONTEXT + wire.digest(body) + dynamic, holder_signature)
    except (KeyError, nacl.exceptions.BadSignatureError):
        return False, fields.credential_id, fields.holder_token
    fresh = presented_at_ms - SKEW_MS <= now_ms <= presented_at_ms + CODE_LIFETIME_MS
    valid = fresh and fields.valid_from_ms <= now_ms < fields.valid_until_ms
    return valid, fields.credential_id, fields.holder_token


@app.post("/v1/taps")
async def post_tap(tap: Tap, request: Request) -> dict:
    body = await request.body()
    device_id = check_auth(request, body)
    now_ms = int(time.time() * 1000)
    valid, credential_id, holder_token = verify_qr(tap.presented, now_ms)
    await state["pool"].execute(  # type: ignore[union-attr]
        "INSERT INTO baseline_taps (device_id, device_tap_id, tap_time, credential_id, holder_token, decision, "
        "request_digest) VALUES ($1, $2, to_timestamp($3 / 1000.0), $4, $5, $6, $7) "
        "ON CONFLICT (device_id, device_tap_id) DO NOTHING",
        device_id, tap.tap_id, tap.tap_time_ms, credential_id, holder_token, int(valid),
        hashlib.sha256(body).digest())
    return {"tap_id": tap.tap_id, "decision": "accepted" if valid else "rejected", "server_time_ms": now_ms}
