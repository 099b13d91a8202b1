"""The admin HTTP API (aiohttp): fare rule-set versions for bureau staff, behind bearer tokens.

Every request except ``GET /admin/v1/healthz`` needs ``Authorization: Bearer
<token>``. Roles: editor (drafts, publishes, rolls back), auditor (reads
everything, including drafts and audit trails), operator (reads the published
rules of its own operator), finance (reads published rules; settlement adds
its own routes through ``extensions``). Errors are JSON:
``{"error": {"code", "message_zh", "message_en", "hint"?, "problems"?}}``.
Every request that changes state is written to ``admin_audit``.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from typing import Any, Awaitable, Callable, Iterable

import asyncpg
import msgspec
from aiohttp import web

from gateway.admin.auth import Principal, authenticate
from gateway.config import Config
from gateway.db import CONNECTION_ERRORS
from gateway.errors import GatewayError, msgspec_message_zh
from gateway.logs import log_event
from gateway.rules import RuleSetError, compile_rule_set
from gateway.rules import store
from gateway.rules.diff import diff_documents
from gateway.rules.scope import document_for_operator
from gateway.rules.simulate import simulate
from gateway.rules.validate import FORMATS, document_from_builtins, load_rule_set_document
from gateway.timeutil import LOCAL_TZ, to_unix_ms

log = logging.getLogger(__name__)

POOL = web.AppKey("pool", asyncpg.Pool)
CONFIG = web.AppKey("config", Config)
PRINCIPAL = web.RequestKey("principal", Principal) if hasattr(web, "RequestKey") else "principal"
PREFIX = "/admin/v1"

Extension = Callable[[web.Application], None]

_encoder = msgspec.json.Encoder()


class AdminError(Exception):
    """An error response raised inside a handler, which the middleware turns into bilingual JSON."""

    def __init__(self, status: int, code: str, message_en: str, message_zh: str, hint: str = "",
                 problems: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message_en)
        self.status = status
        self.code = code
        self.message_en = message_en
        self.message_zh = message_zh
        self.hint = hint
        self.problems = problems


def json_response(value: Any, status: int = 200) -> web.Response:
    return web.Response(body=_encoder.encode(value), status=status, content_type="application/json")


def _error_response(error: AdminError) -> web.Response:
    body: dict[str, Any] = {"code": error.code, "message_zh": error.message_zh, "message_en": error.message_en}
    if error.hint:
        body["hint"] = error.hint
    if error.problems is not None:
        body["problems"] = error.problems
    response = json_response({"error": body}, status=error.status)
    if error.status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="tapgate-admin"'
    return response


def principal(request: web.Request) -> Principal:
    return request[PRINCIPAL]


def require_role(request: web.Request, *roles: str) -> Principal:
    """Return the caller, or raise 403 unless their role is one of ``roles``."""
    caller = request[PRINCIPAL]
    if caller.role not in roles:
        raise AdminError(403, "forbidden", f"role {caller.role} may not do this; allowed: {', '.join(roles)}",
                         f"角色 {caller.role} 无权执行此操作；允许的角色：{'、'.join(roles)}")
    return caller


def _problems_json(error: RuleSetError) -> list[dict[str, Any]]:
    return [{"path": p.path, "value": p.value, "expected_en": p.expected_en, "expected_zh": p.expected_zh,
             "message_en": p.message_en, "message_zh": p.message_zh} for p in error.problems]


@web.middleware
async def _middleware(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]):
    caller: Principal | None = None
    try:
        if request.path != f"{PREFIX}/healthz":
            caller = await _authenticate(request)
            request[PRINCIPAL] = caller
        response = await handler(request)
    except AdminError as error:
        response = _error_response(error)
    except RuleSetError as error:
        response = _error_response(AdminError(422, "invalid_rule_set", error.message_en, error.message_zh,
                                              error.hint, _problems_json(error)))
    except store.RuleVersionNotFound as error:
        response = _error_response(AdminError(404, "not_found", error.message_en, error.message_zh, error.hint))
    except GatewayError as error:
        response = _error_response(AdminError(409, "conflict", error.message_en, error.message_zh, error.hint))
    except web.HTTPException as error:
        if error.status < 400:
            raise
        response = _error_response(AdminError(error.status, error.reason.lower().replace(" ", "_"),
                                              error.reason, _HTTP_ZH.get(error.status, error.reason)))
    if caller is not None and request.method not in ("GET", "HEAD", "OPTIONS"):
        await _audit_request(request, caller, response.status)
    return response


_HTTP_ZH = {404: "未找到", 405: "不支持此请求方法", 413: "请求体过大"}


async def _authenticate(request: web.Request) -> Principal:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AdminError(401, "unauthorized", "missing bearer token", "缺少访问令牌",
                         "send Authorization: Bearer <token> / 请在请求头中提供 Authorization: Bearer <令牌>")
    async with request.app[POOL].acquire() as conn:
        caller = await authenticate(conn, token.strip())
    if caller is None:
        raise AdminError(401, "unauthorized", "invalid, expired or revoked token", "令牌无效、已过期或已吊销",
                         "ask an administrator for a new token / 请向管理员申请新令牌")
    return caller


async def _audit_request(request: web.Request, caller: Principal, status: int) -> None:
    route = request.match_info.route.resource.canonical if request.match_info.route.resource else request.path
    try:
        async with request.app[POOL].acquire() as conn:
            await conn.execute(
                "INSERT INTO admin_audit (actor, action, target, status) VALUES ($1, $2, $3, $4)",
                caller.user_name, f"{request.method} {route}", request.path, status)
    except CONNECTION_ERRORS as exc:
        log_event(log, logging.ERROR, "admin.audit_failed", actor=caller.user_name, path=request.path, error=exc)


async def _json_body(request: web.Request) -> dict[str, Any]:
    try:
        body = msgspec.json.decode(await request.read())
    except msgspec.DecodeError as exc:
        raise AdminError(400, "invalid_json", f"request body is not valid JSON: {exc}",
                         f"请求体不是有效的 JSON：{msgspec_message_zh(str(exc))}") from None
    if not isinstance(body, dict):
        raise AdminError(400, "invalid_json", "request body must be a JSON object", "请求体必须是 JSON 对象")
    return body


def _field(body: dict[str, Any], name: str, kind: type | tuple[type, ...], required: bool = True,
           default: Any = None) -> Any:
    if name not in body or body[name] is None:
        if required:
            raise AdminError(400, "missing_field", f"missing field {name!r}", f"缺少字段 {name!r}")
        return default
    value = body[name]
    if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _as_tuple(kind)):
        raise AdminError(400, "invalid_field", f"field {name!r} has the wrong type: {value!r}",
                         f"字段 {name!r} 类型错误：{value!r}")
    return value


def _as_tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def _document_source(body: dict[str, Any]) -> tuple[str, str]:
    fmt = _field(body, "format", str, required=False, default="toml")
    if fmt not in FORMATS:
        raise AdminError(400, "invalid_field", f"format {fmt!r} is not one of {', '.join(FORMATS)}",
                         f"format {fmt!r} 应为 {'、'.join(FORMATS)} 之一")
    return _field(body, "text", str), fmt


def _effective_ms(body: dict[str, Any]) -> int:
    if body.get("effective_from_ms") is not None:
        return _field(body, "effective_from_ms", int)
    text = _field(body, "effective_from", str, required=False, default="now")
    if text == "now":
        return int(time.time() * 1000)
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        raise AdminError(400, "invalid_field", f"effective_from {text!r} is not an ISO 8601 time",
                         f"effective_from {text!r} 不是 ISO 8601 时间") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=LOCAL_TZ)
    return to_unix_ms(moment)


def _version(request: web.Request) -> int:
    text = request.match_info["version"]
    if not text.isdigit():
        raise AdminError(400, "invalid_version", f"version {text!r} is not a number", f"版本号 {text!r} 不是数字")
    return int(text)


def _info_json(info: store.VersionInfo) -> dict[str, Any]:
    return msgspec.to_builtins(info)


READERS = ("editor", "auditor", "finance", "operator")
STAFF = ("editor", "auditor")


async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def whoami(request: web.Request) -> web.Response:
    return json_response(msgspec.to_builtins(principal(request)))


async def list_versions(request: web.Request) -> web.Response:
    caller = require_role(request, *READERS)
    status = request.query.get("status")
    if caller.role not in STAFF:
        status = "published"
    async with request.app[POOL].acquire() as conn:
        versions = await store.list_versions(conn, status)
    return json_response({"versions": [_info_json(v) for v in versions]})


async def get_version(request: web.Request) -> web.Response:
    caller = require_role(request, *READERS)
    async with request.app[POOL].acquire() as conn:
        record = await store.get_version(conn, _version(request))
    if caller.role not in STAFF and record.status != "published":
        raise store.RuleVersionNotFound(f"rule-set version {record.version} not found",
                                        f"找不到票价规则版本 {record.version}")
    body = msgspec.to_builtins(record)
    if caller.role == "operator":
        body["document"] = document_for_operator(record.document, caller.operator_id or "")
        del body["source_text"]
    return json_response(body)


async def validate(request: web.Request) -> web.Response:
    require_role(request, *STAFF)
    text, fmt = _document_source(await _json_body(request))
    try:
        doc = load_rule_set_document(text, fmt)
        compile_rule_set(doc)
    except RuleSetError as error:
        return json_response({"valid": False, "problems": _problems_json(error)})
    return json_response({"valid": True, "problems": []})


async def create_draft(request: web.Request) -> web.Response:
    caller = require_role(request, "editor")
    body = await _json_body(request)
    text, fmt = _document_source(body)
    note = _field(body, "note", str, required=False, default="")
    based_on = _field(body, "based_on", int, required=False)
    async with request.app[POOL].acquire() as conn:
        version = await store.create_draft(conn, text, fmt, caller.user_name, note=note, based_on=based_on)
        info = await store.get_info(conn, version)
    return json_response(_info_json(info), status=201)


async def update_draft(request: web.Request) -> web.Response:
    caller = require_role(request, "editor")
    body = await _json_body(request)
    text, fmt = _document_source(body)
    note = _field(body, "note", str, required=False)
    async with request.app[POOL].acquire() as conn:
        changes = await store.update_draft(conn, _version(request), text, fmt, caller.user_name, note=note)
        info = await store.get_info(conn, _version(request))
    return json_response(_info_json(info) | {"changes": changes})


async def delete_draft(request: web.Request) -> web.Response:
    caller = require_role(request, "editor")
    async with request.app[POOL].acquire() as conn:
        await store.delete_draft(conn, _version(request), caller.user_name)
    return web.Response(status=204)


async def publish(request: web.Request) -> web.Response:
    caller = require_role(request, "editor")
    body = await _json_body(request)
    effective_ms = _effective_ms(body)
    allow_past = _field(body, "allow_past", bool, required=False, default=False)
    async with request.app[POOL].acquire() as conn:
        info = await store.publish(conn, _version(request), effective_ms, caller.user_name, allow_past=allow_past)
    return json_response(_info_json(info))


async def rollback(request: web.Request) -> web.Response:
    caller = require_role(request, "editor")
    body = await _json_body(request)
    effective_ms = _effective_ms(body)
    note = _field(body, "note", str, required=False, default="")
    async with request.app[POOL].acquire() as conn:
        info = await store.rollback(conn, _version(request), effective_ms, caller.user_name, note=note)
    return json_response(_info_json(info), status=201)


async def diff(request: web.Request) -> web.Response:
    require_role(request, *STAFF)
    against = request.query.get("against", "")
    if not against.isdigit():
        raise AdminError(400, "invalid_query", "query parameter 'against' must be a version number",
                         "查询参数 against 必须是版本号")
    async with request.app[POOL].acquire() as conn:
        old = await store.get_version(conn, int(against))
        new = await store.get_version(conn, _version(request))
    changes = diff_documents(old.document, new.document)
    return json_response({"from": old.version, "to": new.version, "changes": [msgspec.to_builtins(c) for c in changes]})


async def rules_audit(request: web.Request) -> web.Response:
    require_role(request, *STAFF)
    version = request.query.get("version")
    async with request.app[POOL].acquire() as conn:
        entries = await store.audit_log(conn, int(version) if version and version.isdigit() else None,
                                        limit=_limit(request))
    return json_response({"entries": [msgspec.to_builtins(e) for e in entries]})


def _limit(request: web.Request) -> int:
    text = request.query.get("limit", "100")
    if not text.isdigit() or not 1 <= int(text) <= 1000:
        raise AdminError(400, "invalid_query", f"limit {text!r} must be 1 to 1000", f"limit {text!r} 应为 1 到 1000")
    return int(text)


async def admin_audit(request: web.Request) -> web.Response:
    require_role(request, "auditor")
    async with request.app[POOL].acquire() as conn:
        rows = await conn.fetch(
            "SELECT audit_id, at, actor, action, target, status, detail FROM admin_audit "
            "ORDER BY audit_id DESC LIMIT $1", _limit(request))
    entries = [dict(r) | {"detail": msgspec.json.decode(r["detail"])} for r in rows]
    return json_response({"entries": entries})


def _date_query(request: web.Request, name: str) -> dt.date:
    text = request.query.get(name, "")
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise AdminError(400, "invalid_query", f"query parameter {name!r} must be a date YYYY-MM-DD, got {text!r}",
                         f"查询参数 {name} 应为日期 YYYY-MM-DD，当前为 {text!r}") from None


async def simulate_version(request: web.Request) -> web.Response:
    require_role(request, "editor", "auditor", "finance")
    first_day, last_day = _date_query(request, "from"), _date_query(request, "to")
    if last_day < first_day or (last_day - first_day).days > 92:
        raise AdminError(400, "invalid_query", "'to' must be on or after 'from', and the period at most 93 days",
                         "to 不得早于 from，且期间不超过 93 天")
    async with request.app[POOL].acquire() as conn:
        record = await store.get_version(conn, _version(request))
        draft = compile_rule_set(document_from_builtins(record.document), version=record.version)
        report = await simulate(conn, draft, first_day, last_day, progress=False)
    return json_response(report.to_builtins())


def create_admin_app(pool: asyncpg.Pool, config: Config, extensions: Iterable[Extension] = ()) -> web.Application:
    """Build the admin application; each extension is called with the app to add its routes.

    Extensions use :func:`require_role` and :func:`principal` in their handlers,
    ``app[POOL]`` for the database, and raise :class:`AdminError` for errors.
    """
    app = web.Application(middlewares=[_middleware], client_max_size=4 * 1024 * 1024)
    app[POOL] = pool
    app[CONFIG] = config
    app.router.add_get(f"{PREFIX}/healthz", healthz)
    app.router.add_get(f"{PREFIX}/whoami", whoami)
    app.router.add_get(f"{PREFIX}/audit", admin_audit)
    app.router.add_post(f"{PREFIX}/rules/validate", validate)
    app.router.add_get(f"{PREFIX}/rules/versions", list_versions)
    app.router.add_post(f"{PREFIX}/rules/versions", create_draft)
    app.router.add_get(f"{PREFIX}/rules/versions/{{version}}", get_version)
    app.router.add_put(f"{PREFIX}/rules/versions/{{version}}", update_draft)
    app.router.add_delete(f"{PREFIX}/rules/versions/{{version}}", delete_draft)
    app.router.add_post(f"{PREFIX}/rules/versions/{{version}}/publish", publish)
    app.router.add_post(f"{PREFIX}/rules/versions/{{version}}/rollback", rollback)
    app.router.add_get(f"{PREFIX}/rules/versions/{{version}}/diff", diff)
    app.router.add_get(f"{PREFIX}/rules/versions/{{version}}/simulate", simulate_version)
    app.router.add_get(f"{PREFIX}/rules/audit", rules_audit)
    for extension in extensions:
        extension(app)
    return app
