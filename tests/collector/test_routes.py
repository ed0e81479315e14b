"""Must show: deny by default (every route handler declares a known
permission, and one that does not is caught), and the role matrix of
PRODUCT.md §5 holds on every /api/v1 route of a real collector."""

from __future__ import annotations

import re
import time

import httpx
import pytest
from litestar import Litestar, WebSocket, get, websocket
from litestar.exceptions import WebSocketDisconnect
from litestar.testing import TestClient
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from tests.support.collector import mint_tokens, with_store
from z4j_collector.app import create_app
from z4j_collector.guards import PERMISSIONS
from z4j_collector.settings import Settings

ROLES = ("viewer", "operator", "admin", "owner")

# PRODUCT.md §5, written out by hand: (method, path) -> the lowest role that
# may call it. A new /api/v1 route fails test_role_matrix until it is added.
MATRIX = {
    ("GET", "/api/v1/projects/{project}/tasks"): "viewer",
    ("GET", "/api/v1/projects/{project}/tasks/counts"): "viewer",
    ("GET", "/api/v1/projects/{project}/tasks/{task_id}"): "viewer",
    ("GET", "/api/v1/projects/{project}/workers"): "viewer",
    ("GET", "/api/v1/projects/{project}/queues"): "viewer",
    ("GET", "/api/v1/projects/{project}/agents"): "viewer",
    ("POST", "/api/v1/projects/{project}/commands"): "operator",
    ("GET", "/api/v1/projects/{project}/commands/{command_id}"): "viewer",
    ("WS", "/api/v1/projects/{project}/stream"): "viewer",
}
PATH_PARAMS = {"task_id": "no-such-task", "command_id": "no-such-command"}
BODIES = {("POST", "/api/v1/projects/{project}/commands"): {"action": "echo", "args": {}}}


# ------------------------------------------------------------ enumeration


def handlers(app: Litestar) -> list[tuple[str, str, object]]:
    """Every route handler of ``app``: (method or "WS", path with plain {params}, handler)."""
    out = []
    for route in app.routes:
        path = re.sub(r"\{(\w+):[^}]*\}", r"{\1}", route.path)
        if hasattr(route, "route_handler_map"):  # HTTP: one handler per method, incl. Litestar's OPTIONS
            for method, (handler, _) in route.route_handler_map.items():
                out.append((method, path, handler))
        else:  # WebSocket and ASGI routes
            out.append(("WS" if route.scope_type == "websocket" else "ASGI", path, route.route_handler))
    return out


def undeclared(app: Litestar) -> list[str]:
    """Handlers whose ``opt["permission"]`` is missing or not a key of PERMISSIONS."""
    return sorted(
        f"{method} {path} ({handler.handler_name}): permission={handler.opt.get('permission')!r}"
        for method, path, handler in handlers(app)
        if handler.opt.get("permission") not in PERMISSIONS
    )


@pytest.fixture(scope="module")
def app(tmp_path_factory) -> Litestar:
    return create_app(Settings.load(db=f"sqlite:///{tmp_path_factory.mktemp('routes')}/z4j.db"))


def test_every_handler_declares_a_known_permission(app):
    found = handlers(app)
    paths = {path for _, path, _ in found}
    # the enumeration sees the kinds of routes that matter, not just some of them
    assert {"/health", "/agent/ws", "/api/v1/projects/{project}/stream", "/api/v1/schema/openapi.json"} <= paths
    assert {method for method, _, _ in found} >= {"GET", "POST", "OPTIONS", "WS"}
    missing = undeclared(app)
    assert not missing, "route handlers without a known permission (deny by default):\n" + "\n".join(missing)


def test_a_handler_without_permission_is_flagged_and_refused(tmp_path):
    @get("/api/v1/projects/{project:str}/leak", sync_to_thread=False)
    def leak(project: str) -> str:
        return "secret"

    @get("/api/v1/projects/{project:str}/typo", opt={"permission": "tasks:reed"}, sync_to_thread=False)
    def typo(project: str) -> str:
        return "secret"

    @websocket("/api/v1/projects/{project:str}/leaky-stream")
    async def leaky_stream(socket: WebSocket, project: str) -> None:
        await socket.accept()
        await socket.send_text("secret")

    from z4j_collector.store import migrate

    db = f"sqlite:///{tmp_path}/z4j.db"
    migrate.upgrade(db)
    throwaway = create_app(Settings.load(db=db))
    assert not {"leak", "typo", "leaky_stream"} & {h.handler_name for _, _, h in handlers(throwaway)}
    for handler in (leak, typo, leaky_stream):
        throwaway.register(handler)

    flagged = undeclared(throwaway)
    assert "GET /api/v1/projects/{project}/leak (leak): permission=None" in flagged
    assert "GET /api/v1/projects/{project}/typo (typo): permission='tasks:reed'" in flagged
    assert "WS /api/v1/projects/{project}/leaky-stream (leaky_stream): permission=None" in flagged

    # and at run time the guard refuses them, token or not
    with TestClient(throwaway) as client:
        for path in ("/api/v1/projects/default/leak", "/api/v1/projects/default/typo"):
            response = client.get(path)
            assert response.status_code == 403, response.text
            assert response.json()["code"] == "undeclared_permission"
            assert "secret" not in response.text
        with pytest.raises(WebSocketDisconnect):  # closed before accept: nothing is sent
            with client.websocket_connect("/api/v1/projects/default/leaky-stream") as ws:
                ws.receive_text()


# ------------------------------------------------------------ the role matrix, live


def api_routes(app: Litestar) -> set[tuple[str, str]]:
    return {
        (method, path) for method, path, _ in handlers(app)
        if path.startswith("/api/v1/") and not path.startswith("/api/v1/schema") and method != "OPTIONS"
    }


def call(collector, method: str, path: str, token: str | None, project: str = "default") -> httpx.Response:
    url = path.format(project=project, **PATH_PARAMS)
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    with httpx.Client(base_url=collector.url, timeout=30) as client:
        return client.request(method, url, headers=headers, json=BODIES.get((method, path)))


def stream(collector, token: str | None, project: str = "default") -> str | int:
    """The stream's first message, or the HTTP status that refused the handshake."""
    url = collector.url.replace("http://", "ws://") + f"/api/v1/projects/{project}/stream"
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    try:
        with connect(url, additional_headers=headers, open_timeout=10) as ws:
            return ws.recv(timeout=10)
    except InvalidStatus as exc:
        return exc.response.status_code


def assert_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, f"{response.request.method} {response.request.url}: {response.text}"
    body = response.json()
    assert set(body) == {"code", "message"} and body["code"] == code, body
    assert body["message"]


def test_role_matrix(collector, app):
    assert api_routes(app) == set(MATRIX), "a /api/v1 route is missing from MATRIX (or MATRIX is stale)"
    tokens = mint_tokens(collector, *ROLES)
    expired = mint_tokens(collector, "owner", expires_at=time.time() - 60)["owner"]
    revoked = mint_tokens(collector, "owner")["owner"]

    async def revoke(store):
        from z4j_agents.protocol import token_hash

        await store.write(lambda tx: tx.execute(
            "UPDATE api_tokens SET revoked_at = ? WHERE token_hash = ?", (time.time(), token_hash(revoked))))

    with_store(collector.db_url, revoke)

    for (method, path), lowest in MATRIX.items():
        if method == "WS":
            continue
        assert_error(call(collector, method, path, None), 401, "unauthorized")
        assert_error(call(collector, method, path, "z4jt_not-a-token"), 401, "bad_token")
        assert_error(call(collector, method, path, expired), 401, "token_expired")
        assert_error(call(collector, method, path, revoked), 401, "bad_token")
        for role in ROLES:
            response = call(collector, method, path, tokens[role])
            if ROLES.index(role) < ROLES.index(lowest):
                assert_error(response, 403, "forbidden")
                assert role in response.json()["message"] and lowest in response.json()["message"]
            else:
                assert response.status_code not in (401, 403), f"{role} {method} {path}: {response.text}"
                assert response.status_code < 500, response.text
            # another project's slug does not exist for this token, whatever its role
            assert_error(call(collector, method, path, tokens[role], project="other"), 404, "not_found")

    # the scheme must be Bearer; its case does not matter
    with httpx.Client(base_url=collector.url) as client:
        tasks = "/api/v1/projects/default/tasks"
        assert_error(client.get(tasks, headers={"Authorization": f"Basic {tokens['owner']}"}), 401, "unauthorized")
        assert client.get(tasks, headers={"Authorization": f"bearer {tokens['viewer']}"}).status_code == 200
        # public: health and the OpenAPI schema; unknown routes are a JSON 404
        assert client.get("/health").status_code == 200
        assert client.get("/api/v1/schema/openapi.json").status_code == 200
        assert_error(client.get("/api/v1/projects/default/nothing-here"), 404, "not_found")

    # the live stream (WebSocket) follows the same rules
    assert stream(collector, None) in (401, 403)
    assert stream(collector, expired) in (401, 403)
    assert stream(collector, "z4jt_not-a-token") in (401, 403)
    for role in ROLES:
        assert '"hello"' in stream(collector, tokens[role])
        assert stream(collector, tokens[role], project="other") in (403, 404)
