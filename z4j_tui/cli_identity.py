"""``z4j`` commands for who you are and who may do what: login, logout, first
boot, invitations, password reset; users, members, projects, API tokens,
sessions. Everything goes through the collector's API under its RBAC."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from z4j_tui import credentials
from z4j_tui.cli_common import (
    CliError, JsonOption, PasswordStdinOption, ProjectOption, UrlOption, done, note, pick, print_json, read_password,
    table, when,
)
from z4j_tui.client import Client, ClientError

EmailOption = Annotated[str, typer.Option("--email", help="Your e-mail address (your login)")]
UserArgument = Annotated[str, typer.Argument(help="User e-mail or id")]

users_app = typer.Typer(help="Users of the instance (superusers) and invitations (project admins).",
                        no_args_is_help=True)
members_app = typer.Typer(help="Members of a project and their roles (admins).", no_args_is_help=True)
projects_app = typer.Typer(help="Projects.", no_args_is_help=True)
tokens_app = typer.Typer(help="Your API tokens for scripts (admins: everyone's).", no_args_is_help=True)
sessions_app = typer.Typer(help="Login sessions.", no_args_is_help=True)


def _keep(url: str, result: dict[str, Any], email: str, as_json: bool) -> None:
    """Store a new session token like `z4j login` does, and say where it went."""
    where = credentials.save(url, result["token"], result.get("user", {}).get("email") or email)
    note(f"logged in to {url} as {result.get('user', {}).get('email') or email}; session token kept in {where}")
    if as_json:
        print_json({"url": url, "user": result.get("user"), "expires_at": result.get("expires_at"), "stored_in": where})


def _anonymous(url: str | None) -> Client:
    """A client for the public routes; fails now if a login could not be stored."""
    credentials.check()
    return Client(url, token="")


def login(url: UrlOption = None, email: EmailOption = "", password_stdin: PasswordStdinOption = False,
          as_json: JsonOption = False) -> None:
    """Log in; the session token goes to the OS keyring (else a 0600 file in $Z4J_HOME)."""
    if not email:
        raise CliError("--email is required")
    client = _anonymous(url)
    password = read_password(password_stdin)
    _keep(client.url, client.login(email, password), email, as_json)


def logout(url: UrlOption = None) -> None:
    """End the stored session on the collector and forget it here."""
    url = credentials.resolve_url(url)
    stored = credentials.load(url)
    if stored is None:
        raise CliError(f"not logged in to {url}")
    problem = None
    try:
        Client(url, stored.token).logout()
    except ClientError as exc:
        if exc.status != 401:  # 401: the session had already ended
            problem = exc
    credentials.forget(url)
    if problem is not None:
        raise CliError(f"forgot the login here, but the collector did not end the session: {problem}")
    note(f"logged out of {url}")


def setup(url: UrlOption = None,
          token: Annotated[str, typer.Option("--token", help="The setup token `z4j serve` printed")] = "",
          email: EmailOption = "", name: Annotated[str, typer.Option(help="Display name")] = "",
          password_stdin: PasswordStdinOption = False, as_json: JsonOption = False) -> None:
    """First boot: create the first superuser with the setup token, and log in."""
    if not token or not email:
        raise CliError("--token and --email are required")
    client = _anonymous(url)
    password = read_password(password_stdin, "New password", confirm=True)
    _keep(client.url, client.setup(token, email, password, name), email, as_json)


def accept_invite(token: Annotated[str, typer.Argument(help="The invitation token (z4ji_…)")],
                  url: UrlOption = None, name: Annotated[str, typer.Option(help="Display name")] = "",
                  password_stdin: PasswordStdinOption = False, as_json: JsonOption = False) -> None:
    """Accept an invitation; a new account chooses its password and is logged in."""
    client = _anonymous(url)
    offer = client.invitation(token)
    password = None if offer["existing_user"] else read_password(password_stdin, "New password", confirm=True)
    out = client.accept_invitation(token, password, name)
    joined = f"joined {out['project']} as {out['role']}"
    if "token" in out:
        note(joined)
        _keep(client.url, {"token": out["token"], "user": {"email": out["email"]}, "expires_at": out["expires_at"]},
              out["email"], as_json)
        return
    note(f"{joined}; log in with `z4j login --url {client.url} --email {out['email']}`")
    if as_json:
        print_json(out)


def reset_password(token: Annotated[str, typer.Argument(help="The reset token (z4jr_…) from the e-mail")],
                   url: UrlOption = None, password_stdin: PasswordStdinOption = False) -> None:
    """Set a new password with a reset token; every session and API token of the account ends."""
    client = Client(url, token="")
    client.complete_reset(token, read_password(password_stdin, "New password", confirm=True))
    note(f"password changed; every session and API token of the account has ended: "
         f"run `z4j login --url {client.url}`")


def forgot_password(url: UrlOption = None, email: EmailOption = "") -> None:
    """Ask for a password-reset e-mail."""
    if not email:
        raise CliError("--email is required")
    note(Client(url, token="").request_reset(email)["message"])


def whoami(url: UrlOption = None, as_json: JsonOption = False) -> None:
    """Who the collector thinks you are, and your role in each project."""
    me = Client(url).me()
    if as_json:
        print_json(me)
        return
    user = me.get("user")
    typer.echo(f"{user['email']}{' (superuser)' if user['is_superuser'] else ''} via {me['via']}" if user
               else f"service token {me.get('token')}")
    table(["project", "role"], [[p["slug"], p["role"]] for p in me["projects"]])


# ------------------------------------------------------------------ users


@users_app.command("list")
def users_list(url: UrlOption = None, as_json: JsonOption = False) -> None:
    """Every user (superusers)."""
    users = Client(url).users()
    if as_json:
        print_json(users)
        return
    table(["id", "email", "name", "superuser", "created", "disabled"],
          [[u["id"], u["email"], u["name"], "yes" if u["is_superuser"] else "", when(u["created_at"]),
            when(u["disabled_at"])] for u in users])


@users_app.command("create")
def users_create(email: Annotated[str, typer.Argument(help="E-mail address (their login)")], url: UrlOption = None,
                 name: Annotated[str, typer.Option(help="Display name")] = "",
                 superuser: Annotated[bool, typer.Option("--superuser", help="Owner of every project")] = False,
                 password_stdin: PasswordStdinOption = False, as_json: JsonOption = False) -> None:
    """Create a user with a password (superusers; `users invite` lets them choose it)."""
    client = Client(url)
    user = client.create_user(email, read_password(password_stdin, "Their password", confirm=True), name, superuser)
    done(user, as_json,
         f"user {user['email']} created (id {user['id']}){' as superuser' if user['is_superuser'] else ''}")


def _set_disabled(user: str, url: str | None, disabled: bool, as_json: bool) -> None:
    client = Client(url)
    changed = client.update_user(pick(client.users(), user, "email", "user"), disabled=disabled)
    what = "disabled: its sessions and tokens stop working" if disabled else "enabled"
    done(changed, as_json, f"user {changed['email']} {what}")


@users_app.command("disable")
def users_disable(user: UserArgument, url: UrlOption = None, as_json: JsonOption = False) -> None:
    """Disable a user (superusers): nothing they hold works until enabled again."""
    _set_disabled(user, url, True, as_json)


@users_app.command("enable")
def users_enable(user: UserArgument, url: UrlOption = None, as_json: JsonOption = False) -> None:
    """Enable a disabled user again (superusers)."""
    _set_disabled(user, url, False, as_json)


@users_app.command("invite")
def users_invite(email: Annotated[str, typer.Argument(help="Who to invite")],
                 role: Annotated[str, typer.Option(help="viewer, operator, admin or owner (no higher than yours)")],
                 url: UrlOption = None, project: ProjectOption = "default",
                 expires_hours: Annotated[float | None, typer.Option(help="Lifetime (default: the server's)")] = None,
                 as_json: JsonOption = False) -> None:
    """Invite someone to a project (admins); prints the single-use token once."""
    client = Client(url)
    out = client.invite(project, email, role, expires_hours)
    if as_json:
        print_json(out)
        return
    sent = "e-mailed to them" if out["emailed"] else "not e-mailed (no SMTP configured): send them the line below"
    note(f"invitation for {out['email']} as {out['role']} in {out['project']}, expires {when(out['expires_at'])} "
         f"UTC; {sent}")
    typer.echo(f"z4j accept-invite --url {client.url} {out['token']}")


# ------------------------------------------------------------------ members


def _user_id(client: Client, project: str, user: str) -> int:
    """A user given by e-mail: a member of the project, else (superusers) any user."""
    if user.isdigit():
        return int(user)
    try:
        return pick(client.members(project), user, "email", "user", id_key="user_id")
    except CliError:
        pass
    try:
        everyone = client.users()
    except ClientError as exc:
        if exc.status not in (401, 403):
            raise
        raise CliError(f"{user} is not a member of {project}: give their user id, or invite them with "
                       f"`z4j users invite`") from None
    return pick(everyone, user, "email", "user")


@members_app.command("list")
def members_list(url: UrlOption = None, project: ProjectOption = "default", as_json: JsonOption = False) -> None:
    """Members of the project and their roles (admins)."""
    members = Client(url).members(project)
    if as_json:
        print_json(members)
        return
    table(["user id", "email", "name", "role", "since", "disabled"],
          [[m["user_id"], m["email"], m["name"], m["role"], when(m["created_at"]), when(m["disabled_at"])]
           for m in members])


@members_app.command("set")
def members_set(user: UserArgument, role: Annotated[str, typer.Argument(help="viewer, operator, admin or owner")],
                url: UrlOption = None, project: ProjectOption = "default", as_json: JsonOption = False) -> None:
    """Add a user to the project or change their role (admins; owners for admin and owner)."""
    client = Client(url)
    out = client.set_member(project, _user_id(client, project, user), role)
    done(out, as_json, f"{user} is {role} in {project}")


@members_app.command("remove")
def members_remove(user: UserArgument, url: UrlOption = None, project: ProjectOption = "default",
                   as_json: JsonOption = False) -> None:
    """Remove a member from the project (admins)."""
    client = Client(url)
    user_id = _user_id(client, project, user)
    client.remove_member(project, user_id)
    done({"user_id": user_id, "removed": True}, as_json, f"{user} removed from {project}")


# ------------------------------------------------------------------ projects


@projects_app.command("list")
def projects_list(url: UrlOption = None, as_json: JsonOption = False) -> None:
    """Projects you can see, with your role."""
    projects = Client(url).projects()
    if as_json:
        print_json(projects)
        return
    table(["slug", "name", "role", "retention (days)", "created"],
          [[p["slug"], p["name"], p["role"], p.get("retention_days"), when(p["created_at"])] for p in projects])


@projects_app.command("create")
def projects_create(slug: str, url: UrlOption = None, name: Annotated[str, typer.Option(help="Display name")] = "",
                    as_json: JsonOption = False) -> None:
    """Create a project (superusers); you become its owner."""
    project = Client(url).create_project(slug, name)
    done(project, as_json, f"project {project['slug']} created")


# ------------------------------------------------------------------ API tokens


@tokens_app.command("list")
def tokens_list(url: UrlOption = None, project: ProjectOption = "default",
                everyone: Annotated[bool, typer.Option("--all", help="Everyone's tokens (admins)")] = False,
                as_json: JsonOption = False) -> None:
    """Your API tokens for the project (never the tokens themselves)."""
    tokens = Client(url).tokens(project, everyone)
    if as_json:
        print_json(tokens)
        return
    table(["id", "name", "role", "user", "created", "expires", "last used", "revoked"],
          [[t["id"], t["name"], t["role"], t["user_id"], when(t["created_at"]), when(t["expires_at"]),
            when(t["last_used_at"]), when(t["revoked_at"])] for t in tokens])


@tokens_app.command("create")
def tokens_create(name: Annotated[str, typer.Option(help="What the token is for")],
                  role: Annotated[str, typer.Option(help="viewer, operator, admin or owner (no higher than yours)")],
                  url: UrlOption = None, project: ProjectOption = "default",
                  expires_days: Annotated[float, typer.Option(help="Lifetime in days")] = 90,
                  as_json: JsonOption = False) -> None:
    """Create an API token for scripts; it is printed once."""
    out = Client(url).create_token(project, name, role, expires_days)
    if as_json:
        print_json(out)
    else:
        typer.echo(f"export Z4J_API_TOKEN={out['token']}")
    note(f"token {out['id']} ({out['role']} in {out['project']}, expires {when(out['expires_at'])} UTC) "
         f"is shown once; store it now")


@tokens_app.command("revoke")
def tokens_revoke(token_id: Annotated[int, typer.Argument(help="Token id (from `z4j tokens list`)")],
                  url: UrlOption = None, project: ProjectOption = "default", as_json: JsonOption = False) -> None:
    """Revoke an API token (yours; admins: anyone's)."""
    Client(url).revoke_token(project, token_id)
    done({"id": token_id, "revoked": True}, as_json, f"token {token_id} revoked")


# ------------------------------------------------------------------ sessions


@sessions_app.command("list")
def sessions_list(url: UrlOption = None,
                  user: Annotated[str | None, typer.Option("--user", help="Another user's (superusers)")] = None,
                  as_json: JsonOption = False) -> None:
    """Live login sessions: yours, or a user's."""
    client = Client(url)
    rows = client.sessions(None if user is None else pick(client.users(), user, "email", "user"))
    if as_json:
        print_json(rows)
        return
    table(["id", "created", "last used", "expires", "source", "client", "current"],
          [[s["id"], when(s["created_at"]), when(s["last_used_at"]), when(s["expires_at"]), s["source"],
            s["user_agent"], "yes" if s.get("current") else ""] for s in rows])


@sessions_app.command("revoke")
def sessions_revoke(session_id: Annotated[int | None, typer.Argument(help="One of your sessions")] = None,
                    url: UrlOption = None,
                    user: Annotated[str | None, typer.Option("--user", help="End every session of this user "
                                                                             "(superusers)")] = None,
                    as_json: JsonOption = False) -> None:
    """End one of your sessions, or every session of a user."""
    if (session_id is None) == (user is None):
        raise CliError("give a session id (one of yours) or --user (every session of that user), not both")
    client = Client(url)
    if user is not None:
        user_id = pick(client.users(), user, "email", "user")
        client.end_user_sessions(user_id)
        out: dict[str, Any] = {"user_id": user_id, "ended": "all"}
    else:
        client.end_session(session_id)
        out = {"session_id": session_id, "ended": True}
    done(out, as_json, f"session {session_id} ended" if user is None else f"every session of {user} ended")


def register(app: typer.Typer) -> None:
    app.command()(login)
    app.command()(logout)
    app.command()(setup)
    app.command("accept-invite")(accept_invite)
    app.command("reset-password")(reset_password)
    app.command("forgot-password")(forgot_password)
    app.command()(whoami)
    app.add_typer(users_app, name="users")
    app.add_typer(members_app, name="members")
    app.add_typer(projects_app, name="projects")
    app.add_typer(tokens_app, name="tokens")
    app.add_typer(sessions_app, name="sessions")
