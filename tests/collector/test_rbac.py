"""Must show: deny by default (every route handler declares a known
permission, and one that does not is caught), and the role matrix of
PRODUCT.md §5 on every route of a real collector, for every kind of caller:
anonymous, each role by login session and by API token, a member of another
project only, the superuser. API tokens follow their user's role; a Viewer's
live stream carries nothing of other projects; the member-management rules
(Admin up to Admin, Owner above, a last Owner stays) and their audit rows.

One collector per database serves the whole module (logins cost an argon2
hash each). Routes that change things are called with ids that do not exist
or with bodies that fail validation, so the matrix run deletes, revokes and
locks nothing; logout ends a fresh session of each caller, never the one the
other tests use.
"""

from __future__ import annotations

import json
import os
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from litestar import Litestar, WebSocket, get, websocket
from litestar.exceptions import WebSocketDisconnect
from litestar.testing import TestClient
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from tests.support.collector import Collector, mint_tokens, z4j
from tests.support.raw_agent import RawAgent
from z4j_agents import protocol as p
from z4j_collector.app import create_app
from z4j_collector.guards import PERMISSIONS
from z4j_collector.roles import ROLES, rank
from z4j_collector.settings import Settings

# PRODUCT.md §5 written out by hand, one row per route of create_app():
# (method or "WS", path) -> who may call it. "public": anyone; "agent": the
# route checks agent credentials itself (the agent gateway); "user": any
# logged-in caller; "superuser": instance superusers; otherwise the lowest
# project role on the {project} of the path. A route missing here, or a row
# the app no longer has, fails test_matrix_covers_every_route.
MATRIX = {
    ("GET", "/health"): "public",
    # public until Z4J_METRICS_TOKEN is set (not here); then only that token (tests/collector/test_metrics.py)
    ("GET", "/metrics"): "metrics",
    ("WS", "/agent/ws"): "agent",
    # OpenAPI documentation
    ("GET", "/api/v1/schema"): "public",
    ("GET", "/api/v1/schema/openapi.json"): "public",
    ("GET", "/api/v1/schema/openapi.yaml"): "public",
    ("GET", "/api/v1/schema/openapi.yml"): "public",
    ("GET", "/api/v1/schema/swagger"): "public",
    ("GET", "/api/v1/schema/redoc"): "public",
    ("GET", "/api/v1/schema/elements"): "public",
    ("GET", "/api/v1/schema/rapidoc"): "public",
    ("GET", "/api/v1/schema/oauth2-redirect.html"): "public",
    ("GET", "/api/v1/schema/{path}"): "public",
    # first boot, login, password reset, invitations: before anyone is logged in
    ("GET", "/api/v1/setup"): "public",
    ("POST", "/api/v1/setup"): "public",
    ("POST", "/api/v1/auth/login"): "public",
    ("POST", "/api/v1/auth/password-reset"): "public",
    ("POST", "/api/v1/auth/password-reset/complete"): "public",
    ("GET", "/api/v1/invitations/{token}"): "public",
    ("POST", "/api/v1/invitations/accept"): "public",
    # one's own account, and the projects one can see
    ("GET", "/api/v1/auth/me"): "user",
    ("GET", "/api/v1/auth/sessions"): "user",
    ("DELETE", "/api/v1/auth/sessions/{session_id}"): "user",
    ("POST", "/api/v1/auth/password"): "user",
    ("POST", "/api/v1/auth/logout"): "user",
    ("GET", "/api/v1/projects"): "user",
    # the instance: users, new projects, the instance audit chain
    ("GET", "/api/v1/users"): "superuser",
    ("POST", "/api/v1/users"): "superuser",
    ("PATCH", "/api/v1/users/{user_id}"): "superuser",
    ("GET", "/api/v1/users/{user_id}/sessions"): "superuser",
    ("DELETE", "/api/v1/users/{user_id}/sessions"): "superuser",
    ("POST", "/api/v1/projects"): "superuser",
    ("GET", "/api/v1/audit"): "superuser",
    ("GET", "/api/v1/audit/verify"): "superuser",
    # Viewer: read tasks, workers, queues (and agents, commands' results, the live stream)
    ("GET", "/api/v1/projects/{project}/tasks"): "viewer",
    ("GET", "/api/v1/projects/{project}/tasks/counts"): "viewer",
    ("GET", "/api/v1/projects/{project}/tasks/{task_id}"): "viewer",
    ("GET", "/api/v1/projects/{project}/tasks/{task_id}/tree"): "viewer",
    ("GET", "/api/v1/projects/{project}/workers"): "viewer",
    ("GET", "/api/v1/projects/{project}/queues"): "viewer",
    ("GET", "/api/v1/projects/{project}/agents"): "viewer",
    ("GET", "/api/v1/projects/{project}/commands/{command_id}"): "viewer",
    ("WS", "/api/v1/projects/{project}/stream"): "viewer",
    # Viewer: one's own API tokens (their role is capped by one's own)
    ("GET", "/api/v1/projects/{project}/tokens"): "viewer",
    ("POST", "/api/v1/projects/{project}/tokens"): "viewer",
    ("DELETE", "/api/v1/projects/{project}/tokens/{token_id}"): "viewer",
    # Operator: see the audit log; actions
    ("GET", "/api/v1/projects/{project}/audit"): "operator",
    ("GET", "/api/v1/projects/{project}/audit/verify"): "operator",
    ("GET", "/api/v1/projects/{project}/audit/checkpoints"): "operator",
    ("POST", "/api/v1/projects/{project}/audit/checkpoints"): "operator",
    ("POST", "/api/v1/projects/{project}/commands"): "operator",
    ("POST", "/api/v1/projects/{project}/tasks/{task_id}/retry"): "operator",
    ("POST", "/api/v1/projects/{project}/tasks/{task_id}/cancel"): "operator",
    ("POST", "/api/v1/projects/{project}/tasks/bulk-retry"): "operator",
    ("POST", "/api/v1/projects/{project}/queues/{queue}/purge"): "operator",
    ("POST", "/api/v1/projects/{project}/queues/{queue}/requeue-dead"): "operator",
    ("POST", "/api/v1/projects/{project}/workers/{worker}/control"): "operator",
    # Admin: agents, members and invitations up to Admin (the service checks "up to")
    ("POST", "/api/v1/projects/{project}/agents"): "admin",
    ("DELETE", "/api/v1/projects/{project}/agents/{agent_id}"): "admin",
    ("POST", "/api/v1/projects/{project}/agents/{agent_id}/rotate"): "admin",
    ("GET", "/api/v1/projects/{project}/members"): "admin",
    ("PUT", "/api/v1/projects/{project}/members/{user_id}"): "admin",
    ("DELETE", "/api/v1/projects/{project}/members/{user_id}"): "admin",
    ("GET", "/api/v1/projects/{project}/invitations"): "admin",
    ("POST", "/api/v1/projects/{project}/invitations"): "admin",
    ("DELETE", "/api/v1/projects/{project}/invitations/{invitation_id}"): "admin",
    # Schedules: viewers read, operators enable/disable/trigger, admins create/edit/delete
    ("GET", "/api/v1/projects/{project}/schedules"): "viewer",
    ("GET", "/api/v1/projects/{project}/schedules/{schedule_id}"): "viewer",
    ("GET", "/api/v1/projects/{project}/schedules/{schedule_id}/fires"): "viewer",
    ("POST", "/api/v1/projects/{project}/schedules/{schedule_id}/enable"): "operator",
    ("POST", "/api/v1/projects/{project}/schedules/{schedule_id}/disable"): "operator",
    ("POST", "/api/v1/projects/{project}/schedules/{schedule_id}/trigger"): "operator",
    ("POST", "/api/v1/projects/{project}/schedules"): "admin",
    ("PATCH", "/api/v1/projects/{project}/schedules/{schedule_id}"): "admin",
    ("DELETE", "/api/v1/projects/{project}/schedules/{schedule_id}"): "admin",
    # Notifications: viewers read channels (secrets masked) and the delivery log, operators send a test,
    # admins create/change/delete channels
    ("GET", "/api/v1/projects/{project}/notifications/channels"): "viewer",
    ("GET", "/api/v1/projects/{project}/notifications/channels/{channel_id}"): "viewer",
    ("GET", "/api/v1/projects/{project}/notifications/deliveries"): "viewer",
    ("POST", "/api/v1/projects/{project}/notifications/channels/{channel_id}/test"): "operator",
    ("POST", "/api/v1/projects/{project}/notifications/channels"): "admin",
    ("PATCH", "/api/v1/projects/{project}/notifications/channels/{channel_id}"): "admin",
    ("DELETE", "/api/v1/projects/{project}/notifications/channels/{channel_id}"): "admin",
    # Notification rules: viewers list them, admins change them
    ("GET", "/api/v1/projects/{project}/notifications/rules"): "viewer",
    ("GET", "/api/v1/projects/{project}/notifications/rules/{rule_id}"): "viewer",
    ("POST", "/api/v1/projects/{project}/notifications/rules"): "admin",
    ("PATCH", "/api/v1/projects/{project}/notifications/rules/{rule_id}"): "admin",
    ("DELETE", "/api/v1/projects/{project}/notifications/rules/{rule_id}"): "admin",
    # Reconciler: viewers read its settings and the stuck count, operators run a pass, admins change settings
    ("GET", "/api/v1/projects/{project}/reconciler"): "viewer",
    ("POST", "/api/v1/projects/{project}/reconciler/run"): "operator",
    ("PUT", "/api/v1/projects/{project}/reconciler"): "admin",
    # Trends and retention: viewers read, admins change retention
    ("GET", "/api/v1/projects/{project}/trends"): "viewer",
    ("GET", "/api/v1/projects/{project}/retention"): "viewer",
    ("PUT", "/api/v1/projects/{project}/retention"): "admin",
    # Owner: delete the project
    ("DELETE", "/api/v1/projects/{project}"): "owner",
}

# Harmless arguments: ids that do not exist, bodies that fail validation
# ({} lacks required fields), no ?confirm= for the project's deletion. They
# reach the guard (which runs before the body is read) and, once let through,
# end in 400/404 without changing anything.
MISSING = 999_999
PATH_PARAMS = {"task_id": "no-such-task", "command_id": "no-such-command", "user_id": MISSING, "session_id": MISSING,
               "schedule_id": MISSING, "channel_id": MISSING, "rule_id": MISSING,
               "token_id": MISSING, "agent_id": MISSING, "invitation_id": MISSING, "token": "z4ji_no-such-invitation",
               "path": "no-such-document", "queue": "no-such-queue", "worker": "no-such-worker"}
BODIES = {
    ("PUT", "/api/v1/projects/{project}/members/{user_id}"): {"role": "viewer"},  # no such user: 404
    ("POST", "/api/v1/projects/{project}/tasks/bulk-retry"): {"dry_run": True},  # counts, sends nothing
}
NO_BODY = {("POST", "/api/v1/auth/logout"), ("POST", "/api/v1/projects/{project}/agents/{agent_id}/rotate"),
           ("POST", "/api/v1/projects/{project}/audit/checkpoints")}
# What a route itself answers to the dummy arguments when that is a refusal,
# the same for every caller the guard lets through.
OWN_ANSWER = {("GET", "/api/v1/invitations/{token}"): (401, "bad_invitation")}

PASSWORD = "matrix-password-1"
DEFAULT = "/api/v1/projects/default"
SUPERUSER = "root@example.com"


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
        with pytest.raises(WebSocketDisconnect) as refused:  # closed before accept: nothing is sent
            with client.websocket_connect("/api/v1/projects/default/leaky-stream") as ws:
                ws.receive_text()
        assert refused.value.code == 4403, refused.value  # 4000 + the status an HTTP route would get



def declared_kind(handler: object) -> str | None:
    """What the route's declared permission lets through, in MATRIX's words."""
    permission = handler.opt.get("permission")  # type: ignore[attr-defined]
    if permission not in PERMISSIONS:
        return None
    return PERMISSIONS[permission] or permission


def test_matrix_covers_every_route(app):
    routes = {(method, path): handler for method, path, handler in handlers(app) if method != "OPTIONS"}
    missing = sorted(f"{m} {p}" for m, p in set(routes) - set(MATRIX))
    stale = sorted(f"{m} {p}" for m, p in set(MATRIX) - set(routes))
    assert not missing, "routes missing from MATRIX:\n" + "\n".join(missing)
    assert not stale, "MATRIX rows the app no longer has:\n" + "\n".join(stale)
    wrong = sorted(f"{m} {p}: the route lets through {declared_kind(h)!r}, MATRIX says {MATRIX[(m, p)]!r}"
                   for (m, p), h in routes.items() if declared_kind(h) != MATRIX[(m, p)])
    assert not wrong, "routes whose permission differs from PRODUCT.md §5:\n" + "\n".join(wrong)
    # Litestar's automatic OPTIONS answers (CORS preflight) say nothing but the allowed methods
    options = [path for method, path, h in handlers(app) if method == "OPTIONS" and declared_kind(h) != "public"]
    assert not options and any(method == "OPTIONS" for method, _, _ in handlers(app))


# ------------------------------------------------------------ a real collector and its callers


def _databases() -> list[str]:
    return [d.strip() for d in os.environ.get("Z4J_TEST_DBS", "sqlite,postgres").split(",") if d.strip()]


@dataclass
class Caller:
    name: str
    token: str | None
    roles: dict[str, str] = field(default_factory=dict)
    """project -> role"""
    superuser: bool = False
    email: str | None = None
    """set for login sessions (to log in a fresh one)"""
    valid: bool = True

    def verdict(self, kind: str, project: str) -> int | None:
        """The status the guard refuses this caller with on a ``kind`` route, or None when it lets it through."""
        if kind in ("public", "metrics"):
            return None
        if self.token is None or not self.valid:
            return 401
        if kind == "user":
            return None
        if kind == "superuser":
            return None if self.superuser else 403
        if self.superuser:
            return None
        role = self.roles.get(project)
        if role is None:
            return 404  # a project one has no role on does not exist
        return None if rank(role) >= rank(kind) else 403


@dataclass
class World:
    collector: Collector
    http: httpx.Client
    superuser: str = ""
    callers: list[Caller] = field(default_factory=list)
    users: dict[str, int] = field(default_factory=dict)

    def call(self, method: str, url: str, token: str | None, body: object = None, **params: object) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        return self.http.request(method, url, headers=headers, json=body, params=params or None)

    def route(self, method: str, path: str, token: str | None, project: str = "default") -> httpx.Response:
        body = None if method in ("GET", "DELETE") or (method, path) in NO_BODY else BODIES.get((method, path), {})
        return self.call(method, path.format(project=project, **PATH_PARAMS), token, body)

    def login(self, email: str) -> str:
        return ok(self.call("POST", "/api/v1/auth/login", None, {"email": email, "password": PASSWORD}), 200)["token"]

    def new_user(self, email: str, project: str | None = None, role: str | None = None) -> int:
        """A user made by the superuser through the API, optionally a member of ``project``."""
        user_id = ok(self.call("POST", "/api/v1/users", self.superuser, {"email": email, "password": PASSWORD}),
                     201)["id"]
        if project is not None:
            ok(self.call("PUT", f"/api/v1/projects/{project}/members/{user_id}", self.superuser, {"role": role}), 200)
        self.users[email] = user_id
        return user_id

    def session(self, name: str) -> str:
        return next(c.token for c in self.callers if c.name == name)  # type: ignore[return-value]


def ok(response: httpx.Response, status: int) -> Any:
    assert response.status_code == status, f"{response.request.method} {response.request.url}: {response.text}"
    return response.json() if response.content else {}


def assert_error(response: httpx.Response, status: int, code: str) -> dict:
    assert response.status_code == status, f"{response.request.method} {response.request.url}: {response.text}"
    body = response.json()
    assert set(body) == {"code", "message"} and body["code"] == code and body["message"], body
    return body


@pytest.fixture(scope="module", params=_databases())
def world(request, tmp_path_factory):
    """One collector per database; the superuser made from the server's shell,
    one user per role of project ``default`` (by login session and by API
    token), an owner of project ``other`` who is no member of ``default``."""
    tmp = tmp_path_factory.mktemp(f"rbac-{request.param}")
    drop = None
    if request.param == "sqlite":
        url = f"sqlite:///{tmp}/z4j.db"
    else:
        server, name = request.getfixturevalue("postgres_server"), f"t_{uuid.uuid4().hex[:16]}"
        url = server.create_database(name)
        drop = lambda: server.drop_database(name)  # noqa: E731
    collector = Collector(url, tmp)
    try:
        z4j("admin", "create-user", "--email", SUPERUSER, "--password-stdin", "--superuser", "--db", url,
            input=PASSWORD + "\n")
        collector.start()
        with httpx.Client(base_url=collector.url, timeout=30) as http:
            yield _populate(World(collector, http))
    finally:
        collector.stop()
        if drop is not None:
            drop()


def _populate(w: World) -> World:
    w.superuser = w.login(SUPERUSER)
    ok(w.call("POST", "/api/v1/projects", w.superuser, {"slug": "other"}), 201)
    w.callers = [Caller("anonymous", None), Caller("unknown API token", "z4jt_not-a-token", valid=False),
                 Caller("unknown session", "z4js_not-a-session", valid=False)]
    members = [(role, f"{role}@example.com", "default") for role in ROLES]
    members.append(("owner", "outsider@example.com", "other"))
    for role, email, project in members:
        w.new_user(email, project, role)
        session = w.login(email)
        token = ok(w.call("POST", f"/api/v1/projects/{project}/tokens", session, {"name": "matrix", "role": role}),
                   201)["token"]
        who = role if project == "default" else "outsider"
        w.callers += [Caller(f"{who} (session)", session, {project: role}, email=email),
                      Caller(f"{who} (API token)", token, {project: role})]
    w.callers.append(Caller("superuser (session)", w.superuser, superuser=True, email=SUPERUSER))
    return w


# ------------------------------------------------------------ the role matrix, live

LOGOUT = ("POST", "/api/v1/auth/logout")


def judge(response: httpx.Response, verdict: int | None, kind: str, project: str, own: tuple | None) -> str | None:
    """What is wrong with ``response`` (None: nothing)."""
    status = response.status_code
    try:
        body = response.json()
    except ValueError:
        body = None
    if verdict is None:
        if status >= 500:
            return f"{status} {response.text[:200]}"
        if own is not None and isinstance(body, dict) and (status, body.get("code")) == own:
            return None
        if status in (401, 403):
            return f"refused with {status} {response.text[:200]}; should be let through"
        if status == 404 and isinstance(body, dict) and body.get("message") == f"no project {project!r}":
            return "404 no such project; should be let through"
        return None
    if status != verdict:
        return f"{status} {response.text[:200]}; expected {verdict}"
    if not isinstance(body, dict) or set(body) != {"code", "message"} or not body["message"]:
        return f"not a JSON {{code, message}}: {response.text[:200]}"
    if verdict == 403 and body["code"] != "forbidden":
        return f"403 {body}"
    if verdict == 403 and kind in ROLES and f"needs the {kind} role" not in body["message"]:
        return f"403 without the role it needs: {body}"
    if verdict == 404 and (body["code"] != "not_found" or body["message"] != f"no project {project!r}"):
        return f"404 {body}"
    return None


def stream_answer(w: World, token: str | None, project: str) -> tuple[int, dict]:
    """(101, hello) when the live stream opens, else (HTTP status, JSON body) of the refused handshake."""
    url = w.collector.url.replace("http://", "ws://") + f"/api/v1/projects/{project}/stream"
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    try:
        with connect(url, additional_headers=headers, open_timeout=10) as ws:
            return 101, json.loads(ws.recv(timeout=10))
    except InvalidStatus as exc:
        return exc.response.status_code, json.loads(exc.response.body or b"null")


STREAM, GATEWAY = ("WS", "/api/v1/projects/{project}/stream"), ("WS", "/agent/ws")


def test_role_matrix(world):
    w = world
    assert {row for row in MATRIX if row[0] == "WS"} == {STREAM, GATEWAY}, "a new WebSocket route: test it below"
    failures = []
    for (method, path), kind in MATRIX.items():
        if method == "WS" or (method, path) == LOGOUT:
            continue
        for project in ("default", "other") if "{project}" in path else ("default",):
            for caller in w.callers:
                response = w.route(method, path, caller.token, project)
                problem = judge(response, caller.verdict(kind, project), kind, project, OWN_ANSWER.get((method, path)))
                if problem:
                    failures.append(f"{caller.name}: {method} {response.request.url.path}: {problem}")

    # the live stream: the same answers, as HTTP statuses of the refused handshake
    for project in ("default", "other"):
        for caller in w.callers:
            verdict = caller.verdict(MATRIX[STREAM], project)
            status, body = stream_answer(w, caller.token, project)
            if verdict is None and (status, body.get("type"), body.get("project")) != (101, "hello", project):
                failures.append(f"{caller.name}: stream of {project}: {status} {body}; should open")
            elif verdict is not None and (status != verdict or set(body) != {"code", "message"}
                                          or verdict == 404 and body["code"] != "not_found"):
                failures.append(f"{caller.name}: stream of {project}: {status} {body}; expected {verdict}")

    # the agent gateway takes agent credentials only: a user's are an unknown agent token
    assert MATRIX[GATEWAY] == "agent"
    for caller in w.callers:
        error, close = RawAgent(w.collector.url, caller.token or "", "no-secret").connect().refusal()
        if close != 4401 or error is None or error.code not in ("unauthorized", "unknown_token"):
            failures.append(f"{caller.name}: /agent/ws: {error} close {close}; expected 4401")

    # logout: each caller ends a fresh session of its own; the shared one keeps working
    for caller in w.callers:
        token = w.login(caller.email) if caller.email else caller.token
        response = w.call(*LOGOUT, token)
        verdict = caller.verdict(MATRIX[LOGOUT], "default")
        if verdict is not None:
            problem = judge(response, verdict, "user", "default", None)
        elif response.status_code != 204:
            problem = f"{response.status_code} {response.text}"
        elif caller.email and w.call("GET", "/api/v1/auth/me", token).status_code != 401:
            problem = "the session still works after logout"
        elif w.call("GET", "/api/v1/auth/me", caller.token).status_code != 200:
            problem = "logging out ended another session"
        else:
            problem = None
        if problem:
            failures.append(f"{caller.name}: POST /api/v1/auth/logout: {problem}")
    assert not failures, f"{len(failures)} answers differ from the matrix:\n" + "\n".join(failures)


def test_expired_revoked_and_malformed_credentials(world):
    w = world
    expired = mint_tokens(w.collector, "owner", expires_at=time.time() - 60)["owner"]
    owner = w.session("owner (session)")
    minted = ok(w.call("POST", f"{DEFAULT}/tokens", owner, {"name": "to-revoke", "role": "owner"}), 201)
    ok(w.call("DELETE", f"{DEFAULT}/tokens/{minted['id']}", owner), 204)
    revoked = minted["token"]
    for (method, path), kind in MATRIX.items():
        if method == "WS" or kind in ("public", "agent", "metrics"):
            continue
        assert_error(w.route(method, path, expired), 401, "token_expired")
        assert_error(w.route(method, path, revoked), 401, "bad_token")
    for token, code in ((expired, "token_expired"), (revoked, "bad_token")):
        status, body = stream_answer(w, token, "default")
        assert (status, body["code"]) == (401, code), body

    # the scheme must be Bearer; its case does not matter
    viewer = w.session("viewer (session)")
    tasks = "/api/v1/projects/default/tasks"
    assert_error(w.http.get(tasks, headers={"Authorization": f"Basic {viewer}"}), 401, "unauthorized")
    assert w.http.get(tasks, headers={"Authorization": f"bearer {viewer}"}).status_code == 200
    # unknown routes are a JSON 404 for anyone
    assert_error(w.http.get("/api/v1/projects/default/nothing-here"), 404, "not_found")


# ------------------------------------------------------------ API tokens follow their user


def test_an_api_token_is_capped_by_its_role_and_its_users_role_of_today(world):
    w = world
    user_id = w.new_user("scripter@example.com", "default", "admin")
    session = w.login("scripter@example.com")

    def mint(role: str) -> httpx.Response:
        return w.call("POST", f"{DEFAULT}/tokens", session, {"name": f"as-{role}", "role": role})

    def refused(token: str, url: str, role_now: str) -> None:
        message = assert_error(w.call("GET", url, token), 403, "forbidden")["message"]
        assert f"you are {role_now} on 'default'" in message, message

    as_viewer, as_admin = ok(mint("viewer"), 201)["token"], ok(mint("admin"), 201)["token"]
    assert_error(mint("owner"), 403, "role_too_high")
    # minted by an admin with role viewer, it acts as a viewer
    assert w.call("GET", f"{DEFAULT}/tasks", as_viewer).status_code == 200
    refused(as_viewer, f"{DEFAULT}/audit", "viewer")
    assert_error(w.call("POST", f"{DEFAULT}/commands", as_viewer, {"action": "echo"}), 403, "forbidden")
    assert ok(w.call("GET", f"{DEFAULT}/members", as_admin), 200)

    # the user is demoted: the admin token drops with them, a new one cannot be minted above
    ok(w.call("PUT", f"{DEFAULT}/members/{user_id}", w.superuser, {"role": "operator"}), 200)
    refused(as_admin, f"{DEFAULT}/members", "operator")
    assert w.call("GET", f"{DEFAULT}/audit", as_admin).status_code == 200
    refused(as_viewer, f"{DEFAULT}/audit", "viewer")
    assert_error(mint("admin"), 403, "role_too_high")
    ok(w.call("PUT", f"{DEFAULT}/members/{user_id}", w.superuser, {"role": "viewer"}), 200)
    refused(as_admin, f"{DEFAULT}/audit", "viewer")

    # no longer a member: the project does not exist for the token
    ok(w.call("DELETE", f"{DEFAULT}/members/{user_id}", w.superuser), 204)
    assert_error(w.call("GET", f"{DEFAULT}/tasks", as_admin), 404, "not_found")
    # promoted to owner: each token is still capped by its own role
    ok(w.call("PUT", f"{DEFAULT}/members/{user_id}", w.superuser, {"role": "owner"}), 200)
    refused(as_viewer, f"{DEFAULT}/audit", "viewer")
    assert ok(w.call("GET", f"{DEFAULT}/members", as_admin), 200)
    mine = ok(w.call("GET", f"{DEFAULT}/tokens", session), 200)
    assert {t["name"]: t["last_used_at"] is not None for t in mine} == {"as-viewer": True, "as-admin": True}
    ok(w.call("DELETE", f"{DEFAULT}/members/{user_id}", w.superuser), 204)  # leave one owner in default


# ------------------------------------------------------------ the live stream carries one project


class LiveStream:
    """A client of /api/v1/projects/{project}/stream that keeps every task it was sent."""

    def __init__(self, w: World, token: str, project: str) -> None:
        url = w.collector.url.replace("http://", "ws://") + f"/api/v1/projects/{project}/stream"
        self._cm = connect(url, additional_headers={"Authorization": f"Bearer {token}"}, open_timeout=10)
        self.tasks: list[dict] = []

    def __enter__(self) -> LiveStream:
        self.ws = self._cm.__enter__()
        assert json.loads(self.ws.recv(timeout=10))["type"] == "hello"
        return self

    def __exit__(self, *exc: object) -> None:
        self._cm.__exit__(*exc)

    def until(self, task_id: str) -> None:
        """Read frames until one carries ``task_id``."""
        deadline = time.monotonic() + 15
        while task_id not in {t["task_id"] for t in self.tasks}:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"{task_id} never came; got {[t['task_id'] for t in self.tasks]}"
            body = json.loads(json.loads(self.ws.recv(timeout=remaining))["body"])
            self.tasks += body["tasks"]


def ingest(agent: RawAgent, prefix: str) -> None:
    """Two tasks ``{prefix}-0`` and ``{prefix}-1``, committed (acked) before returning."""
    assert agent.signer is not None
    agent.send(agent.signer.seal(agent.batch(2, prefix)))
    ack = agent.recv_frame()
    assert isinstance(ack, p.BatchAck) and ack.accepted == 2, ack


def test_a_viewers_stream_carries_no_data_of_other_projects(world):
    w = world
    ids = {slug: ok(w.call("POST", "/api/v1/projects", w.superuser, {"slug": slug}), 201)["id"]
           for slug in ("alpha", "bravo")}
    w.new_user("watcher@example.com", "alpha", "viewer")
    watcher = w.login("watcher@example.com")
    agents = {}
    for slug in ids:
        creds = ok(w.call("POST", f"/api/v1/projects/{slug}/agents", w.superuser, {"name": f"{slug}-agent"}), 201)
        agents[slug] = RawAgent(w.collector.url, creds["token"], creds["hmac_secret"], project=slug).connect()
        agents[slug].handshake()

    # bravo does not exist for alpha's viewer: the handshake is refused with 404
    status, body = stream_answer(w, watcher, "bravo")
    assert (status, body["code"], body["message"]) == (404, "not_found", "no project 'bravo'")

    with LiveStream(w, watcher, "alpha") as alpha, LiveStream(w, w.superuser, "bravo") as control:
        for n in (1, 2):
            ingest(agents["bravo"], f"bravo{n}")  # committed first, so it would be in an earlier frame
            ingest(agents["alpha"], f"alpha{n}")
            alpha.until(f"alpha{n}-1")
            control.until(f"bravo{n}-1")  # bravo's changes do reach bravo's streams
    assert {t["task_id"] for t in alpha.tasks} == {"alpha1-0", "alpha1-1", "alpha2-0", "alpha2-1"}
    assert {t["project_id"] for t in alpha.tasks} == {ids["alpha"]}
    assert {t["task_id"] for t in control.tasks} == {"bravo1-0", "bravo1-1", "bravo2-0", "bravo2-1"}
    for agent in agents.values():
        agent.close()


# ------------------------------------------------------------ who may manage whom


def test_member_management_rules_and_their_audit_rows(world):
    w = world
    members = f"{DEFAULT}/members"
    owner, owner_id = w.session("owner (session)"), w.users["owner@example.com"]
    admin_id = w.new_user("crew-admin@example.com", "default", "admin")
    admin = w.login("crew-admin@example.com")
    crew1, crew2 = w.new_user("crew-1@example.com"), w.new_user("crew-2@example.com")

    def roles_now() -> dict[int, str]:
        return {m["user_id"]: m["role"] for m in ok(w.call("GET", members, owner), 200)}

    def put(who: str, user_id: int, role: str) -> httpx.Response:
        return w.call("PUT", f"{members}/{user_id}", who, {"role": role})

    def remove(who: str, user_id: int) -> httpx.Response:
        return w.call("DELETE", f"{members}/{user_id}", who)

    def invite(who: str, email: str, role: str) -> httpx.Response:
        return w.call("POST", f"{DEFAULT}/invitations", who, {"email": email, "role": role})

    assert [u for u, r in roles_now().items() if r == "owner"] == [owner_id]

    # an admin adds and promotes up to admin, and invites up to admin
    for role in ("viewer", "operator", "admin"):
        assert ok(put(admin, crew1, role), 200) == {"user_id": crew1, "role": role}
    ok(invite(admin, "invited-admin@example.com", "admin"), 201)
    # but cannot change an admin's or an owner's membership, nor grant owner
    before = roles_now()
    assert_error(put(admin, crew1, "viewer"), 403, "forbidden")
    assert_error(remove(admin, crew1), 403, "forbidden")
    assert_error(put(admin, crew2, "owner"), 403, "forbidden")
    assert_error(put(admin, owner_id, "viewer"), 403, "forbidden")
    assert_error(remove(admin, owner_id), 403, "forbidden")
    assert_error(put(admin, admin_id, "owner"), 403, "forbidden")
    assert_error(invite(admin, "invited-owner@example.com", "owner"), 403, "forbidden")
    assert roles_now() == before

    # an owner can
    ok(put(owner, crew1, "viewer"), 200)
    ok(put(owner, crew2, "owner"), 200)
    ok(invite(owner, "invited-owner@example.com", "owner"), 201)
    ok(remove(owner, crew2), 204)
    # but the last owner stays, whoever asks
    assert_error(put(owner, owner_id, "admin"), 409, "last_owner")
    assert_error(remove(owner, owner_id), 409, "last_owner")
    assert_error(put(w.superuser, owner_id, "viewer"), 409, "last_owner")
    assert_error(remove(w.superuser, owner_id), 409, "last_owner")
    assert roles_now() == {**before, crew1: "viewer"}

    # each change, and each refusal of the role rules, is in the project's audit log
    log = ok(w.call("GET", f"{DEFAULT}/audit", owner, limit=1000), 200)["entries"]
    rows = [(e["actor"], e["action"], e["target"], e["outcome"], e["detail"].get("role")) for e in log
            if e["target"].startswith("user:") and e["source"] == "127.0.0.1"]
    a, o, s = "crew-admin@example.com", "owner@example.com", SUPERUSER
    expected = [
        (a, "member.add", "user:crew-1@example.com", "ok", "viewer"),
        (a, "member.role", "user:crew-1@example.com", "ok", "operator"),
        (a, "member.role", "user:crew-1@example.com", "ok", "admin"),
        (a, "invitation.create", "user:invited-admin@example.com", "ok", "admin"),
        (a, "member.role", "user:crew-1@example.com", "denied", "viewer"),
        (a, "member.remove", "user:crew-1@example.com", "denied", None),
        (a, "member.role", "user:crew-2@example.com", "denied", "owner"),
        (a, "member.role", "user:owner@example.com", "denied", "viewer"),
        (a, "member.remove", "user:owner@example.com", "denied", None),
        (a, "member.role", "user:crew-admin@example.com", "denied", "owner"),
        (a, "invitation.create", "user:invited-owner@example.com", "denied", "owner"),
        (o, "member.role", "user:crew-1@example.com", "ok", "viewer"),
        (o, "member.add", "user:crew-2@example.com", "ok", "owner"),
        (o, "invitation.create", "user:invited-owner@example.com", "ok", "owner"),
        (o, "member.remove", "user:crew-2@example.com", "ok", None),
        (o, "member.role", "user:owner@example.com", "refused", "admin"),
        (o, "member.remove", "user:owner@example.com", "refused", None),
        (s, "member.role", "user:owner@example.com", "refused", "viewer"),
        (s, "member.remove", "user:owner@example.com", "refused", None),
    ]
    crew_rows = [r for r in reversed(rows) if r[0] in (a, o) or r[0] == s and r[2] == "user:owner@example.com"]
    assert crew_rows[-len(expected):] == expected
    refusals = [e for e in log if e["outcome"] in ("denied", "refused")]
    assert all(e["detail"]["reason"] for e in refusals)
    assert ok(w.call("GET", f"{DEFAULT}/audit/verify", owner), 200)["ok"] is True
