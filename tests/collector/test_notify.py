"""Notification channels on a real collector (both databases): CRUD through
the API with secrets masked and every change audited, bad input refused with
nothing changed, the "send test" action reaching a local HTTP receiver on
loopback (allowlisted with Z4J_OUTBOUND_ALLOW) with Slack, Telegram and
signed webhook payloads, and a real SMTP server for e-mail; retries, the
delivery log, refusals through the API (a name resolving to loopback, a
redirect), RBAC, and the `z4j notify` CLI (a client of that API: on one
database, tests/support/dbs.py)."""

from __future__ import annotations

import hashlib
import hmac
import json

import pytest

from tests.support.collector import mint_tokens, module_collector, z4j
from tests.support.dbs import DBS, on_one_db
from tests.support.receiver import Receiver
from tests.support.smtp import SmtpServer

BASE = "/api/v1/projects/default/notifications"
SECRET = "s3cret-" + "x" * 20
BOT = "123456:AAbbCC-dd_ee"


@pytest.fixture(scope="module", params=DBS, ids=DBS)
def env(request, tmp_path_factory):
    rx = Receiver().start()
    request.addfinalizer(rx.stop)
    smtp = SmtpServer().start()
    request.addfinalizer(smtp.stop)
    collector = module_collector(request, tmp_path_factory, "notify", Z4J_OUTBOUND_ALLOW=f"127.0.0.1:{rx.port}",
                                 **smtp.collector_env())
    tokens = mint_tokens(collector, "viewer", "operator", "admin")
    apis = {role: collector.api(token) for role, token in tokens.items()}
    return {"collector": collector, "rx": rx, "smtp": smtp, "tokens": tokens, **apis}


def create(api, kind, name, config, status=201):
    reply = api.post(f"{BASE}/channels", json={"kind": kind, "name": name, "config": config})
    assert reply.status_code == status, reply.text
    return reply.json()


def send_test(api, channel_id):
    reply = api.post(f"{BASE}/channels/{channel_id}/test")
    assert reply.status_code == 200, reply.text
    return reply.json()


def audit(api, action):
    return api.get("/api/v1/projects/default/audit", params={"action": action}).raise_for_status().json()["entries"]


def test_channels_crud_masked_audited_and_refusals(env):
    admin, viewer, rx = env["admin"], env["viewer"], env["rx"]
    hook = create(admin, "webhook", "crud-hook", {"url": rx.url("/crud?token=abc"), "secret": SECRET})
    assert hook["config"] == {"url": f"{rx.url('/crud')}?********", "secret": "********"}
    slack = create(admin, "slack", "crud-slack", {"webhook_url": rx.url("/services/T0/B0/XYZ")})
    assert slack["config"]["webhook_url"] == f"http://127.0.0.1:{rx.port}/********"
    tg = create(admin, "telegram", "crud-tg", {"bot_token": BOT, "chat_id": -1001, "api_base": rx.url()})
    assert tg["config"]["bot_token"] == "********" and tg["config"]["chat_id"] == "-1001"
    listed = viewer.get(f"{BASE}/channels").raise_for_status().text
    assert SECRET not in listed and BOT not in listed and "XYZ" not in listed and "abc" not in listed
    assert {"crud-hook", "crud-slack", "crud-tg"} <= {c["name"] for c in json.loads(listed)}

    # bad input: one-line reason, nothing changed
    bad = [
        ("webhook", "b1", {"url": rx.url("/x"), "secret": "short"}, "secret must be a string of 16"),
        ("webhook", "b2", {"url": rx.url("/x")}, "needs secret"),
        ("webhook", "b3", {"url": "ftp://example.com/", "secret": SECRET}, "only http and https"),
        ("webhook", "b4", {"url": "http://10.0.0.1/hook", "secret": SECRET}, "10.0.0.1 is a private address"),
        ("webhook", "b5", {"url": "http://169.254.169.254/latest", "secret": SECRET}, "metadata"),
        ("slack", "b6", {"webhook_url": "http://[::ffff:127.0.0.1]/x"}, "IPv4-mapped"),
        ("email", "b7", {"to": ["not-an-address"]}, "is not an e-mail address"),
        ("sms", "b8", {}, "kind must be one of"),
        ("webhook", "b9", {"url": rx.url("/x"), "secret": SECRET, "extra": 1}, "unknown webhook config field"),
        ("webhook", "crud-hook", {"url": rx.url("/x"), "secret": SECRET}, "already exists"),
    ]
    before = admin.get(f"{BASE}/channels").json()
    for kind, name, config, reason in bad:
        reply = admin.post(f"{BASE}/channels", json={"kind": kind, "name": name, "config": config})
        assert reply.status_code in (400, 409), reply.text
        message = reply.json()["message"]
        assert reason in message and "\n" not in message, message
    assert admin.get(f"{BASE}/channels").json() == before

    # a change may leave the secret out, or send the mask back: the stored one stays
    changed = admin.patch(f"{BASE}/channels/{hook['id']}",
                          json={"config": {"url": rx.url("/crud2"), "secret": "********"}, "enabled": False})
    assert changed.status_code == 200, changed.text
    assert changed.json()["config"]["url"] == rx.url("/crud2") and changed.json()["enabled"] is False
    reply = admin.patch(f"{BASE}/channels/{hook['id']}", json={"kind": "slack"})
    assert reply.status_code == 400 and "kind cannot change" in reply.json()["message"]
    admin.patch(f"{BASE}/channels/{hook['id']}", json={"enabled": True}).raise_for_status()
    delivery = send_test(env["operator"], hook["id"])
    assert delivery["status"] == "sent", delivery
    got = rx.requests("/crud2")[-1]
    assert got.headers["X-Z4J-Signature"] == "sha256=" + hmac.new(
        SECRET.encode(), got.headers["X-Z4J-Timestamp"].encode() + b"." + got.body, hashlib.sha256).hexdigest()

    assert admin.delete(f"{BASE}/channels/{slack['id']}").status_code == 204
    assert admin.get(f"{BASE}/channels/{slack['id']}").status_code == 404

    entries = audit(admin, "notify.*")
    actions = [(e["action"], e["target"]) for e in entries]
    for expected in [("notify.channel.create", "channel:crud-hook"), ("notify.channel.update", "channel:crud-hook"),
                     ("notify.channel.delete", "channel:crud-slack"), ("notify.channel.test", "channel:crud-hook")]:
        assert expected in actions, actions
    dumped = json.dumps(entries)
    assert SECRET not in dumped and BOT not in dumped and "XYZ" not in dumped


def test_send_test_delivers_every_kind(env):
    admin, operator, rx, smtp = env["admin"], env["operator"], env["rx"], env["smtp"]
    hook = create(admin, "webhook", "hook", {"url": rx.url("/hook"), "secret": SECRET})
    slack = create(admin, "slack", "slack", {"webhook_url": rx.url("/services/T1/B1/abc")})
    tg = create(admin, "telegram", "tg", {"bot_token": BOT, "chat_id": "42", "api_base": rx.url("/tg")})
    mail = create(admin, "email", "mail", {"to": ["oncall@example.com", "lead@example.com"]})
    for channel in (hook, slack, tg, mail):
        delivery = send_test(operator, channel["id"])
        assert delivery["status"] == "sent" and delivery["attempts"] == 1 and delivery["error"] is None, delivery

    got = rx.requests("/hook")[-1]
    timestamp, signature = got.headers["X-Z4J-Timestamp"], got.headers["X-Z4J-Signature"]
    expected = hmac.new(SECRET.encode(), f"{timestamp}.".encode() + got.body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(signature, f"sha256={expected}")
    body = got.json()
    assert body["channel"] == "hook" and body["source"] == "test" and body["title"].startswith("z4j test")
    assert body["fields"]["project"] == "default" and got.headers["Content-Type"] == "application/json"

    assert "z4j test notification" in rx.requests("/services/T1/B1/abc")[-1].json()["text"]
    sent = rx.requests(f"/tg/bot{BOT}/sendMessage")[-1].json()
    assert sent["chat_id"] == "42" and "z4j test notification" in sent["text"]

    message = smtp.wait_for("lead@example.com")
    assert message["Subject"].startswith("[z4j] z4j test notification") and "project default" in message.get_content()
    assert smtp.messages_to("oncall@example.com")

    log = env["viewer"].get(f"{BASE}/deliveries", params={"status": "sent"}).raise_for_status().json()
    assert {hook["id"], slack["id"], tg["id"], mail["id"]} <= {d["channel_id"] for d in log}
    assert all(d["finished_at"] for d in log)


def test_retries_refusals_and_the_log(env):
    admin, operator, rx = env["admin"], env["operator"], env["rx"]
    rx.script("/flaky", 500, times=1)
    flaky = create(admin, "webhook", "flaky", {"url": rx.url("/flaky"), "secret": SECRET})
    delivery = send_test(operator, flaky["id"])
    assert delivery["status"] == "sent" and delivery["attempts"] == 2, delivery
    assert len(rx.requests("/flaky")) == 2

    # a name that resolves to loopback is not the allowlisted 127.0.0.1:port entry
    before = len(rx.requests())
    local = create(admin, "webhook", "by-name", {"url": f"http://localhost:{rx.port}/by-name", "secret": SECRET})
    delivery = send_test(operator, local["id"])
    assert delivery["status"] == "refused" and delivery["attempts"] == 1, delivery
    assert "localhost resolves to" in delivery["error"] and "loopback" in delivery["error"]
    assert len(rx.requests()) == before

    # a redirect (to loopback) from the allowlisted receiver is not followed
    with Receiver() as inner:
        rx.script("/moved", 302, headers={"Location": inner.url("/inside")})
        moved = create(admin, "slack", "moved", {"webhook_url": rx.url("/moved")})
        delivery = send_test(operator, moved["id"])
        assert delivery["status"] == "failed" and "redirects are not followed" in delivery["error"], delivery
        assert delivery["attempts"] == 1 and inner.requests() == []

    refused = env["viewer"].get(f"{BASE}/deliveries", params={"status": "refused"}).json()
    assert [d["channel_name"] for d in refused] == ["by-name"]
    one = env["viewer"].get(f"{BASE}/deliveries", params={"channel_id": flaky["id"]}).json()
    assert len(one) == 1 and one[0]["attempts"] == 2
    tests = [e for e in audit(admin, "notify.channel.test") if e["target"] == "channel:by-name"]
    assert tests and tests[0]["outcome"] == "failed" and tests[0]["detail"]["status"] == "refused"
    assert env["viewer"].get(f"{BASE}/deliveries", params={"status": "lost"}).status_code == 400

    # /metrics counts the delivery log by channel kind and status
    from prometheus_client.parser import text_string_to_metric_families

    log = env["viewer"].get(f"{BASE}/deliveries", params={"limit": 1000}).raise_for_status().json()
    expected: dict[tuple[str, str], int] = {}
    for d in log:
        expected[(d["kind"], d["status"])] = expected.get((d["kind"], d["status"]), 0) + 1
    scrape = env["collector"].api().get("/metrics").raise_for_status().text
    family = next(f for f in text_string_to_metric_families(scrape) if f.name == "z4j_notification_deliveries")
    assert {(s.labels["kind"], s.labels["status"]): int(s.value) for s in family.samples
            if s.labels["project"] == "default"} == expected


def test_rbac(env):
    viewer, operator, admin, rx = env["viewer"], env["operator"], env["admin"], env["rx"]
    channel = create(admin, "webhook", "rbac", {"url": rx.url("/rbac"), "secret": SECRET})
    body = {"kind": "webhook", "name": "nope", "config": {"url": rx.url("/x"), "secret": SECRET}}
    for api in (viewer, operator):
        assert api.post(f"{BASE}/channels", json=body).status_code == 403
        assert api.patch(f"{BASE}/channels/{channel['id']}", json={"enabled": False}).status_code == 403
        assert api.delete(f"{BASE}/channels/{channel['id']}").status_code == 403
    assert viewer.post(f"{BASE}/channels/{channel['id']}/test").status_code == 403
    assert viewer.get(f"{BASE}/channels/{channel['id']}").status_code == 200
    assert viewer.get(f"{BASE}/deliveries").status_code == 200
    assert env["collector"].api().get(f"{BASE}/channels").status_code == 401
    assert operator.post(f"{BASE}/channels/{channel['id']}/test").json()["status"] == "sent"


@on_one_db("env")
def test_cli(env):
    collector, rx = env["collector"], env["rx"]
    cli_env = {"Z4J_API_TOKEN": env["tokens"]["admin"], "Z4J_URL": collector.url, "Z4J_NOTIFY_SECRET": SECRET}
    out = z4j("notify", "channels", "create", "webhook", "cli-hook", "--target", rx.url("/cli"), "--json",
              env=cli_env)
    assert json.loads(out.stdout)["config"]["secret"] == "********"
    out = z4j("notify", "channels", "test", "cli-hook", env=cli_env)
    assert "test message sent on cli-hook" in out.stdout and rx.requests("/cli")
    listed = z4j("notify", "channels", "list", env=cli_env).stdout
    assert "cli-hook" in listed and SECRET not in listed
    bad = z4j("notify", "channels", "create", "email", "cli-bad", "--to", "nobody", env=cli_env, check=False)
    assert bad.returncode != 0 and "is not an e-mail address" in bad.stderr
    z4j("notify", "channels", "delete", "cli-hook", env=cli_env)
    assert "cli-hook" not in z4j("notify", "channels", "list", env=cli_env).stdout
