"""Must show: invitation and password-reset e-mails arrive at a real SMTP
server on loopback; their tokens work once and never twice; expired ones are
refused. Without SMTP (or with it down) invitations still hand back the link."""

from __future__ import annotations

import re
import time
from types import SimpleNamespace

import httpx
import pytest

from tests.collector.test_auth import ANN_PW, ROOT, ROOT_PW, add_user, audit_actions, error, login, rows, sha256
from tests.support.collector import module_collector, running, wait_until
from tests.support.dbs import DBS
from tests.support.servers import free_port
from tests.support.smtp import SmtpServer

SENDER = "z4j@example.com"
INVITATIONS = "/api/v1/projects/default/invitations"
CARL, CARL_PW = "carl@example.com", "carl-password-1"


@pytest.fixture
def smtp():
    with SmtpServer() as server:
        yield server


@pytest.fixture(scope="module", params=DBS, ids=DBS)
def mailer(request, tmp_path_factory):
    """One collector per database that mails through one SMTP server, and its
    superuser's API, shared by the tests that need no other settings (one
    worker runs them in file order); each uses users and addresses of its own."""
    smtp = SmtpServer().start()
    request.addfinalizer(smtp.stop)
    collector = module_collector(request, tmp_path_factory, "mail", **smtp.collector_env(SENDER))
    return SimpleNamespace(collector=collector, smtp=smtp, root=collector.api(collector.first_superuser(ROOT, ROOT_PW)))


def token_in(message, prefix: str) -> str:
    found = set(re.findall(rf"\b{prefix}_[A-Za-z0-9_-]{{40,}}", message.get_content()))
    assert len(found) == 1, f"expected one {prefix} token in the mail: {message.get_content()}"
    return found.pop()


def accept(c, token: str, password: str | None = None) -> httpx.Response:
    body = {"token": token} if password is None else {"token": token, "password": password}
    return c.api().post("/api/v1/invitations/accept", json=body)


def test_invitation_mail_and_its_token_work_once(mailer):
    c, smtp, root = mailer.collector, mailer.smtp, mailer.root
    add_user(root, "adam@example.com", role="admin")
    admin = c.api(login(c, "adam@example.com", ANN_PW).json()["token"])

    error(admin.post(INVITATIONS, json={"email": "new@example.com", "role": "owner"}), 403, "forbidden")
    denied = root.get("/api/v1/projects/default/audit", params={"action": "invitation.create", "outcome": "denied"})
    assert [(e["actor"], e["detail"]["role"]) for e in denied.json()["entries"]] == [("adam@example.com", "owner")]
    made = admin.post(INVITATIONS, json={"email": "New@Example.com", "role": "operator"})
    assert made.status_code == 201, made.text
    invitation = made.json()
    assert invitation["emailed"] is True and invitation["email"] == "new@example.com"

    mail = smtp.wait_for("new@example.com")
    assert mail["From"] == SENDER and mail["To"] == "new@example.com"
    assert "invitation" in mail["Subject"] and "default" in mail["Subject"]
    assert mail["Date"] and mail["Message-ID"]
    token = token_in(mail, "z4ji")
    assert token == invitation["token"]
    stored = rows(c.db_url, "SELECT * FROM invitations")
    assert sha256(token) in {v for r in stored for v in r}
    assert not any(token in str(v) for r in stored for v in r), "an invitation token is stored in clear"

    offer = c.api().get(f"/api/v1/invitations/{token}").json()
    assert (offer["email"], offer["role"], offer["project"], offer["existing_user"]) == (
        "new@example.com", "operator", "default", False)
    error(accept(c, token), 400, "weak_password")  # a new user must choose a password
    error(accept(c, token, "short"), 400, "weak_password")

    joined = accept(c, token, "new-user-password-1")
    assert joined.status_code == 201, joined.text
    assert joined.json()["created_user"] is True and joined.json()["role"] == "operator"
    me = c.api(joined.json()["token"]).get("/api/v1/auth/me").json()
    assert me["user"]["email"] == "new@example.com"
    assert [(p["slug"], p["role"]) for p in me["projects"]] == [("default", "operator")]

    error(accept(c, token, "another-password-2"), 401, "bad_invitation")  # never twice
    error(c.api().get(f"/api/v1/invitations/{token}"), 401, "bad_invitation")
    assert login(c, "new@example.com", "new-user-password-1").status_code == 200
    error(login(c, "new@example.com", "another-password-2"), 401, "bad_credentials")

    # a revoked invitation is refused
    other = admin.post(INVITATIONS, json={"email": "late@example.com", "role": "viewer"}).json()
    assert admin.delete(f"{INVITATIONS}/{other['id']}").status_code == 204
    error(accept(c, other["token"], "late-password-1"), 401, "bad_invitation")

    actions = audit_actions(root, "/api/v1/projects/default/audit", action="invitation.*")
    assert sorted(actions) == ["invitation.accept", "invitation.create", "invitation.create",
                               "invitation.create", "invitation.revoke"]  # one of them the denied one


def test_an_existing_user_joins_without_changing_their_password(mailer):
    c, smtp, root = mailer.collector, mailer.smtp, mailer.root
    assert root.post("/api/v1/projects/", json={"slug": "billing"}).status_code == 201
    add_user(root, "bob@example.com", role="viewer")  # in default, not in billing
    bob = c.api(login(c, "bob@example.com", ANN_PW).json()["token"])

    made = root.post("/api/v1/projects/billing/invitations", json={"email": "bob@example.com", "role": "admin"})
    assert made.status_code == 201 and made.json()["emailed"] is True, made.text
    token = token_in(smtp.wait_for("bob@example.com"), "z4ji")
    assert c.api().get(f"/api/v1/invitations/{token}").json()["existing_user"] is True

    joined = accept(c, token, "not-his-password-9")  # a password sent along changes nothing
    assert joined.status_code == 200, joined.text
    assert joined.json()["created_user"] is False and "token" not in joined.json()
    assert {(p["slug"], p["role"]) for p in bob.get("/api/v1/auth/me").json()["projects"]} == {
        ("default", "viewer"), ("billing", "admin")}
    assert login(c, "bob@example.com", ANN_PW).status_code == 200
    error(login(c, "bob@example.com", "not-his-password-9"), 401, "bad_credentials")
    error(accept(c, token), 401, "bad_invitation")


def test_password_reset_mail_ends_every_session_and_token(mailer):
    c, smtp, root = mailer.collector, mailer.smtp, mailer.root
    add_user(root, "ann@example.com", role="operator")
    sessions = [c.api(login(c, "ann@example.com", ANN_PW).json()["token"]) for _ in range(2)]
    script = c.api(sessions[0].post("/api/v1/projects/default/tokens",
                                    json={"name": "cron", "role": "viewer"}).json()["token"])
    assert script.get("/api/v1/projects/default/tasks").status_code == 200

    anon = c.api()
    unknown = anon.post("/api/v1/auth/password-reset", json={"email": "nobody@example.com"})
    known = anon.post("/api/v1/auth/password-reset", json={"email": "Ann@Example.com"})
    assert (unknown.status_code, unknown.json()) == (known.status_code, known.json())
    assert known.status_code == 202
    mail = smtp.wait_for("ann@example.com")
    assert smtp.messages_to("nobody@example.com") == []
    assert "reset" in mail["Subject"] and mail["From"] == SENDER
    token = token_in(mail, "z4jr")
    stored = rows(c.db_url, "SELECT * FROM password_resets")
    assert sha256(token) in {v for r in stored for v in r}
    assert not any(token in str(v) for r in stored for v in r), "a reset token is stored in clear"
    assert all(s.get("/api/v1/auth/me").status_code == 200 for s in sessions), "asking ended something"

    complete = "/api/v1/auth/password-reset/complete"
    error(anon.post(complete, json={"token": token, "password": "short"}), 400, "weak_password")
    error(anon.post(complete, json={"token": "z4jr_" + "x" * 43, "password": "ann-new-password"}), 401,
          "bad_reset_token")
    assert anon.post(complete, json={"token": token, "password": "ann-new-password"}).status_code == 204

    for s in sessions:
        error(s.get("/api/v1/auth/me"), 401, "session_ended")
    error(script.get("/api/v1/projects/default/tasks"), 401, "bad_token")
    error(login(c, "ann@example.com", ANN_PW), 401, "bad_credentials")
    assert login(c, "ann@example.com", "ann-new-password").status_code == 200
    error(anon.post(complete, json={"token": token, "password": "ann-third-password"}), 401, "bad_reset_token")
    assert login(c, "ann@example.com", "ann-new-password").status_code == 200
    assert root.get("/api/v1/auth/me").status_code == 200, "another user's session ended"
    assert {"user.password_reset_request", "user.password_reset"} <= set(audit_actions(root))


def test_a_completed_reset_voids_the_other_reset_links(mailer):
    c, smtp = mailer.collector, mailer.smtp
    # carl, not root: the module's other tests go on with root's session, which a reset would end
    add_user(mailer.root, CARL, CARL_PW)
    for _ in range(2):
        assert c.api().post("/api/v1/auth/password-reset", json={"email": CARL}).status_code == 202
    first, second = (token_in(smtp.wait_for(CARL, count=n), "z4jr") for n in (1, 2))
    complete = "/api/v1/auth/password-reset/complete"
    assert c.api().post(complete, json={"token": second, "password": "carl-new-password"}).status_code == 204
    error(c.api().post(complete, json={"token": first, "password": "carl-other-password"}), 401,
          "bad_reset_token")
    assert login(c, CARL, "carl-new-password").status_code == 200


def test_expired_invitations_and_reset_tokens_are_refused(db_url, tmp_path, smtp):
    with running(db_url, tmp_path, Z4J_INVITE_TTL_S=2, Z4J_RESET_TTL_S=2, **smtp.collector_env(SENDER)) as c:
        root = c.api(c.first_superuser(ROOT, ROOT_PW))
        invitation = root.post(INVITATIONS, json={"email": "slow@example.com", "role": "viewer"}).json()
        assert invitation["emailed"] is True
        brief = root.post(INVITATIONS, json={"email": "slower@example.com", "role": "viewer",
                                             "expires_hours": 1 / 3600}).json()
        assert c.api().post("/api/v1/auth/password-reset", json={"email": ROOT}).status_code == 202
        reset = token_in(smtp.wait_for(ROOT), "z4jr")
        reset_expired_by = time.monotonic() + 2.5  # the token existed before its mail was sent
        invited = token_in(smtp.wait_for("slow@example.com"), "z4ji")
        assert invited == invitation["token"]

        wait_until(lambda: c.api().get(f"/api/v1/invitations/{invited}").status_code == 401, timeout=10,
                   what="the invitation to expire")
        # The reset was asked for after the invitation was made: it may outlive it by that much.
        time.sleep(max(0.0, reset_expired_by - time.monotonic()))
        error(accept(c, invited, "slow-password-1"), 401, "bad_invitation")
        error(accept(c, brief["token"], "slow-password-1"), 401, "bad_invitation")
        error(c.api().post("/api/v1/auth/password-reset/complete", json={"token": reset, "password": "new-root-pw-1"}),
              401, "bad_reset_token")
        assert login(c, ROOT, ROOT_PW).status_code == 200
        error(login(c, "slow@example.com", "slow-password-1"), 401, "bad_credentials")


def test_without_smtp_an_invitation_hands_back_its_link(collector):
    root = collector.api(collector.first_superuser(ROOT, ROOT_PW))
    made = root.post(INVITATIONS, json={"email": "eve@example.com", "role": "viewer"})
    assert made.status_code == 201, made.text
    invitation = made.json()
    assert invitation["emailed"] is False
    assert invitation["url"] == f"{collector.url}/api/v1/invitations/{invitation['token']}"
    assert httpx.get(invitation["url"], timeout=30).json()["email"] == "eve@example.com"
    assert accept(collector, invitation["token"], "eve-password-1").status_code == 201
    reset = collector.api().post("/api/v1/auth/password-reset", json={"email": "eve@example.com"})
    assert reset.status_code == 202


def test_an_unreachable_smtp_server_does_not_fail_the_invitation(db_url, tmp_path):
    dead = {"Z4J_SMTP_HOST": "127.0.0.1", "Z4J_SMTP_PORT": str(free_port()), "Z4J_SMTP_FROM": SENDER,
            "Z4J_SMTP_SECURITY": "none"}
    with running(db_url, tmp_path, **dead) as c:
        root = c.api(c.first_superuser(ROOT, ROOT_PW))
        made = root.post(INVITATIONS, json={"email": "eve@example.com", "role": "viewer"})
        assert made.status_code == 201, made.text
        assert made.json()["emailed"] is False
        wait_until(lambda: "could not send" in c.log_path.read_text(), what="a log line about the mail")
        line = next(x for x in c.log_path.read_text().splitlines() if "could not send" in x)
        assert "eve@example.com" in line and dead["Z4J_SMTP_PORT"] in line
        assert accept(c, made.json()["token"], "eve-password-1").status_code == 201


def test_reset_requests_cannot_flood_a_mailbox(mailer):
    """Past three open reset links per account, requests answer the same and send nothing."""
    from z4j_collector.services.membership import MAX_OPEN_RESETS

    c, smtp, root = mailer.collector, mailer.smtp, mailer.root
    dora = add_user(root, "dora@example.com", role="viewer")
    anon = c.api()
    answers = [anon.post("/api/v1/auth/password-reset", json={"email": "dora@example.com"})
               for _ in range(MAX_OPEN_RESETS + 3)]
    assert {(a.status_code, a.text) for a in answers} == {(202, answers[0].text)}
    wait_until(lambda: len(smtp.messages_to("dora@example.com")) >= MAX_OPEN_RESETS, what="reset mails")
    assert len(rows(c.db_url, f"SELECT id FROM password_resets WHERE user_id = {dora}")) == MAX_OPEN_RESETS
    assert len(smtp.messages_to("dora@example.com")) == MAX_OPEN_RESETS
    # The links that went out still work.
    token = token_in(smtp.messages_to("dora@example.com")[0], "z4jr")
    done = anon.post("/api/v1/auth/password-reset/complete", json={"token": token, "password": "dora-new-password"})
    assert done.status_code == 204, done.text
