"""The ``z4j`` client's identity commands against a real collector (on one
database: the client only talks to the API; what the server does on each
database is in tests/collector/test_auth.py, test_mail.py, test_rbac.py and
test_audit.py): first-boot setup and login keep the session in the OS keyring or,
where there is none (this machine), a 0600 file that later commands use and
that is refused when others can read it; logout ends it; scripts use
Z4J_URL + Z4J_API_TOKEN; agents, API tokens, invitations and the audit log
through the API; the console's client picks up the stored login."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from subprocess import CompletedProcess

import keyring.backend
import pytest

from tests.collector.test_cli import one_line_failure
from tests.support.collector import Collector, wait_agent_connected, wait_until, z4j
from tests.support.dbs import on_one_db
from z4j_agents.bare import Agent
from z4j_agents.config import AgentConfig

ROOT, ROOT_PW = "root@example.com", "root-password-1"
NO_KEYRING = "keyring.backends.fail.Keyring"


class FileKeyring(keyring.backend.KeyringBackend):
    """A keyring backend (loaded by keyring itself through
    PYTHON_KEYRING_BACKEND) that keeps secrets in $Z4J_TEST_KEYRING: the
    "there is an OS keyring" case on a machine that has none."""

    priority = 1  # type: ignore[assignment]

    def _load(self) -> dict[str, str]:
        path = Path(os.environ["Z4J_TEST_KEYRING"])
        return json.loads(path.read_text()) if path.exists() else {}

    def _save(self, data: dict[str, str]) -> None:
        Path(os.environ["Z4J_TEST_KEYRING"]).write_text(json.dumps(data))

    def get_password(self, service: str, username: str) -> str | None:
        return self._load().get(f"{service}|{username}")

    def set_password(self, service: str, username: str, password: str) -> None:
        self._save({**self._load(), f"{service}|{username}": password})

    def delete_password(self, service: str, username: str) -> None:
        data = self._load()
        data.pop(f"{service}|{username}")
        self._save(data)


class Cli:
    """``z4j`` run as one user on one machine: their own $Z4J_HOME, no
    Z4J_URL or Z4J_API_TOKEN unless given, and no OS keyring unless given."""

    def __init__(self, home: Path, **env: str) -> None:
        self.home = home
        self.env = {"Z4J_HOME": str(home), "Z4J_URL": "", "Z4J_API_TOKEN": "", "Z4J_PROJECT": "",
                    "PYTHON_KEYRING_BACKEND": NO_KEYRING, **env}

    @property
    def credentials(self) -> Path:
        return self.home / "credentials.json"

    def __call__(self, *args: str, input: str | None = None, check: bool = True, **env: str) -> CompletedProcess:
        return z4j(*args, env={**self.env, **env}, input=input, check=check)

    def json(self, *args: str, **kwargs: str) -> object:
        return json.loads(self(*args, "--json", **kwargs).stdout)


def setup_root(cli: Cli, collector: Collector) -> CompletedProcess:
    return cli("setup", "--url", collector.url, "--token", collector.setup_token(), "--email", ROOT,
               "--password-stdin", input=f"{ROOT_PW}\n")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@on_one_db()
def test_login_keeps_the_session_in_a_0600_file_logout_ends_it(collector, tmp_path):
    cli = Cli(tmp_path / "home")
    made = setup_root(cli, collector)
    assert "session token kept in" in made.stderr and str(cli.credentials) in made.stderr, made.stderr
    assert mode(cli.credentials) == 0o600
    assert mode(cli.home) == 0o700

    # a second login of the same user: stored (in the file: no keyring here),
    # said so on stderr, and nothing secret on stdout
    login = cli("login", "--url", collector.url, "--email", ROOT, "--password-stdin", input=f"{ROOT_PW}\n")
    assert login.stdout == ""
    assert login.stderr.count("\n") == 1 and str(cli.credentials) in login.stderr and "no OS keyring" in login.stderr
    stored = json.loads(cli.credentials.read_text())
    assert stored["default_url"] == collector.url
    token = stored["logins"][collector.url]["token"]
    assert token.startswith("z4js_") and mode(cli.credentials) == 0o600

    # later commands need neither --url nor Z4J_API_TOKEN
    me = cli.json("whoami")
    assert (me["user"]["email"], me["via"]) == (ROOT, "session")
    assert [p["slug"] for p in cli.json("projects", "list")] == ["default"]

    # a wrong password is one line, and keeps the stored login
    wrong = cli("login", "--url", collector.url, "--email", ROOT, "--password-stdin", input="not-the-password\n",
                check=False)
    one_line_failure(wrong, "401", "bad_credentials")
    assert json.loads(cli.credentials.read_text())["logins"][collector.url]["token"] == token

    # a credentials file others can read is refused, by every command
    cli.credentials.chmod(0o644)
    for args in (("whoami",), ("login", "--url", collector.url, "--email", ROOT, "--password-stdin")):
        refused = cli(*args, input=f"{ROOT_PW}\n", check=False)
        one_line_failure(refused, str(cli.credentials), "readable by other users", "chmod 600")
    cli.credentials.chmod(0o600)
    assert cli.json("whoami")["user"]["email"] == ROOT

    # logout ends the session on the server and forgets it here
    saved = cli.credentials.read_text()
    out = cli("logout")
    assert "logged out" in out.stderr
    assert collector.url not in json.loads(cli.credentials.read_text()).get("logins", {})
    assert collector.api(token).get("/api/v1/auth/me").status_code == 401
    one_line_failure(cli("whoami", check=False), "401", f"not logged in to {collector.url}", "z4j login")
    one_line_failure(cli("logout", "--url", collector.url, check=False), "not logged in", collector.url)
    # a stale stored session (restored from a backup) says how to get a new one
    cli.credentials.write_text(saved)
    one_line_failure(cli("whoami", check=False), "session expired: run `z4j login")


@on_one_db()
def test_login_uses_the_os_keyring_when_there_is_one(collector, tmp_path):
    ring = tmp_path / "keyring.json"
    cli = Cli(tmp_path / "home", PYTHON_KEYRING_BACKEND=f"{__name__}.FileKeyring", Z4J_TEST_KEYRING=str(ring))
    made = setup_root(cli, collector)
    assert "the OS keyring" in made.stderr, made.stderr
    token = json.loads(ring.read_text())[f"z4j|{collector.url}"]
    assert token.startswith("z4js_")
    assert "z4js_" not in cli.credentials.read_text(), "the token is in the keyring, not the file"
    assert cli.json("whoami")["user"]["email"] == ROOT
    cli("logout")
    assert json.loads(ring.read_text()) == {}
    assert collector.api(token).get("/api/v1/auth/me").status_code == 401


@on_one_db()
def test_scripts_and_api_tokens(collector, tmp_path):
    cli = Cli(tmp_path / "home")
    setup_root(cli, collector)
    created = cli.json("tokens", "create", "--name", "nightly", "--role", "viewer", "--expires-days", "7")
    assert created["token"].startswith("z4jt_") and created["role"] == "viewer"
    plain = cli("tokens", "create", "--name", "export-form", "--role", "operator")
    assert plain.stdout.startswith("export Z4J_API_TOKEN=z4jt_") and "shown once" in plain.stderr

    # a script on another machine: Z4J_URL + Z4J_API_TOKEN, nothing stored
    script = Cli(tmp_path / "script-home", Z4J_URL=collector.url, Z4J_API_TOKEN=created["token"])
    assert script.json("tasks", "list") == []
    assert [(p["slug"], p["role"]) for p in script.json("projects", "list")] == [("default", "viewer")]
    assert not script.credentials.exists()
    # the environment's token wins over a stored login
    assert cli.json("whoami", Z4J_API_TOKEN=created["token"])["via"] == "token"
    # a viewer token cannot mint agents
    one_line_failure(script("agents", "create", "intruder", check=False), "403")

    listed = {t["name"]: t for t in cli.json("tokens", "list")}
    assert set(listed) == {"nightly", "export-form"} and "token" not in listed["nightly"]
    assert listed["nightly"]["last_used_at"] is not None and listed["export-form"]["last_used_at"] is None
    cli("tokens", "revoke", str(created["id"]))
    one_line_failure(script("tasks", "list", check=False), "401")
    assert {t["name"]: t["revoked_at"] is not None for t in cli.json("tokens", "list")} == {
        "nightly": True, "export-form": False}
    one_line_failure(cli("tokens", "revoke", str(created["id"]), check=False), "already revoked")


def exports(stdout: str) -> dict[str, str]:
    lines = stdout.strip().splitlines()
    assert all(line.startswith("export ") for line in lines), stdout
    return dict(line[len("export "):].split("=", 1) for line in lines)


@on_one_db()
def test_agents_created_rotated_and_revoked_from_the_cli(collector, tmp_path):
    cli = Cli(tmp_path / "home")
    setup_root(cli, collector)
    made = cli("agents", "create", "billing-worker")
    assert "shown once" in made.stderr
    env = exports(made.stdout)
    assert env["Z4J_AGENT_NAME"] == "billing-worker" and env["Z4J_PROJECT_ID"] == "default"
    old = Agent(AgentConfig.from_env(env), engine="bare")
    try:
        old.task("t-1", "received", name="billing.charge")
        assert old.flush(30)
        assert [t["task_id"] for t in cli.json("tasks", "list")] == ["t-1"]
        api = collector.api(json.loads(cli.credentials.read_text())["logins"][collector.url]["token"])
        wait_agent_connected(api, "billing-worker")

        rotated = cli.json("agents", "rotate", "billing-worker")
        assert rotated["token"] != env["Z4J_TOKEN"] and rotated["hmac_secret"] != env["Z4J_HMAC_SECRET"]
        # the old credentials are cut off and cannot reconnect
        wait_until(lambda: old.runtime.last_error and "unknown" in old.runtime.last_error,
                   what="the old credentials refused")
        old.task("t-2", "received", name="billing.charge")
        new = Agent(AgentConfig.from_env({**env, "Z4J_TOKEN": rotated["token"],
                                          "Z4J_HMAC_SECRET": rotated["hmac_secret"]}), engine="bare")
        try:
            new.task("t-3", "received", name="billing.charge")
            assert new.flush(30)
            assert {t["task_id"] for t in cli.json("tasks", "list")} == {"t-1", "t-3"}
            agents = cli.json("agents", "list")
            assert [(a["name"], a["connected"]) for a in agents] == [("billing-worker", True)]

            cli("agents", "revoke", str(agents[0]["id"]))
            wait_until(lambda: new.runtime.last_error and "revoked" in new.runtime.last_error,
                       what="the revoked agent refused")
        finally:
            new.stop()
    finally:
        old.stop()
    one_line_failure(cli("agents", "rotate", "billing-worker", check=False), "409", "revoked")
    one_line_failure(cli("agents", "revoke", "nobody", check=False), "no agent", "nobody")


@on_one_db()
def test_invitations_members_users_and_the_audit_log(collector, tmp_path):
    root = Cli(tmp_path / "root-home")
    setup_root(root, collector)
    invited = root("users", "invite", "ann@example.com", "--role", "operator")
    accept_line = invited.stdout.strip()
    assert accept_line.startswith(f"z4j accept-invite --url {collector.url} z4ji_"), invited.stdout
    assert "not e-mailed" in invited.stderr

    # Ann, on her own machine, runs the line she was sent and is logged in
    ann = Cli(tmp_path / "ann-home")
    joined = ann(*accept_line.split()[1:], "--password-stdin", input="ann-password-1\n")
    assert "joined default as operator" in joined.stderr and mode(ann.credentials) == 0o600
    assert [(p["slug"], p["role"]) for p in ann.json("projects", "list")] == [("default", "operator")]
    # the invitation worked once
    one_line_failure(ann(*accept_line.split()[1:], "--password-stdin", input="x\n", check=False), "invitation")
    # operators may not manage members or users
    one_line_failure(ann("members", "list", check=False), "403")
    one_line_failure(ann("users", "list", check=False), "403")

    members = {m["email"]: m["role"] for m in root.json("members", "list")}
    assert members == {ROOT: "owner", "ann@example.com": "operator"}
    root("members", "set", "ann@example.com", "viewer")
    assert ann.json("projects", "list")[0]["role"] == "viewer"

    # users (superuser): create, disable (her session stops working), enable
    root("users", "create", "bob@example.com", "--password-stdin", input="bob-password-1\n")
    assert {u["email"] for u in root.json("users", "list")} == {ROOT, "ann@example.com", "bob@example.com"}
    assert root.json("users", "disable", "ann@example.com")["disabled_at"] is not None
    one_line_failure(ann("whoami", check=False), "session expired")  # disabling ended her sessions
    root("users", "enable", "ann@example.com")
    ann("login", "--url", collector.url, "--email", "ann@example.com", "--password-stdin", input="ann-password-1\n")
    assert ann.json("whoami")["user"]["email"] == "ann@example.com"
    # sessions: Ann ends the one she is using; the next command says so
    mine = ann.json("sessions", "list")
    current = next(s for s in mine if s["current"])
    ann("sessions", "revoke", str(current["id"]))
    one_line_failure(ann("whoami", check=False), "session expired: run `z4j login")
    root("members", "remove", "ann@example.com")
    assert [m["email"] for m in root.json("members", "list")] == [ROOT]

    # the audit log shows all of it, newest first, with the filters
    actions = [e["action"] for e in root.json("audit", "list")]
    for action in ("invitation.create", "invitation.accept", "member.role", "member.remove"):
        assert action in actions, (action, actions)
    assert actions.index("member.remove") < actions.index("invitation.accept") < actions.index("invitation.create")
    only = root.json("audit", "list", "--action", "invitation.*", "--actor", ROOT)
    assert [e["action"] for e in only] == ["invitation.create"]
    assert root.json("audit", "list", "--limit", "1")[0]["action"] == "member.remove"
    instance = [e["action"] for e in root.json("audit", "list", "--instance")]
    assert {"user.create", "user.disable", "user.enable"} <= set(instance), instance
    table = root("audit", "list", COLUMNS="200").stdout
    assert "invitation.create" in table and ROOT in table
    one_line_failure(root("audit", "list", "--since", "someday", check=False), "since")


@on_one_db()
def test_the_console_picks_up_the_stored_login(collector, tmp_path, monkeypatch):
    from z4j_tui.client import Client
    from z4j_tui.config import ConfigError, Settings

    cli = Cli(tmp_path / "home")
    setup_root(cli, collector)
    environ = {"Z4J_HOME": str(cli.home)}
    settings = Settings.from_args([], environ)
    assert settings.url == collector.url and settings.token.startswith("z4js_")
    for key, value in environ.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("Z4J_URL", raising=False)
    monkeypatch.delenv("Z4J_API_TOKEN", raising=False)
    client = Client()
    try:
        assert client.url == collector.url
        assert client.me()["user"]["email"] == ROOT
        assert client.list_tasks("default")["tasks"] == []
    finally:
        client.close()

    cli("logout")
    with pytest.raises(ConfigError, match="z4j login"):
        Settings.from_args([], environ)


@on_one_db()
def test_first_boot_and_password_reset_from_the_cli(collector, tmp_path):
    cli = Cli(tmp_path / "home")
    bad = cli("setup", "--url", collector.url, "--token", "z4ju_" + "x" * 43, "--email", ROOT, "--password-stdin",
              input=f"{ROOT_PW}\n", check=False)
    one_line_failure(bad, "401", "setup token")
    assert not cli.credentials.exists(), "a refused setup stored something"
    setup_root(cli, collector)
    one_line_failure(setup_root_again(cli, collector), "401")

    asked = cli("forgot-password", "--url", collector.url, "--email", "nobody@example.com")
    same = cli("forgot-password", "--url", collector.url, "--email", ROOT)
    assert asked.stderr == same.stderr and "reset link" in asked.stderr
    one_line_failure(cli("reset-password", "z4jr_" + "y" * 43, "--url", collector.url, "--password-stdin",
                         input="a-new-password-1\n", check=False), "401", "reset")
    # no terminal and no --password-stdin: one line, nothing asked
    one_line_failure(cli("login", "--url", collector.url, "--email", ROOT, check=False, input=""), "--password-stdin")
    one_line_failure(cli("login", "--url", "ftp://example.com", "--email", ROOT, "--password-stdin",
                         input=f"{ROOT_PW}\n", check=False), "http://")


def setup_root_again(cli: Cli, collector: Collector) -> CompletedProcess:
    return cli("setup", "--url", collector.url, "--token", collector.setup_token(), "--email", "eve@example.com",
               "--password-stdin", input="eve-password-1\n", check=False)


def test_a_stored_login_is_sent_only_to_its_own_collector(tmp_path, monkeypatch):
    """The token stored for one URL never goes to another server (a real
    HTTP server on loopback records what it is sent)."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from z4j_tui import credentials
    from z4j_tui.client import Client

    seen: list[str | None] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            seen.append(self.headers.get("Authorization"))
            body = b'{"user": null, "token": "x", "projects": []}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    other = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setenv("Z4J_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", NO_KEYRING)
    monkeypatch.delenv("Z4J_URL", raising=False)
    monkeypatch.delenv("Z4J_API_TOKEN", raising=False)
    try:
        credentials.save("http://127.0.0.1:1", "z4js_for-another-collector", ROOT)
        for url in (other, None):  # no login for it yet; then logged in, and it is the default URL
            client = Client(url)
            client.me()
            client.close()
            credentials.save(other, "z4js_for-this-one", ROOT)
        assert seen == [None, "Bearer z4js_for-this-one"]
    finally:
        server.shutdown()
        server.server_close()
