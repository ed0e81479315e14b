"""Alembic, driven from code: upgrade, current revision, head revision."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

from z4j_collector.errors import StoreError
from z4j_collector.settings import dialect_of


logging.getLogger("alembic").setLevel(logging.WARNING)


def migrations_dir() -> Path:
    here = Path(__file__).resolve()
    for candidate in (here.parent.parent / "_migrations", here.parents[2] / "migrations"):
        if (candidate / "env.py").exists():
            return candidate
    raise StoreError("the migrations folder is missing from this installation")


def sqlalchemy_url(url: str) -> str:
    if dialect_of(url) == "postgresql":
        return "postgresql+psycopg://" + url[len("postgresql://"):]
    return url


def _config(url: str):
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    cfg.attributes["url"] = sqlalchemy_url(url)
    return cfg


def sqlite_path(url: str) -> Path:
    return Path(url[len("sqlite:///"):])


def ensure_sqlite_parent(url: str) -> None:
    if dialect_of(url) == "sqlite":
        path = sqlite_path(url)
        path.parent.mkdir(parents=True, exist_ok=True)
        # WAL is a property of the file: set it once, before anyone else opens it.
        with sqlite3.connect(path) as conn:
            conn.execute("PRAGMA journal_mode=WAL")


def upgrade(url: str, revision: str = "head") -> None:
    from alembic import command

    ensure_sqlite_parent(url)
    try:
        command.upgrade(_config(url), revision)
    except Exception as exc:  # noqa: BLE001 - one line for the operator
        raise StoreError(f"migration failed: {_first_line(exc)}") from exc


def head() -> str:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_config("sqlite:///unused")).get_current_head() or ""


def current(url: str) -> str | None:
    """The database's revision, or None when it has never been migrated."""
    from alembic.runtime.migration import MigrationContext
    from sqlalchemy import create_engine, pool

    if dialect_of(url) == "sqlite" and not sqlite_path(url).exists():
        return None
    engine = create_engine(sqlalchemy_url(url), poolclass=pool.NullPool)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    except Exception as exc:  # noqa: BLE001
        raise StoreError(f"cannot reach the database: {_first_line(exc)}") from exc
    finally:
        engine.dispose()


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
