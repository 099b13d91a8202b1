"""Admin HTTP API for bureau staff: rule-set versions, roles, bearer tokens, audit.

Settlement adds its read routes without gateway importing settlement::

    app = create_admin_app(pool, config, extensions=[settlement_routes])

where ``settlement_routes(app)`` calls ``app.router.add_get(...)`` and its
handlers call ``require_role(request, "finance", "auditor")``.
"""

from gateway.admin.app import (CONFIG, POOL, PREFIX, AdminError, Extension, create_admin_app, json_response,
                               principal, require_role)
from gateway.admin.auth import ROLES, Principal
from gateway.admin.serve import run_admin, serve_admin

__all__ = ["CONFIG", "POOL", "PREFIX", "ROLES", "AdminError", "Extension", "Principal", "create_admin_app",
           "json_response", "principal", "require_role", "run_admin", "serve_admin"]
