"""Server-side commands: serve, db upgrade, check, status, admin …

They talk to the database directly (they run on the collector's host), so
they live beside the collector; z4j_tui.cli mounts them under ``z4j``.
"""

from __future__ import annotations

import asyncio
import os
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
    data = {"version": __version__, "database": settings.dialect, "revision": revision, "users": 0,
            **asyncio.run(counts())}
    emit(data, as_json, "\n".join(f"{k}: {v}" for k, v in data.items()))


def create_agent(
    project: Annotated[str, typer.Option(help="Project slug")] = "default",
    name: Annotated[str, typer.Option(help="Agent name, unique in the project")] = "",
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Create an agent; print its token and HMAC secret (shown once)."""
    from z4j_collector.services.agents import create_agent as make
    from z4j_collector.store import make_store

    if not name:
        fail("--name is required")
    settings = Settings.load(db)
    creds = asyncio.run(_with_store(settings, lambda store: make(store, project, name)))
    url = os.environ.get("Z4J_PUBLIC_URL") or f"http://{settings.host}:{settings.port}"
    data = {"agent_id": creds.agent_id, "project": creds.project, "name": creds.name,
            "token": creds.token, "hmac_secret": creds.hmac_secret, "brain_url": url}
    emit(data, as_json, (
        f"export Z4J_BRAIN_URL={url}\nexport Z4J_TOKEN={creds.token}\n"
        f"export Z4J_HMAC_SECRET={creds.hmac_secret}\nexport Z4J_PROJECT_ID={creds.project}\n"
        f"export Z4J_AGENT_NAME={creds.name}"
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
    """Create a project API token for scripts (shown once)."""
    import secrets

    from z4j_agents import protocol as p
    from z4j_collector.guards import ROLES

    if role not in ROLES:
        fail(f"role must be one of {', '.join(ROLES)}, got {role!r}")
    if expires_days < 0:
        fail("--expires-days must be 0 (never) or more")
    settings = Settings.load(db)
    token = "z4jt_" + secrets.token_urlsafe(32)
    expires_at = time.time() + expires_days * 86400 if expires_days else None

    async def make(store: Any) -> int:
        project_id = await store.project_id(project)
        if project_id is None:
            raise CollectorError(f"no project {project!r}")
        return await store.create_api_token(project_id, name, role, p.token_hash(token), expires_at)

    token_id = asyncio.run(_with_store(settings, make))
    emit({"id": token_id, "project": project, "role": role, "token": token, "expires_at": expires_at},
         as_json, f"export Z4J_API_TOKEN={token}")


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


def register(app: typer.Typer) -> None:
    app.command()(serve)
    app.command()(check)
    app.command()(status)
    db_app = typer.Typer(help="Database migrations.", no_args_is_help=True)
    db_app.command("upgrade")(db_upgrade)
    app.add_typer(db_app, name="db")
    admin_app = typer.Typer(help="Server-side administration (runs on the collector's host).", no_args_is_help=True)
    admin_app.command("create-agent")(create_agent)
    admin_app.command("create-token")(create_token)
    app.add_typer(admin_app, name="admin")


def main() -> None:  # pragma: no cover - used by `python -m z4j_collector.cli`
    app = typer.Typer(no_args_is_help=True)
    register(app)
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
