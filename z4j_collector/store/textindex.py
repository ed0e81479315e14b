"""The optional free-text index of the task list (``z4j db text-index``).

Without it, free text walks the task list newest first and checks each task
(fast for a common text, slow for a rare one in a long history). With it:

- PostgreSQL: a pg_trgm GIN index over id, name, args, kwargs, result and
  exception joined (``SEARCH_TEXT``, the very expression the query uses),
  built with CREATE INDEX CONCURRENTLY, so ingest goes on while it builds;
- SQLite: an FTS5 table with the trigram tokenizer, its content read from
  ``tasks`` by rowid and kept in step by triggers that fire only when one of
  those columns changes. ``detail=none``: each trigram's list holds rowids
  only, no columns or positions, so a list is about a fifth of the size
  (10,000,000 tasks: 1.2 GB against 5.6 GB), builds in half the time and
  is read from disk in half the time; the store never asks it for a
  phrase, only for trigrams ANDed, and checks what they find against the
  text (store/sqlite.py). An index built with positions before (an older
  z4j) answers the same queries; off and on again rebuilds it smaller.

It is off by default. On PostgreSQL keeping it costs the database twice
the CPU per ingested event that the rest of ingest does; on SQLite, since
it keeps no positions, about 5 % of the ingest rate (docs/performance.md,
"What a text index costs"). A collector notices a change within
``RECHECK_S``.
"""

from __future__ import annotations

import time

from z4j_collector.store.base import SEARCH_COLUMNS

RECHECK_S = 30.0
PG_INDEX = "ix_tasks_text"
SQLITE_TABLE = "tasks_text"
SEARCH_TEXT = " || ' ' || ".join(f"coalesce({c}, '')" for c in SEARCH_COLUMNS)
"""PostgreSQL: the expression the index is built on, and the query's."""

_COLUMNS = ", ".join(SEARCH_COLUMNS)


def _values(prefix: str) -> str:
    return ", ".join(f"{prefix}.{c}" for c in SEARCH_COLUMNS)


_CHANGED = " OR ".join(f"old.{c} IS NOT new.{c}" for c in SEARCH_COLUMNS)
_SQLITE_CREATE = (
    f"CREATE VIRTUAL TABLE {SQLITE_TABLE} USING fts5({_COLUMNS}, content='tasks', tokenize='trigram', detail=none)",
    f"CREATE TRIGGER tasks_text_insert AFTER INSERT ON tasks BEGIN "
    f"INSERT INTO {SQLITE_TABLE} (rowid, {_COLUMNS}) VALUES (new.rowid, {_values('new')}); END",
    f"CREATE TRIGGER tasks_text_delete AFTER DELETE ON tasks BEGIN "
    f"INSERT INTO {SQLITE_TABLE} ({SQLITE_TABLE}, rowid, {_COLUMNS}) VALUES ('delete', old.rowid, {_values('old')}); "
    f"END",
    f"CREATE TRIGGER tasks_text_update AFTER UPDATE ON tasks WHEN {_CHANGED} BEGIN "
    f"INSERT INTO {SQLITE_TABLE} ({SQLITE_TABLE}, rowid, {_COLUMNS}) VALUES ('delete', old.rowid, {_values('old')}); "
    f"INSERT INTO {SQLITE_TABLE} (rowid, {_COLUMNS}) VALUES (new.rowid, {_values('new')}); END",
    f"INSERT INTO {SQLITE_TABLE} ({SQLITE_TABLE}) VALUES ('rebuild')",
)
_SQLITE_DROP = tuple(f"DROP TRIGGER IF EXISTS tasks_text_{t}" for t in ("insert", "delete", "update")) + (
    f"DROP TABLE IF EXISTS {SQLITE_TABLE}",
)


class TextIndexSql:
    """Is the index there, and switching it on or off. Needs ``fetchall``,
    ``write`` and ``dialect`` (PostgresStore, SqliteStore)."""

    dialect: str
    _text_index: bool | None = None
    _text_index_at = 0.0

    async def has_text_index(self) -> bool:
        now = time.monotonic()
        if self._text_index is None or now - self._text_index_at > RECHECK_S:
            self._text_index, self._text_index_at = await self._text_index_state() == "on", now
        return self._text_index

    async def _text_index_state(self) -> str:
        """on, off, or building (PostgreSQL: an index not valid yet, or left by a failed build)."""
        if self.dialect == "postgresql":
            rows = await self.fetchall(
                "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid WHERE c.relname = ?",
                (PG_INDEX,))
            return "off" if not rows else "on" if rows[0][0] else "building"
        rows = await self.fetchall("SELECT 1 FROM sqlite_master WHERE name = ?", (SQLITE_TABLE,))
        return "on" if rows else "off"

    async def text_index_state(self) -> str:
        return await self._text_index_state()

    async def set_text_index(self, on: bool) -> bool:
        """Build or drop the index; False when it already was so."""
        state = await self._text_index_state()
        if (state == "on") == on and state != "building":
            return False
        if self.dialect == "postgresql":
            if not on or state == "building":  # a failed concurrent build leaves an invalid index
                await self.fetchall(f"DROP INDEX CONCURRENTLY IF EXISTS {PG_INDEX}")
            if on:
                await self.fetchall("CREATE EXTENSION IF NOT EXISTS pg_trgm")
                await self.fetchall(
                    f"CREATE INDEX CONCURRENTLY {PG_INDEX} ON tasks USING gin (({SEARCH_TEXT}) gin_trgm_ops)")
        else:
            statements = _SQLITE_CREATE if on else _SQLITE_DROP

            async def apply(tx) -> None:
                for statement in statements:
                    await tx.execute(statement)

            await self.write(apply)
        self._text_index, self._text_index_at = on, time.monotonic()
        return True
