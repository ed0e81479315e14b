"""Who may call what: every route declares ``opt={"permission": …}``.

Deny by default: a route without a declared permission is refused at run
time, and tests/collector/test_routes.py fails on it.

Until the identity issue adds users and sessions, callers authenticate with
project-scoped API tokens (``Authorization: Bearer z4jt_…``) minted by
``z4j admin create-token``; the token's role is checked against the role the
permission needs (PRODUCT.md §5).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler

from z4j_agents import protocol as p
from z4j_collector.errors import Forbidden, NotFound, Unauthorized

ROLES = ("viewer", "operator", "admin", "owner")

# permission -> the lowest role that has it ("public" and "agent" need no
# API token: the agent gateway authenticates agents itself).
PERMISSIONS: dict[str, str | None] = {
    "public": None,
    "agent": None,
    "tasks:read": "viewer",
    "actions:write": "operator",
    "agents:read": "admin",
    "agents:write": "admin",
}


@dataclass(frozen=True)
class Principal:
    token_id: int
    project_id: int
    project: str
    role: str
    name: str

    def has(self, role: str) -> bool:
        return ROLES.index(self.role) >= ROLES.index(role)


def bearer_token(connection: ASGIConnection) -> str | None:
    scheme, _, token = connection.headers.get("authorization", "").partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


async def authenticate(connection: ASGIConnection) -> Principal:
    token = bearer_token(connection)
    if token is None:
        raise Unauthorized("missing API token (Authorization: Bearer …)")
    row = await connection.app.state.store.api_token(p.token_hash(token))
    if row is None or row.revoked:
        raise Unauthorized("unknown or revoked API token", code="bad_token")
    if row.expires_at is not None and row.expires_at < time.time():
        raise Unauthorized("API token has expired", code="token_expired")
    return Principal(row.id, row.project_id, row.project, row.role, row.name)


async def requires_permission(connection: ASGIConnection, handler: BaseRouteHandler) -> None:
    permission = handler.opt.get("permission")
    if permission not in PERMISSIONS:
        raise Forbidden(f"route {connection.url.path} declares no permission", code="undeclared_permission")
    needed = PERMISSIONS[permission]
    if needed is None:
        return
    principal = await authenticate(connection)
    project = connection.path_params.get("project")
    if project is not None and project != principal.project:
        # Tokens are scoped to one project; other projects do not exist for them.
        raise NotFound(f"no project {project!r}")
    if not principal.has(needed):
        raise Forbidden(f"{permission} needs the {needed} role; this token is {principal.role}")
    connection.scope["z4j_principal"] = principal  # type: ignore[typeddict-unknown-key]


def principal_of(connection: ASGIConnection) -> Principal:
    return connection.scope["z4j_principal"]  # type: ignore[typeddict-item]
