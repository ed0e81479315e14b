"""Authentication against a real collector process, on SQLite and PostgreSQL:
first boot, login throttling (Must show), sessions, API tokens, and agent
credentials through the API."""

from __future__ import annotations

import base64
import hashlib
import re
import time
from types import SimpleNamespace

import httpx
import pytest

from tests.collector.test_cli import one_line_failure, run_many
from tests.support.collector import (
    Collector, module_collector, running, wait_agent_connected, wait_until, with_store, z4j,
)
from tests.support.dbs import DBS
from tests.support.raw_agent import RawAgent
from z4j_agents import protocol as p
from z4j_agents.bare import Agent
from z4j_agents.config import AgentConfig

ROOT, ROOT_PW = "root@example.com", "root-password-1"
ANN_PW = "ann-password-1"


def sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def rows(db_url: str, sql: str) -> list[tuple]:
    return with_store(db_url, lambda store: store.fetchall(sql))


def login(c: Collector, email: str, password: str) -> httpx.Response:
    return httpx.post(f"{c.url}/api/v1/auth/login", json={"email": email, "password": password}, timeout=30)


def add_user(root: httpx.Client, email: str, password: str = ANN_PW, role: str | None = None) -> int:
    reply = root.post("/api/v1/users/", json={"email": email, "password": password})
    assert reply.status_code == 201, reply.text
    user_id = reply.json()["id"]
    if role is not None:
        assert root.put(f"/api/v1/projects/default/members/{user_id}", json={"role": role}).status_code == 200
    return user_id


def error(reply: httpx.Response, status: int, code: str) -> str:
    assert reply.status_code == status, f"expected {status} {code}, got {reply.status_code}: {reply.text}"
    assert reply.json()["code"] == code, reply.text
    return reply.json()["message"]


def audit_actions(api: httpx.Client, path: str = "/api/v1/audit", **params: str) -> list[str]:
    reply = api.get(path, params={"limit": 1000, **params})
    assert reply.status_code == 200, reply.text
    return [e["action"] for e in reply.json()["entries"]]


@pytest.fixture(scope="module", params=DBS, ids=DBS)
def signed_in(request, tmp_path_factory):
    """One collector per database and its first superuser's API, shared by the
    tests below that need no other settings and nothing fresh but their own
    users (one worker runs them in file order)."""
    collector = module_collector(request, tmp_path_factory, "auth")
    return SimpleNamespace(collector=collector, root=collector.api(collector.first_superuser(ROOT, ROOT_PW)))


# ------------------------------------------------------------------ first boot


def test_first_boot_setup_token_creates_the_first_superuser_once(collector):
    anon = collector.api()
    assert anon.get("/api/v1/setup").json() == {"needed": True}
    log = collector.log_path.read_text()
    assert "no user exists yet" in log
    token = collector.setup_token()

    body = {"token": token, "email": "Root@Example.com", "password": ROOT_PW}
    error(anon.post("/api/v1/setup", json={**body, "token": "z4ju_" + "x" * 43}), 401, "bad_setup_token")
    error(anon.post("/api/v1/setup", json={**body, "password": "short"}), 400, "weak_password")
    assert anon.get("/api/v1/setup").json() == {"needed": True}, "a refused setup changed something"

    reply = anon.post("/api/v1/setup", json=body)
    assert reply.status_code == 201, reply.text
    created = reply.json()
    assert created["user"]["email"] == ROOT and created["user"]["is_superuser"] is True
    root = collector.api(created["token"])
    me = root.get("/api/v1/auth/me").json()
    assert me["user"]["email"] == ROOT and me["via"] == "session"
    assert [(p["slug"], p["role"]) for p in me["projects"]] == [("default", "owner")]
    members = root.get("/api/v1/projects/default/members").json()
    assert [(m["email"], m["role"]) for m in members] == [(ROOT, "owner")]

    # the token worked once; a second redemption (another address) is refused
    error(anon.post("/api/v1/setup", json={**body, "email": "eve@example.com"}), 401, "bad_setup_token")
    assert anon.get("/api/v1/setup").json() == {"needed": False}
    assert [u["email"] for u in root.get("/api/v1/users/").json()] == [ROOT]
    assert "setup.first_user" in audit_actions(root)

    # a restart with a user in the database prints no new token
    collector.stop()
    collector.start()
    assert collector.log_path.read_text().count("--token z4ju_") == 1
    assert login(collector, ROOT, ROOT_PW).status_code == 200


def test_admin_create_user_from_the_shell(db_url, tmp_path):
    z4j("db", "upgrade", "--db", db_url)
    made = z4j("admin", "create-user", "--email", "Ops@Example.com", "--password-stdin", "--superuser", "--json",
               "--db", db_url, input="a long enough password\n")
    assert '"superuser": true' in made.stdout
    results = run_many({
        "argv": (("admin", "create-user", "--email", "b@example.com", "--password", "hunter22hunter",
                  "--db", db_url), {}),
        "no-stdin": (("admin", "create-user", "--email", "b@example.com", "--db", db_url), {}),
    })
    one_line_failure(results["argv"], "--password-stdin")
    one_line_failure(results["no-stdin"], "--password-stdin")
    duplicate = z4j("admin", "create-user", "--email", "ops@example.com", "--password-stdin", "--db", db_url,
                    input="another long password\n", check=False)
    one_line_failure(duplicate, "ops@example.com", "already exists")
    weak = z4j("admin", "create-user", "--email", "c@example.com", "--password-stdin", "--db", db_url,
               input="password\n", check=False)
    one_line_failure(weak, "common")
    short = z4j("admin", "create-user", "--email", "c@example.com", "--password-stdin", "--db", db_url,
                input="2short\n", check=False)
    one_line_failure(short, "at least 8")
    assert [r[0] for r in rows(db_url, "SELECT email FROM users ORDER BY id")] == ["ops@example.com"]

    c = Collector(db_url, tmp_path).start()
    try:
        assert "--token z4ju_" not in c.log_path.read_text(), "a setup token was printed with a user present"
        assert c.api().get("/api/v1/setup").json() == {"needed": False}
        reply = login(c, "OPS@example.com", "a long enough password")
        assert reply.status_code == 200, reply.text
        assert reply.json()["user"]["is_superuser"] is True
    finally:
        c.stop()


# ------------------------------------------------------------------ login throttling (Must show)


def test_sixth_wrong_password_waits_and_the_right_one_works_after_the_window(db_url, tmp_path):
    with running(db_url, tmp_path, Z4J_LOGIN_WINDOW_S=10) as c:
        root = c.api(c.first_superuser(ROOT, ROOT_PW))
        add_user(root, "ann@example.com", role="viewer")

        unknown = login(c, "nobody@example.com", "wrong-password-0")
        wrong = login(c, "ann@example.com", "wrong-password-0")
        assert (unknown.status_code, unknown.json()) == (wrong.status_code, wrong.json()) == (
            401, {"code": "bad_credentials", "message": "wrong e-mail or password"})
        for i in range(1, 5):
            error(login(c, "ann@example.com", f"wrong-password-{i}"), 401, "bad_credentials")

        sixth = login(c, "ann@example.com", "wrong-password-5")
        message = error(sixth, 429, "rate_limited")
        wait = int(sixth.headers["Retry-After"])
        assert 1 <= wait <= 10
        assert re.search(rf"try again in {wait} s", message), message
        locked = login(c, "ann@example.com", ANN_PW)  # even the right password waits
        assert "try again in" in error(locked, 429, "rate_limited")
        assert login(c, ROOT, ROOT_PW).status_code == 200, "another account is not locked"

        time.sleep(int(locked.headers["Retry-After"]))  # the collector's promise
        after = login(c, "ann@example.com", ANN_PW)
        assert after.status_code == 200, after.text
        assert c.api(after.json()["token"]).get("/api/v1/auth/me").json()["user"]["email"] == "ann@example.com"
        # a success clears the account's failures: the next mistake is a plain 401
        error(login(c, "ann@example.com", "wrong-again-1"), 401, "bad_credentials")

        denied = root.get("/api/v1/audit", params={"action": "auth.login", "outcome": "denied", "limit": 100})
        assert len([e for e in denied.json()["entries"] if e["target"] == "user:ann@example.com"]) == 6


def test_one_address_spraying_many_accounts_is_refused(db_url, tmp_path):
    with running(db_url, tmp_path, Z4J_LOGIN_WINDOW_S=30, Z4J_LOGIN_MAX_FAILURES_SOURCE=4) as c:
        root = c.api(c.first_superuser(ROOT, ROOT_PW))
        add_user(root, "ann@example.com")
        for account in ("a@example.com", "b@example.com", ROOT, "d@example.com"):
            error(login(c, account, "spray-password-1"), 401, "bad_credentials")
        refused = login(c, "ann@example.com", ANN_PW)  # a fresh account, even with its password
        message = error(refused, 429, "rate_limited")
        assert "from this address" in message and f"try again in {refused.headers['Retry-After']} s" in message
        assert root.get("/api/v1/auth/me").status_code == 200, "live sessions are not affected"


# ------------------------------------------------------------------ sessions


def test_sessions_are_opaque_hashed_listed_and_revocable(signed_in):
    collector, root = signed_in.collector, signed_in.root
    sue_id = add_user(root, "sue@example.com", role="operator")
    logins = [login(collector, "sue@example.com", ANN_PW).json() for _ in range(3)]
    s1, s2, s3 = (collector.api(x["token"]) for x in logins)
    for x in logins:
        prefix, _, secret = x["token"].partition("_")
        assert prefix == "z4js" and len(base64.urlsafe_b64decode(secret + "==")) >= 16  # >= 128 bits
    stored = rows(collector.db_url, "SELECT * FROM sessions")
    for x in logins:
        assert sha256(x["token"]) in {v for r in stored for v in r}
        assert not any(x["token"] in str(v) for r in stored for v in r), "a session token is stored in clear"

    mine = s1.get("/api/v1/auth/sessions").json()
    assert {m["id"] for m in mine} == {x["session_id"] for x in logins}
    assert [m["id"] for m in mine if m["current"]] == [logins[0]["session_id"]]
    assert not any("token" in key for m in mine for key in m)

    assert s1.delete(f"/api/v1/auth/sessions/{logins[1]['session_id']}").status_code == 204
    error(s2.get("/api/v1/auth/me"), 401, "session_ended")
    root_session = root.get("/api/v1/auth/sessions").json()[0]["id"]
    error(s1.delete(f"/api/v1/auth/sessions/{root_session}"), 404, "not_found")  # not hers
    assert s3.post("/api/v1/auth/logout").status_code == 204
    error(s3.get("/api/v1/auth/me"), 401, "session_ended")
    assert s1.get("/api/v1/auth/me").status_code == 200

    # a superuser sees and ends another user's sessions; a user cannot
    assert [s["id"] for s in root.get(f"/api/v1/users/{sue_id}/sessions").json()] == [logins[0]["session_id"]]
    error(s1.get("/api/v1/users/1/sessions"), 403, "forbidden")
    assert root.delete(f"/api/v1/users/{sue_id}/sessions").status_code == 204
    error(s1.get("/api/v1/auth/me"), 401, "session_ended")
    assert root.get("/api/v1/auth/me").status_code == 200
    assert {"session.revoke", "auth.logout", "session.revoke_all"} <= set(audit_actions(root))


def test_disabling_a_user_ends_their_sessions_and_tokens(signed_in):
    collector, root = signed_in.collector, signed_in.root
    dan_id = add_user(root, "dan@example.com", role="operator")
    dan = collector.api(login(collector, "dan@example.com", ANN_PW).json()["token"])
    made = dan.post("/api/v1/projects/default/tokens", json={"name": "script", "role": "viewer"})
    assert made.status_code == 201, made.text
    script = collector.api(made.json()["token"])
    assert script.get("/api/v1/projects/default/tasks").status_code == 200

    assert root.patch(f"/api/v1/users/{dan_id}", json={"disabled": True}).json()["disabled_at"] is not None
    error(dan.get("/api/v1/auth/me"), 401, "session_ended")
    error(script.get("/api/v1/projects/default/tasks"), 401, "bad_token")
    error(login(collector, "dan@example.com", ANN_PW), 401, "bad_credentials")

    # enabling him again does not bring the old credentials back
    assert root.patch(f"/api/v1/users/{dan_id}", json={"disabled": False}).json()["disabled_at"] is None
    error(dan.get("/api/v1/auth/me"), 401, "session_ended")
    error(script.get("/api/v1/projects/default/tasks"), 401, "bad_token")
    assert login(collector, "dan@example.com", ANN_PW).status_code == 200
    assert {"user.disable", "user.enable"} <= set(audit_actions(root))


def test_changing_my_password_ends_my_other_sessions(signed_in):
    collector, root = signed_in.collector, signed_in.root
    add_user(root, "pat@example.com", role="operator")
    here, there = (collector.api(login(collector, "pat@example.com", ANN_PW).json()["token"]) for _ in range(2))
    script = collector.api(here.post("/api/v1/projects/default/tokens",
                                     json={"name": "cron", "role": "viewer"}).json()["token"])

    new = "pat-new-password-2"
    error(here.post("/api/v1/auth/password", json={"current_password": "wrong-one-1", "new_password": new}),
          401, "bad_credentials")
    error(here.post("/api/v1/auth/password", json={"current_password": ANN_PW, "new_password": "short"}),
          400, "weak_password")
    assert there.get("/api/v1/auth/me").status_code == 200, "a refused change ended a session"
    error(script.post("/api/v1/auth/password", json={"current_password": ANN_PW, "new_password": new}),
          403, "forbidden")

    assert here.post("/api/v1/auth/password", json={"current_password": ANN_PW, "new_password": new}).status_code == 204
    assert here.get("/api/v1/auth/me").status_code == 200
    error(there.get("/api/v1/auth/me"), 401, "session_ended")
    assert script.get("/api/v1/projects/default/tasks").status_code == 200, "API tokens survive a password change"
    error(login(collector, "pat@example.com", ANN_PW), 401, "bad_credentials")
    assert login(collector, "pat@example.com", new).status_code == 200


def test_idle_and_absolute_session_expiry(db_url, tmp_path):
    idle, lifetime = 4, 10
    with running(db_url, tmp_path, Z4J_SESSION_IDLE_S=idle, Z4J_SESSION_MAX_S=lifetime) as c:
        c.first_superuser(ROOT, ROOT_PW)
        resting = c.api(login(c, ROOT, ROOT_PW).json()["token"])
        started = time.monotonic()
        busy = c.api(login(c, ROOT, ROOT_PW).json()["token"])
        # used every half second, a session outlives its idle limit, while one
        # left alone ends; the used one ends too at its absolute lifetime
        last_ok, rested = None, None
        while True:
            reply = busy.get("/api/v1/auth/me")
            if reply.status_code != 200:
                break
            last_ok = time.monotonic() - started
            assert last_ok < lifetime + 5, "the session outlived its absolute lifetime"
            if rested is None and last_ok > idle + 1:
                rested = resting.get("/api/v1/auth/me")
            time.sleep(0.5)
        assert last_ok is not None and last_ok > idle + 1, f"a session in use ended after {last_ok} s"
        assert rested is not None and "idle" in error(rested, 401, "session_expired")
        assert "maximum" in error(reply, 401, "session_expired")
        assert login(c, ROOT, ROOT_PW).status_code == 200


# ------------------------------------------------------------------ API tokens


def test_api_tokens_for_scripts(collector):
    root = collector.api(collector.first_superuser(ROOT, ROOT_PW))
    add_user(root, "ann@example.com", role="operator")
    ann = collector.api(login(collector, "ann@example.com", ANN_PW).json()["token"])
    tokens = "/api/v1/projects/default/tokens"

    error(ann.post(tokens, json={"name": "too-much", "role": "admin"}), 403, "role_too_high")
    for days in (0, 366, -1):
        error(ann.post(tokens, json={"name": "bad", "role": "viewer", "expires_days": days}), 400, "bad_expiry")
    year = ann.post(tokens, json={"name": "yearly", "role": "viewer", "expires_days": 365}).json()
    assert abs(year["expires_at"] - year["created_at"] - 365 * 86400) < 1

    made = ann.post(tokens, json={"name": "deploy", "role": "operator"})
    assert made.status_code == 201, made.text
    token = made.json()
    assert token["token"].startswith("z4jt_") and token["role"] == "operator"
    assert abs(token["expires_at"] - token["created_at"] - 90 * 86400) < 1  # the default
    stored = rows(collector.db_url, "SELECT * FROM api_tokens")
    assert sha256(token["token"]) in {v for r in stored for v in r}
    assert not any(token["token"] in str(v) for r in stored for v in r), "an API token is stored in clear"

    listed = {t["id"]: t for t in ann.get(tokens).json()}
    assert set(listed) == {token["id"], year["id"]}
    assert not any("token" in key and key != "token_id" for t in listed.values() for key in t), listed
    assert listed[token["id"]]["last_used_at"] is None

    script = collector.api(token["token"])
    assert script.get("/api/v1/projects/default/tasks").status_code == 200
    assert script.get("/api/v1/auth/me").json()["via"] == "token"
    error(script.post("/api/v1/projects/default/agents", json={"name": "x"}), 403, "forbidden")  # operator only
    used = {t["id"]: t for t in ann.get(tokens).json()}[token["id"]]
    assert used["last_used_at"] is not None and used["last_used_at"] >= token["created_at"]

    assert ann.delete(f"{tokens}/{token['id']}").status_code == 204
    error(script.get("/api/v1/projects/default/tasks"), 401, "bad_token")
    error(ann.delete(f"{tokens}/{token['id']}"), 404, "not_found")

    brief = ann.post(tokens, json={"name": "brief", "role": "viewer", "expires_days": 1.5 / 86400}).json()
    short = collector.api(brief["token"])
    time.sleep(max(0.0, brief["expires_at"] - time.time()) + 0.2)
    error(short.get("/api/v1/projects/default/tasks"), 401, "token_expired")
    actions = audit_actions(root, "/api/v1/projects/default/audit", action="token.*")
    assert actions.count("token.create") == 3 and actions.count("token.revoke") == 1


# ------------------------------------------------------------------ agent credentials through the API


def agent_for(creds: dict, url: str) -> Agent:
    env = {"Z4J_BRAIN_URL": url, "Z4J_TOKEN": creds["token"], "Z4J_HMAC_SECRET": creds["hmac_secret"],
           "Z4J_PROJECT_ID": creds["project"], "Z4J_AGENT_NAME": creds["name"]}
    return Agent(AgentConfig.from_env(env, backoff_initial=0.2, backoff_max=1.0), engine="bare")


def refusal(url: str, token: str, secret: str) -> tuple[str | None, int | None]:
    raw = RawAgent(url, token, secret).connect()
    try:
        raw.send(raw.hello())
        error_frame, code = raw.refusal()
        return (error_frame.code if error_frame else None), code
    finally:
        raw.close()


def task_ids(api: httpx.Client) -> set[str]:
    return {t["task_id"] for t in api.get("/api/v1/projects/default/tasks", params={"limit": 1000}).json()["tasks"]}


def test_agent_credentials_created_rotated_and_revoked_through_the_api(signed_in):
    collector, root = signed_in.collector, signed_in.root
    made = root.post("/api/v1/projects/default/agents", json={"name": "api-agent"})
    assert made.status_code == 201, made.text
    old = made.json()
    assert old["token"].startswith("z4ja_") and old["hmac_secret"]
    stored = rows(collector.db_url, "SELECT * FROM agents")
    assert p.token_hash(old["token"]) in {v for r in stored for v in r}
    for secret in (old["token"], old["hmac_secret"]):
        assert not any(secret in (v.decode(errors="replace") if isinstance(v, bytes) else str(v))
                       for r in stored for v in r), "an agent secret is stored in clear"
    assert not any("token" in k or "secret" in k for a in root.get("/api/v1/projects/default/agents").json()
                   for k in a)

    agent = agent_for(old, collector.url)
    for i in range(5):
        agent.task(f"before-{i}", "received", name="api.agent")
    assert agent.flush(30), agent.runtime.last_error
    wait_agent_connected(root, "api-agent")
    assert task_ids(root) == {f"before-{i}" for i in range(5)}

    rotated = root.post(f"/api/v1/projects/default/agents/{old['agent_id']}/rotate")
    assert rotated.status_code == 200, rotated.text
    new = rotated.json()
    assert new["token"] != old["token"] and new["hmac_secret"] != old["hmac_secret"]
    wait_agent_connected(root, "api-agent", connected=False)  # the live connection was closed
    wait_until(lambda: agent.runtime.last_error and "unknown agent token" in agent.runtime.last_error,
               what="the old agent to be refused on reconnect")
    agent.stop()
    assert refusal(collector.url, old["token"], old["hmac_secret"]) == ("unknown_token", 4401)
    assert refusal(collector.url, new["token"], old["hmac_secret"]) == ("bad_signature", 4400)  # old secret

    renewed = agent_for(new, collector.url)
    for i in range(3):
        renewed.task(f"after-{i}", "received", name="api.agent")
    assert renewed.flush(30), renewed.runtime.last_error
    wait_agent_connected(root, "api-agent")
    assert {f"after-{i}" for i in range(3)} <= task_ids(root)

    assert root.delete(f"/api/v1/projects/default/agents/{old['agent_id']}").status_code == 204
    wait_agent_connected(root, "api-agent", connected=False)
    renewed.stop()
    assert refusal(collector.url, new["token"], new["hmac_secret"]) == ("revoked", 4403)
    error(root.post(f"/api/v1/projects/default/agents/{old['agent_id']}/rotate"), 409, "revoked")

    log = root.get("/api/v1/projects/default/audit", params={"action": "agent.*"}).json()["entries"]
    assert [(e["action"], e["actor"], e["target"]) for e in log] == [
        (action, ROOT, "agent:api-agent") for action in ("agent.revoke", "agent.rotate", "agent.create")]
