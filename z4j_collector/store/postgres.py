"""PostgreSQL (production) through psycopg 3 and its connection pool."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from functools import lru_cache
from typing import Any, TypeVar

import psycopg
from psycopg_pool import AsyncConnectionPool

from z4j_collector import taskmerge
from z4j_collector.errors import StoreError
from z4j_collector.store.base import INSERT_EVENT_COLUMNS, UPSERT_TASK_SQL, SqlStore, like_pattern
from z4j_collector.store.partitions import PartitionsSql
from z4j_collector.store.textindex import SEARCH_TEXT, TextIndexSql

T = TypeVar("T")

@lru_cache(maxsize=512)
def pg_sql(sql: str) -> str:
    """Our SQL uses ``?`` placeholders; psycopg wants ``%s``."""
    return sql.replace("%", "%%").replace("?", "%s")


# Bulk writes go through binary COPY: psycopg formats its rows in C, several
# times cheaper than binding every value of a multi-row statement, and binary
# escapes nothing (text COPY escaped every character of every traceback: 4.1
# µs per event row against 0.9). New events go straight into task_events;
# task rows, and events of a batch sent again, go into per-connection staging
# tables (emptied at commit), then one INSERT … SELECT … ON CONFLICT.
_STAGING = (
    "CREATE TEMP TABLE IF NOT EXISTS stage_events (LIKE task_events) ON COMMIT DELETE ROWS",
    "CREATE TEMP TABLE IF NOT EXISTS stage_tasks (LIKE tasks) ON COMMIT DELETE ROWS",
)
_COPY_EVENTS = f"COPY stage_events ({', '.join(INSERT_EVENT_COLUMNS)}) FROM STDIN (FORMAT BINARY)"
_COPY_EVENTS_STRAIGHT = f"COPY task_events ({', '.join(INSERT_EVENT_COLUMNS)}) FROM STDIN (FORMAT BINARY)"
_INSERT_EVENTS = (
    f"INSERT INTO task_events ({', '.join(INSERT_EVENT_COLUMNS)}) "
    f"SELECT {', '.join(INSERT_EVENT_COLUMNS)} FROM stage_events ON CONFLICT (id) DO NOTHING"
)
# After the insert, an event that was already stored keeps its older
# ingested_at: what differs from the staged row was a duplicate.
_NEW_EVENTS = (
    "SELECT s.id FROM stage_events s JOIN task_events t ON t.id = s.id WHERE t.ingested_at = s.ingested_at"
)
_WORDS = re.compile(r"[^\W_]+")
"""What pg_trgm makes trigrams of: runs of letters and digits."""
SEARCH_WORDS_MAX = 4
"""Words of a free text whose frequency is estimated (the longest ones)."""
SEARCH_COMMON = 0.01
"""A word in more than this share of the tasks is not looked up in the index."""

log = logging.getLogger("z4j.store")

STATS_CHECK_S = 5.0
"""How often, at most, ingest asks whether the tasks table needs statistics."""
STATS_YOUNG_ROWS = 1_000_000
"""Below this many tasks the store analyzes the table itself whenever it has
doubled; above, autovacuum's analyze keeps up."""

TASKS_BY_ID_SQL = (
    "SELECT t.* FROM unnest(?::text[]) AS k(id), LATERAL (SELECT {columns} FROM tasks "
    "WHERE project_id = ? AND engine = ? AND task_id = k.id LIMIT 1) t"
)
"""Tasks by id (PostgresStore.tasks_by_id): a primary-key probe per id."""

_TASK_COLUMNS = ", ".join(taskmerge.TASK_COLUMNS)
_COPY_TASKS = f"COPY stage_tasks ({_TASK_COLUMNS}) FROM STDIN (FORMAT BINARY)"
_UPSERT_TASKS = (
    f"INSERT INTO tasks ({_TASK_COLUMNS}) SELECT {_TASK_COLUMNS} FROM stage_tasks "
    f"ON CONFLICT {UPSERT_TASK_SQL.split(' ON CONFLICT ', 1)[1]}"
)


async def _prepare_connection(conn: psycopg.AsyncConnection) -> None:
    for statement in _STAGING:
        await conn.execute(statement)


class _Tx:
    def __init__(self, conn: psycopg.AsyncConnection) -> None:
        self.conn = conn

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        cur = await self.conn.execute(pg_sql(sql), params)
        return cur.rowcount

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        async with self.conn.cursor() as cur:
            await cur.executemany(pg_sql(sql), rows)

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        cur = await self.conn.execute(pg_sql(sql), params)
        return list(await cur.fetchall())

    async def copy_in(self, copy_sql: str, types: Sequence[int], rows: Sequence[Sequence[Any]]) -> None:
        async with self.conn.cursor() as cur:
            async with cur.copy(copy_sql) as copy:
                copy.set_types(types)
                for row in rows:
                    await copy.write_row(row)


class PostgresStore(PartitionsSql, TextIndexSql, SqlStore):
    dialect = "postgresql"
    for_update = " FOR UPDATE"

    def __init__(self, url: str, min_size: int = 2, max_size: int = 10) -> None:
        self.url = url
        self._pool = AsyncConnectionPool(
            url, min_size=min_size, max_size=max_size, open=False, kwargs={"autocommit": True},
            configure=_prepare_connection,
        )
        self._stats_due = 0.0
        self._stats_task: asyncio.Task[None] | None = None
        self._column_types: dict[tuple[str, tuple[str, ...]], list[int]] = {}

    async def open(self) -> None:
        try:
            await self._pool.open(wait=True, timeout=10)
        except Exception as exc:  # noqa: BLE001
            await self._pool.close()
            raise StoreError(f"cannot connect to PostgreSQL: {str(exc).splitlines()[0]}") from exc

    async def close(self) -> None:
        if self._stats_task is not None:
            self._stats_task.cancel()
        await self._pool.close()

    def note_ingest(self) -> None:
        # A young tasks table has no statistics until autovacuum gets to it
        # (a minute or more); meanwhile PostgreSQL takes it for a table of a
        # few rows and may read a task by id through any index that starts
        # with project_id, every task of the project for every id. So while
        # the table is young, ingest has it analyzed whenever it has doubled.
        now = time.monotonic()
        if now < self._stats_due or (self._stats_task is not None and not self._stats_task.done()):
            return
        self._stats_due = now + STATS_CHECK_S
        self._stats_task = asyncio.get_running_loop().create_task(self._keep_statistics())

    async def _keep_statistics(self) -> None:
        try:
            rows = await self.fetchall(
                "SELECT c.reltuples, coalesce(s.n_live_tup, 0) FROM pg_class c "
                "LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid WHERE c.oid = 'tasks'::regclass"
            )
            analyzed, live = rows[0]
            # reltuples is -1 until the first analyze; n_live_tup trails commits by a second or so
            if analyzed < 0 or (analyzed < STATS_YOUNG_ROWS and live > 2 * max(analyzed, 50)):
                await self.execute("ANALYZE tasks")
        except Exception as exc:  # noqa: BLE001 - statistics are a help, never a reason to fail
            log.warning("could not analyze the tasks table: %s", exc)

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        async with self._pool.connection() as conn:
            cur = await conn.execute(pg_sql(sql), params)
            return list(await cur.fetchall()) if cur.description else []

    async def write(self, fn: Callable[[_Tx], Awaitable[T]]) -> T:
        async with self._pool.connection() as conn:
            async with conn.transaction():
                return await fn(_Tx(conn))

    async def search_condition(self, text: str) -> tuple[str, list[Any]]:
        # Without the text index (z4j db text-index), the list is walked
        # newest first and each task checked: the planner guesses a third of
        # the rows for a strpos test, so it walks. With the index: it reads a
        # posting list per trigram of the text's words, and a word found in
        # every task ("order" of "order-123456") has a list as long as the
        # table. So the index is asked for the rarest word only (the
        # planner's own estimates say which) and the whole text is checked
        # on the rows it gives with strpos, which the index cannot take. When
        # even the rarest word is common, the index is not offered: walking
        # the list (or another filter's index) fills the page sooner.
        whole = f"strpos(lower({SEARCH_TEXT}), lower(?)) > 0"
        if not await self.has_text_index():
            return whole, [text]
        words = sorted(set(_WORDS.findall(text.lower())), key=len, reverse=True)[:SEARCH_WORDS_MAX]
        if not words:
            return whole, [text]
        estimates = []
        for word in words:
            rows = await self._estimate(f"({SEARCH_TEXT}) ILIKE ?", (like_pattern(word),))
            estimates.append((rows, -len(word), word))
        rows, _, rarest = min(estimates)
        if rows > SEARCH_COMMON * await self._estimate("TRUE", ()):
            return whole, [text]
        return f"({SEARCH_TEXT}) ILIKE ? AND {whole}", [like_pattern(rarest), text]

    async def _estimate(self, condition: str, params: Sequence[Any]) -> float:
        """The planner's estimate of the tasks matching ``condition``."""
        plan = await self.fetchall(f"EXPLAIN (FORMAT JSON) SELECT 1 FROM tasks WHERE {condition}", params)
        doc = plan[0][0]
        doc = json.loads(doc) if isinstance(doc, str) else doc
        return float(doc[0]["Plan"]["Plan Rows"])

    async def _types(self, tx: _Tx, table: str, columns: Sequence[str]) -> list[int]:
        """The type oids of ``columns`` of ``table``, as binary COPY needs them (read once)."""
        key = (table, tuple(columns))
        if key not in self._column_types:
            rows = await tx.fetchall("SELECT attname, atttypid FROM pg_attribute WHERE attrelid = ?::regclass "
                                     "AND attnum > 0 AND NOT attisdropped", (table,))
            oids = dict(rows)
            self._column_types[key] = [oids[column] for column in columns]
        return self._column_types[key]

    async def insert_events(self, tx: _Tx, rows: list[tuple]) -> set[str]:
        types = await self._types(tx, "task_events", INSERT_EVENT_COLUMNS)
        # The usual case, no event stored before: straight into task_events,
        # in a savepoint. A batch sent again after a reconnect meets a key
        # already there; then through the staging table, which keeps the new.
        try:
            async with tx.conn.transaction():
                await tx.copy_in(_COPY_EVENTS_STRAIGHT, types, rows)
            return {row[0] for row in rows}
        except psycopg.errors.UniqueViolation:
            pass
        await tx.copy_in(_COPY_EVENTS, types, rows)
        await tx.execute(_INSERT_EVENTS)
        return {r[0] for r in await tx.fetchall(_NEW_EVENTS)}

    async def tasks_by_id(self, db: Any, project_id: int, engine: str, task_ids: Sequence[str],
                          columns: Sequence[str]) -> list[tuple]:
        # One primary-key probe per id. As a list (IN or ANY) PostgreSQL may
        # read every task of the engine and compare each with every id, a
        # cost that grows with the table (note_ingest keeps the statistics
        # that make the planner choose the key here).
        return await db.fetchall(TASKS_BY_ID_SQL.format(columns=", ".join(columns)),
                                 [list(dict.fromkeys(task_ids)), project_id, engine])

    async def upsert_tasks(self, tx: _Tx, rows: list[list[Any]]) -> None:
        await tx.copy_in(_COPY_TASKS, await self._types(tx, "tasks", taskmerge.TASK_COLUMNS), rows)
        await tx.execute(_UPSERT_TASKS)
