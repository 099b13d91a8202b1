"""The OpenAPI 3.1 document of the device API, built from the same msgspec structs the server decodes.

``python -m gateway.http_openapi > docs/openapi.json`` regenerates the file;
a test checks that the file equals this output and that its paths and
methods are the server's routes.
"""

from __future__ import annotations

import sys
from typing import Any

import msgspec

from gateway.http_schema import DenyListResponse, ErrorBody, TapResponse, TapBatchResponse, TapBatchRequest, TapRequest

AUTH_DESCRIPTION = (
    "`Authorization: TAPGATE-HMAC-SHA256 device=<device_id>,ts=<unix ms>,nonce=<32 hex>,sig=<64 hex>`, where "
    "sig = lower-case hex HMAC-SHA256 with the device secret over "
    "`METHOD\\nTARGET\\nts\\nnonce\\nhex(SHA-256(body))`; TARGET is the path plus `?query` if any. "
    "A nonce is accepted once; ts must be within server.device_clock_skew_s of the gateway clock.")


def _error(description: str, retry_after: bool = False) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}},
                    "application/msgpack": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}},
    }
    if retry_after:
        response["headers"] = {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds"}}
    return response


def _body(ref: str) -> dict[str, Any]:
    schema = {"$ref": f"#/components/schemas/{ref}"}
    return {"application/json": {"schema": schema}, "application/msgpack": {"schema": schema}}


_DEVICE_ERRORS = {
    "401": _error("Not authenticated: missing or malformed header, unknown or disabled device, bad signature, "
                  "clock skew, or a replayed request (same nonce). Nothing is recorded."),
    "408": _error("The request was not received within server.request_timeout_s."),
    "413": _error("The body exceeds server.body_max_bytes."),
    "429": _error("The device exceeds its request rate.", retry_after=True),
    "503": _error("PostgreSQL is unavailable; nothing was acknowledged. Retry the same request body.",
                  retry_after=True),
}
_BODY_ERRORS = {
    "400": _error("The body is not valid JSON or MessagePack, or the HTTP request is malformed."),
    "403": _error("A tap names a route or site other than the device's own."),
    "415": _error("Content-Type is neither application/json nor application/msgpack."),
    "422": _error("A field is missing, unknown or invalid; error.field names it (for example $.tap_time_ms)."),
}


def build_openapi() -> dict[str, Any]:
    """Return the OpenAPI document as plain data."""
    _, components = msgspec.json.schema_components(
        [TapRequest, TapBatchRequest, TapResponse, TapBatchResponse, DenyListResponse, ErrorBody],
        ref_template="#/components/schemas/{name}")
    security = [{"deviceHmac": []}]
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "tapgate device API",
            "version": "1",
            "description": "Taps from bus validators and site gates, offline batch uploads, deny-list deltas, "
                           "health, readiness and metrics. See docs/api.md.",
        },
        "paths": {
            "/v1/taps": {"post": {
                "summary": "Submit one tap and receive the decision after it is journaled durably",
                "security": security,
                "requestBody": {"required": True, "content": _body("TapRequest")},
                "responses": {
                    "200": {"description": "Decision (accepted or rejected with a reason code).",
                            "content": _body("TapResponse")},
                    "409": _error("The tap_id was already used by this device for a different tap."),
                    **_BODY_ERRORS, **_DEVICE_ERRORS},
            }},
            "/v1/taps/batch": {"post": {
                "summary": "Upload taps recorded while the device was offline (1 to server.batch_taps_max)",
                "security": security,
                "requestBody": {"required": True, "content": _body("TapBatchRequest")},
                "responses": {
                    "200": {"description": "One answer per tap, in request order; status new, retry or conflict.",
                            "content": _body("TapBatchResponse")},
                    **_BODY_ERRORS, **_DEVICE_ERRORS},
            }},
            "/v1/deny-list": {"get": {
                "summary": "Deny-list entries changed after version `since`, for validators with an offline mode",
                "security": security,
                "parameters": [{"name": "since", "in": "query", "required": False,
                                "schema": {"type": "integer", "minimum": 0, "default": 0}}],
                "responses": {"200": {"description": "Changed entries, oldest first (at most 10000).",
                                      "content": _body("DenyListResponse")},
                              "422": _BODY_ERRORS["422"], **_DEVICE_ERRORS},
            }},
            "/healthz": {"get": {
                "summary": "Liveness: the worker process answers",
                "responses": {"200": {"description": "Alive."}},
            }},
            "/readyz": {"get": {
                "summary": "Readiness: PostgreSQL reachable and views refreshed recently",
                "responses": {"200": {"description": "Ready."},
                              "503": _error("Not ready (PostgreSQL unreachable, stale views or shutting down).",
                                            retry_after=True)},
            }},
            "/metrics": {"get": {
                "summary": "Prometheus metrics (text format 0.0.4)",
                "responses": {"200": {"description": "Metrics.", "content": {"text/plain": {}}}},
            }},
        },
        "components": {
            "schemas": components,
            "securitySchemes": {"deviceHmac": {"type": "apiKey", "in": "header", "name": "Authorization",
                                               "description": AUTH_DESCRIPTION}},
        },
    }


def render() -> bytes:
    return msgspec.json.format(msgspec.json.encode(build_openapi()), indent=2) + b"\n"


if __name__ == "__main__":
    sys.stdout.buffer.write(render())
