"""Server-side commands: serve, db upgrade, check, status, admin …

They talk to the database directly (they run on the collector's host), so
they live beside the collector; z4j_tui.cli mounts them under ``z4j``.
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Annotated, Any

import typer

from z4j_collector import __version__
from z4j_collector.errors import CollectorError
from z4j_collector.settings import Settings

DbOption = Annotated[str | None, typer.Option("--db", help="sqlite:///PATH or postgresql://… (default $Z4J_HOME/z4j.db)")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON on stdout")]


def emit(data: Any, as_json: bool, text: str) -> None:
    if as_json:
        import json

        typer.echo(json.dumps(data, indent=2, sort_keys=True))
    else:
        typer.echo(text)


def fail(message: str) -> None:
    typer.echo(f"z4j: {message}", err=True)
    raise typer.Exit(1)


def serve(
    db: DbOption = None,
    host: Annotated[str | None, typer.Option(help="Address to listen on (default 127.0.0.1, $Z4J_HOST)")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default 7400, $Z4J_PORT)")] = None,
) -> None:
    """Run the collector."""
    import uvicorn

    from z4j_collector.app import create_app
    from z4j_collector.store import migrate

    settings = Settings.load(db, host, port)
    revision = migrate.current(settings.db_url)
    if revision != migrate.head():
        if settings.dialect != "sqlite":
            # PostgreSQL is shared by several collectors: upgraded on purpose, once.
            fail(f"database is at revision {revision or 'none'}, this z4j needs {migrate.head()}: "
                 f"run `z4j db upgrade --db …` first")
        migrate.upgrade(settings.db_url)  # the embedded default upgrades itself
    typer.echo(f"z4j collector {__version__} on http://{settings.host}:{settings.port} ({_safe_url(settings.db_url)})", err=True)
    uvicorn.run(
        create_app(settings), host=settings.host, port=settings.port, log_level="warning",
        ws_max_size=16 * 1024 * 1024, ws_per_message_deflate=False, lifespan="on",
    )


def db_upgrade(db: DbOption = None) -> None:
    """Apply the database migrations."""
    from z4j_collector.store import migrate

    settings = Settings.load(db)
    before = migrate.current(settings.db_url)
    migrate.upgrade(settings.db_url)
    typer.echo(f"database {_safe_url(settings.db_url)} at revision {migrate.head()} (was {before or 'empty'})", err=True)


def db_text_index(
    switch: Annotated[str, typer.Argument(help="on, off or status")] = "status",
    db: DbOption = None,
) -> None:
    """Free-text index of the task list: on, off, or its status. It makes a rare
    text fast over millions of tasks and costs ingest CPU (docs/production.md)."""
    if switch not in ("on", "off", "status"):
        fail(f"text-index takes on, off or status, got {switch!r}")
    settings = Settings.load(db)

    async def run(store: Any) -> tuple[str, bool]:
        changed = False if switch == "status" else await store.set_text_index(switch == "on")
        return await store.text_index_state(), changed

    state, changed = asyncio.run(_with_store(settings, run))
    what = "FTS5 table tasks_text" if settings.dialect == "sqlite" else "pg_trgm GIN index ix_tasks_text"
    note = "" if changed or switch == "status" else " (it already was)"
    typer.echo(f"text index {state}: {what}{note}")


def check(db: DbOption = None, as_json: JsonOption = False) -> None:
    """Check configuration, database connectivity and the migration head."""
    from z4j_collector.store import migrate

    results: list[dict[str, Any]] = []

    def record(name: str, ok: bool, detail: str) -> None:
        results.append({"check": name, "ok": ok, "detail": detail})

    try:
        settings = Settings.load(db)
        record("config", True, f"database {_safe_url(settings.db_url)}, listen {settings.host}:{settings.port}")
    except CollectorError as exc:
        record("config", False, exc.message)
        settings = None
    if settings is not None and settings.dialect == "sqlite" and not migrate.sqlite_path(settings.db_url).exists():
        record("database", False, f"{migrate.sqlite_path(settings.db_url)} does not exist: run `z4j db upgrade`")
    elif settings is not None:
        try:
            revision = migrate.current(settings.db_url)
            record("database", True, f"{settings.dialect} reachable")
            head = migrate.head()
            ok = revision == head
            record("migrations", ok, f"at {revision or 'none'}, head {head}" + ("" if ok else ": run `z4j db upgrade`"))
        except CollectorError as exc:
            record("database", False, exc.message)
    healthy = all(r["ok"] for r in results)
    emit({"ok": healthy, "checks": results}, as_json,
         "\n".join(f"{'ok  ' if r['ok'] else 'FAIL'} {r['check']}: {r['detail']}" for r in results))
    if not healthy:
        raise typer.Exit(1)


def status(db: DbOption = None, as_json: JsonOption = False) -> None:
    """Counts of projects, agents, tasks and events; version."""
    from z4j_collector.store import make_store, migrate

    settings = Settings.load(db)

    async def counts() -> dict[str, int]:
        store = make_store(settings.db_url)
        await store.open()
        try:
            return await store.status_counts()
        finally:
            await store.close()

    revision = migrate.current(settings.db_url)
    if revision is None:
        fail(f"database {_safe_url(settings.db_url)} is empty: run `z4j db upgrade`")
    data = {"version": __version__, "database": settings.dialect, "revision": revision, **asyncio.run(counts())}
    emit(data, as_json, "\n".join(f"{k}: {v}" for k, v in data.items()))


def create_agent(
    project: Annotated[str, typer.Option(help="Project slug")] = "default",
    name: Annotated[str, typer.Option(help="Agent name, unique in the project")] = "",
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Create an agent; print its token and HMAC secret (shown once)."""
    if not name:
        fail("--name is required")
    settings = Settings.load(db)
    creds = asyncio.run(_with_services(settings, lambda s: s.membership.create_agent(s.shell(project), name),
                                       project))
    url = settings.base_url
    emit({**creds, "brain_url": url}, as_json, (
        f"export Z4J_BRAIN_URL={url}\nexport Z4J_TOKEN={creds['token']}\n"
        f"export Z4J_HMAC_SECRET={creds['hmac_secret']}\nexport Z4J_PROJECT_ID={creds['project']}\n"
        f"export Z4J_AGENT_NAME={creds['name']}"
    ))
    typer.echo("z4j: the token and secret are shown once; store them now", err=True)


def create_token(
    project: Annotated[str, typer.Option(help="Project slug")] = "default",
    role: Annotated[str, typer.Option(help="viewer, operator, admin or owner")] = "viewer",
    name: Annotated[str, typer.Option(help="What the token is for")] = "cli",
    expires_days: Annotated[float, typer.Option(help="Lifetime in days (0: never)")] = 90,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Create a project service token for scripts, not tied to a user (shown once)."""
    from z4j_collector.roles import ROLES

    if role not in ROLES:
        fail(f"role must be one of {', '.join(ROLES)}, got {role!r}")
    if expires_days < 0:
        fail("--expires-days must be 0 (never) or more")
    settings = Settings.load(db)
    data = asyncio.run(_with_services(settings, lambda s: s.service_token(project, name, role, expires_days),
                                      project))
    emit(data, as_json, f"export Z4J_API_TOKEN={data['token']}")


def create_user(
    email: Annotated[str, typer.Option(help="The user's e-mail address (their login)")],
    password_stdin: Annotated[bool, typer.Option("--password-stdin", help="Read the password from stdin")] = False,
    superuser: Annotated[bool, typer.Option("--superuser", help="Instance superuser: owner of every project")] = False,
    name: Annotated[str, typer.Option(help="Display name")] = "",
    project: Annotated[str | None, typer.Option(help="Also make them a member of this project")] = None,
    role: Annotated[str, typer.Option(help="Their role in --project")] = "viewer",
    db: DbOption = None,
    as_json: JsonOption = False,
    password_argv: Annotated[str | None, typer.Option("--password", hidden=True)] = None,
) -> None:
    """Create a user from the server's shell (scripted installs)."""
    from z4j_collector.roles import check_role

    if password_argv is not None or not password_stdin:  # argv is visible to every user of the host (ps)
        fail("pass the password on stdin with --password-stdin (never on the command line)")
    password = sys.stdin.readline().rstrip("\r\n")
    check_role(role)
    settings = Settings.load(db)

    async def make(s: _Services) -> int:
        project_id = None
        if project is not None:
            project_id = await s.store.project_id(project)
            if project_id is None:
                raise CollectorError(f"no project {project!r}")
        user_id = await s.identity.create_user(SHELL_ACTOR(), email, password, name, superuser, project_id,
                                               role if project_id else None)
        if project is None and not superuser and (default := await s.store.project_id("default")) is not None:
            await s.membership.set_role(s.shell("default", default), user_id, role)
        return user_id

    user_id = asyncio.run(_with_services(settings, make))
    emit({"id": user_id, "email": email.strip().lower(), "superuser": superuser}, as_json,
         f"user {email.strip().lower()} created (id {user_id}){' as superuser' if superuser else ''}")


def audit_verify(
    project: Annotated[str | None, typer.Option(help="Project slug (default: every chain, the instance's too)")] = None,
    checkpoint: Annotated[str | None, typer.Option(help="An exported checkpoint file to check the log against")] = None,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Walk the audit chains; exit 1 with one line per problem: the row (seq, id) and the kind."""
    import json

    from z4j_collector import auditchain
    from z4j_collector.keys import public_key_from_b64

    settings = Settings.load(db)
    extra: list[dict[str, Any]] = []
    if checkpoint is not None:
        try:
            data = json.loads(open(checkpoint, encoding="utf-8").read())
        except (OSError, ValueError) as exc:
            fail(f"cannot read checkpoint file {checkpoint}: {exc}")
        if not isinstance(data, dict) or data.get("format") != auditchain.CHECKPOINT_FORMAT:
            fail(f"{checkpoint} is not a z4j checkpoint file (format {auditchain.CHECKPOINT_FORMAT})")
        extra = [c for c in data.get("checkpoints", []) if isinstance(c, dict)]
        file_key = data.get("public_key", "")

    async def run(s: _Services) -> list[dict[str, Any]]:
        if checkpoint is not None:
            if file_key != s.audit.keys.public_b64:
                public_key_from_b64(file_key)  # a clear error when it is not a key at all
                raise CollectorError(f"{checkpoint} was signed by another key ({file_key[:12]}…) than this "
                                     f"collector's ({s.audit.keys.public_b64[:12]}…)")
        if project is not None:
            project_id = await s.store.project_id(project)
            if project_id is None:
                raise CollectorError(f"no project {project!r}")
            chains = {project_id: project}
        else:
            chains = {0: "(instance)"} | {p["id"]: p["slug"] for p in await s.store.list_projects()}
            chains = {i: slug for i, slug in chains.items()
                      if i in set(await s.store.audit_chains()) or any(c.get("project_id") == i for c in extra)}
        reports = []
        for project_id, slug in chains.items():
            report = await s.audit.verify(project_id, extra)
            reports.append({"project": slug, **report.to_dict()})
        return reports

    reports = asyncio.run(_with_services(settings, run))
    ok = all(r["ok"] for r in reports)
    lines = []
    for r in reports:
        if r["ok"]:
            lines.append(f"ok   {r['project']}: {r['rows']} rows, seq {r['first_seq']}–{r['last_seq']}, "
                         f"{r['checkpoints_checked']} checkpoints")
        else:
            lines.extend(f"FAIL {r['project']}: {p['kind']}: {p['message']}" for p in r["problems"])
    emit({"ok": ok, "chains": reports}, as_json, "\n".join(lines) or "no audit rows yet")
    if not ok:
        raise typer.Exit(1)


def audit_prune(
    older_than_days: Annotated[float, typer.Option("--older-than-days", help="Drop rows older than this many days")],
    project: Annotated[str | None, typer.Option(help="Project slug (default: every chain, the instance's too)")] = None,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Retention: drop old audit rows through the newest signed checkpoint before the cut (the chain stays verifiable)."""
    if not older_than_days >= 0:  # NaN too
        fail(f"--older-than-days must be 0 or more, got {older_than_days}")
    settings = Settings.load(db)
    keep_after = time.time() - older_than_days * 86400

    async def run(s: _Services) -> list[dict[str, Any]]:
        names = {0: "(instance)"} | {p["id"]: p["slug"] for p in await s.store.list_projects()}
        if project is not None:
            chains = [s.slug_ids[project]]
        else:
            chains = await s.store.audit_chains()
        from z4j_collector.services.audit import SHELL

        return [{"project": names.get(i, str(i)), **await s.audit.prune(i, keep_after, SHELL)} for i in chains]

    results = asyncio.run(_with_services(settings, run, project))
    emit(results, as_json, "\n".join(
        f"{r['project']}: deleted {r['deleted']} rows through seq {r['through_seq']} (anchored on a signed checkpoint)"
        if r["through_seq"] is not None else f"{r['project']}: nothing pruned: {r['reason']}" for r in results))


def audit_export(
    out: Annotated[str, typer.Option("--out", help="File to write (keep it off this machine)")],
    db: DbOption = None,
) -> None:
    """Sign a checkpoint of every chain now and write them to a file."""
    import json

    settings = Settings.load(db)

    async def run(s: _Services) -> dict[str, Any]:
        cps = await s.audit.checkpoint_all()
        names = {0: "(instance)"} | {p["id"]: p["slug"] for p in await s.store.list_projects()}
        return s.audit.export(cps, names)

    data = asyncio.run(_with_services(settings, run))
    with open(out, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=2)
    typer.echo(f"{len(data['checkpoints'])} signed checkpoints written to {out}", err=True)


class _Services:
    """The collector's services over one store, for commands run on the server's host."""

    def __init__(self, store: Any, settings: Settings) -> None:
        from z4j_collector.keys import AuditKeys
        from z4j_collector.services.audit import Audit
        from z4j_collector.services.identity import Identity
        from z4j_collector.services.mail import Mailer
        from z4j_collector.services.membership import Membership

        self.store = store
        self.audit = Audit(store, AuditKeys.load())
        self.identity = Identity(store, self.audit, settings)
        self.membership = Membership(store, self.audit, self.identity, Mailer(settings.smtp))
        self.slug_ids: dict[str, int] = {}

    def shell(self, project: str, project_id: int | None = None) -> Any:
        from z4j_collector.services.identity import Access, Principal

        principal = Principal("shell", 0, None, "server-shell", True, source="local")
        return Access(principal, project_id if project_id is not None else self.slug_ids[project], project, "owner")

    async def service_token(self, project: str, name: str, role: str, expires_days: float) -> dict[str, Any]:
        from z4j_collector.services import secrets as sec

        token, digest = sec.new_token("api")
        now = time.time()
        expires_at = now + expires_days * 86400 if expires_days else None
        access = self.shell(project)

        async def tx_fn(tx: Any) -> int:
            token_id = await self.store.insert_api_token(tx, access.project_id, None, name, role, digest, now,
                                                         expires_at)
            await self.audit.record(tx, access.actor.entry(access.project_id, "token.create", f"token:{token_id}",
                                                           name=name, role=role, service=True), now)
            return token_id

        token_id = await self.store.write(tx_fn)
        return {"id": token_id, "project": project, "role": role, "token": token, "expires_at": expires_at}


def SHELL_ACTOR() -> Any:  # noqa: N802 - reads like the constant it returns
    from z4j_collector.services.audit import SHELL

    return SHELL


async def _with_services(settings: Settings, fn: Any, project: str | None = None) -> Any:
    async def run(store: Any) -> Any:
        services = _Services(store, settings)
        if project is not None:
            project_id = await store.project_id(project)
            if project_id is None:
                raise CollectorError(f"no project {project!r}")
            services.slug_ids[project] = project_id
        return await fn(services)

    return await _with_store(settings, run)


async def _with_store(settings: Settings, fn: Any) -> Any:
    from z4j_collector.store import make_store, migrate

    if migrate.current(settings.db_url) != migrate.head():
        raise CollectorError("database is not at the current migration: run `z4j db upgrade`")
    store = make_store(settings.db_url)
    await store.open()
    try:
        return await fn(store)
    finally:
        await store.close()


def _safe_url(url: str) -> str:
    from z4j_agents.redaction import default_redactor

    return default_redactor().redact_text(url)[0]


def register(app: typer.Typer) -> dict[str, typer.Typer]:
    app.command()(serve)
    app.command()(check)
    app.command()(status)
    db_app = typer.Typer(help="Database migrations and indexes.", no_args_is_help=True)
    db_app.command("upgrade")(db_upgrade)
    db_app.command("text-index")(db_text_index)
    app.add_typer(db_app, name="db")
    admin_app = typer.Typer(help="Server-side administration (runs on the collector's host).", no_args_is_help=True)
    admin_app.command("create-agent")(create_agent)
    admin_app.command("create-token")(create_token)
    admin_app.command("create-user")(create_user)
    app.add_typer(admin_app, name="admin")
    # `z4j audit verify` and `checkpoint export` read the database and the
    # audit keys, so they run on the collector's host; the client adds
    # `audit list` (through the API) to the same group.
    audit_app = typer.Typer(help="The tamper-evident audit log.", no_args_is_help=True)
    audit_app.command("verify")(audit_verify)
    audit_app.command("prune")(audit_prune)
    checkpoint_app = typer.Typer(help="Signed checkpoints of the audit chains.", no_args_is_help=True)
    checkpoint_app.command("export")(audit_export)
    audit_app.add_typer(checkpoint_app, name="checkpoint")
    app.add_typer(audit_app, name="audit")
    return {"audit": audit_app}


def main() -> None:  # pragma: no cover - used by `python -m z4j_collector.cli`
    app = typer.Typer(no_args_is_help=True)
    register(app)
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
