"""Who may call what: every route declares ``opt={"permission": …}``.

Deny by default: a route without a declared permission is refused at run
time, and tests/collector/test_rbac.py fails on it.

Callers authenticate with ``Authorization: Bearer <token>``: a login session
(``z4js_…``) or an API token (``z4jt_…``). Project routes resolve the caller's
effective role on the project in the path (a superuser is owner everywhere;
an API token is capped by its own role and by its user's role of today) and
compare it with the role the permission needs (PRODUCT.md §5). A project the
caller has no role on answers 404, as if it did not exist.

A WebSocket route refused by the guard answers the handshake with the same
HTTP status and JSON ``{code, message}`` as an HTTP route would (401, 403,
404), through the ASGI WebSocket denial response (``RefusedWebSockets``); a
server without that extension gets a close with code 4000 + status instead.
"""

from __future__ import annotations

import hmac
from typing import Any

import msgspec
from litestar.connection import ASGIConnection
from litestar.exceptions import WebSocketException
from litestar.handlers.base import BaseRouteHandler
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from z4j_collector.errors import CollectorError, Forbidden, Unauthorized
from z4j_collector.services.identity import Access, Principal

# permission -> who has it: None (anyone: the route authenticates itself or
# is public), "user" (any logged-in caller), "superuser", or the lowest
# project role.
PERMISSIONS: dict[str, str | None] = {
    "public": None,
    "agent": None,
    "metrics": None,  # public until Z4J_METRICS_TOKEN is set, then that bearer token only
    "user": "user",
    "superuser": "superuser",
    "tasks:read": "viewer",
    "agents:read": "viewer",
    "audit:read": "operator",
    "actions:write": "operator",
    "config:write": "admin",
    "members:read": "admin",
    "project:owner": "owner",
}


def bearer_token(connection: ASGIConnection) -> str | None:
    scheme, _, token = connection.headers.get("authorization", "").partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def source_of(connection: ASGIConnection) -> str:
    client = connection.client
    return client.host if client else "unknown"


async def requires_permission(connection: ASGIConnection, handler: BaseRouteHandler) -> None:
    try:
        await _authorize(connection, handler)
    except CollectorError as exc:
        if connection.scope["type"] != "websocket":
            raise
        connection.scope[_REFUSAL] = exc  # type: ignore[literal-required]
        raise WebSocketException(detail=exc.message, code=4000 + exc.status_code) from exc


async def _authorize(connection: ASGIConnection, handler: BaseRouteHandler) -> None:
    permission = handler.opt.get("permission")
    if permission not in PERMISSIONS:
        raise Forbidden(f"route {connection.url.path} declares no permission", code="undeclared_permission")
    needed = PERMISSIONS[permission]
    if permission == "metrics":
        _check_metrics_token(connection)
    if needed is None:
        return
    identity = connection.app.state.identity
    principal: Principal = await identity.authenticate(bearer_token(connection), source_of(connection))
    connection.scope["z4j_principal"] = principal  # type: ignore[typeddict-unknown-key]
    if needed == "user":
        return
    if needed == "superuser":
        if not principal.is_superuser:
            raise Forbidden("this needs an instance superuser")
        return
    project = connection.path_params.get("project")
    if project is None:
        raise Forbidden(f"route {connection.url.path} has a project permission but no project", code="bad_route")
    access: Access = await identity.access(principal, project)
    if not access.has(needed):
        raise Forbidden(f"{permission} needs the {needed} role; you are {access.role} on {access.project!r}")
    connection.scope["z4j_access"] = access  # type: ignore[typeddict-unknown-key]


def _check_metrics_token(connection: ASGIConnection) -> None:
    expected = connection.app.state.settings.metrics_token
    if expected is None:
        return
    given = bearer_token(connection) or ""
    if not hmac.compare_digest(given.encode(), expected.encode()):
        raise Unauthorized("this needs Authorization: Bearer <the collector's Z4J_METRICS_TOKEN>",
                           code="bad_metrics_token")


def principal_of(connection: ASGIConnection) -> Principal:
    return connection.scope["z4j_principal"]  # type: ignore[typeddict-item]


def access_of(connection: ASGIConnection) -> Access:
    """The caller's access to the route's project (project routes only)."""
    return connection.scope["z4j_access"]  # type: ignore[typeddict-item]


_REFUSAL = "z4j_refusal"


class RefusedWebSockets:
    """ASGI middleware: a WebSocket the guard refused before accepting it gets
    an HTTP answer (401/403/404 + JSON) instead of the server's blanket 403."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "websocket" or "websocket.http.response" not in (scope.get("extensions") or {}):
            await self.app(scope, receive, send)
            return
        accepted = False

        async def refusing_send(message: Message) -> None:
            nonlocal accepted
            refusal: Any = scope.get(_REFUSAL)  # type: ignore[call-overload]
            if message["type"] == "websocket.accept":
                accepted = True
            elif message["type"] == "websocket.close" and not accepted and isinstance(refusal, CollectorError):
                body = msgspec.json.encode({"code": refusal.code, "message": refusal.message})
                await send({"type": "websocket.http.response.start", "status": refusal.status_code,
                            "headers": [(b"content-type", b"application/json"),
                                        (b"content-length", str(len(body)).encode())]})
                await send({"type": "websocket.http.response.body", "body": body, "more_body": False})
                return
            await send(message)

        await self.app(scope, receive, refusing_send)
