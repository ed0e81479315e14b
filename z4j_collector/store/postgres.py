"""PostgreSQL (production) through psycopg 3 and its connection pool."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from functools import lru_cache
from typing import Any, TypeVar

import psycopg
from psycopg_pool import AsyncConnectionPool

from z4j_collector import taskmerge
from z4j_collector.errors import StoreError
from z4j_collector.store.base import INSERT_EVENT_COLUMNS, UPSERT_TASK_SQL, SqlStore

T = TypeVar("T")

_EVENT_TYPES = ("text", "int4", "text", "text", "text", "float8", "float8", "int4", "text")
_TASK_TYPES = {
    "project_id": "int4", "state_rank": "int2", "retries": "int4", "agent_id": "int4",
    "redacted": "bool", "replay": "bytea", "runtime": "float8", "eta": "float8", "state_ts": "float8",
    "created_at": "float8", "sent_at": "float8", "received_at": "float8", "started_at": "float8",
    "finished_at": "float8", "updated_at": "float8",
}


@lru_cache(maxsize=512)
def pg_sql(sql: str) -> str:
    """Our SQL uses ``?`` placeholders; psycopg wants ``%s``."""
    return sql.replace("%", "%%").replace("?", "%s")


def _unnest(types: Sequence[str]) -> str:
    # %b: binary parameters; the text array format escapes every element
    # with a regex, which costs more than the whole insert.
    return "SELECT * FROM unnest(" + ", ".join(f"%b::{t}[]" for t in types) + ")"


# Bulk statements: one round trip per batch whatever its size.
_INSERT_EVENTS = (
    f"INSERT INTO task_events ({', '.join(INSERT_EVENT_COLUMNS)}) {_unnest(_EVENT_TYPES)} "
    "ON CONFLICT (id) DO NOTHING RETURNING id"
)
_TASK_VALUES = UPSERT_TASK_SQL.split(" VALUES ")[0]
_UPSERT_TASKS = (
    f"{_TASK_VALUES} {_unnest([_TASK_TYPES.get(c, 'text') for c in taskmerge.TASK_COLUMNS])} "
    f"ON CONFLICT {UPSERT_TASK_SQL.split(' ON CONFLICT ', 1)[1]}"
)


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

    async def raw(self, sql: str, params: Sequence[Any]) -> psycopg.AsyncCursor:
        return await self.conn.execute(sql, params)


class PostgresStore(SqlStore):
    dialect = "postgresql"

    def __init__(self, url: str, min_size: int = 2, max_size: int = 10) -> None:
        self.url = url
        self._pool = AsyncConnectionPool(
            url, min_size=min_size, max_size=max_size, open=False, kwargs={"autocommit": True}
        )

    async def open(self) -> None:
        try:
            await self._pool.open(wait=True, timeout=10)
        except Exception as exc:  # noqa: BLE001
            await self._pool.close()
            raise StoreError(f"cannot connect to PostgreSQL: {str(exc).splitlines()[0]}") from exc

    async def close(self) -> None:
        await self._pool.close()

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        async with self._pool.connection() as conn:
            cur = await conn.execute(pg_sql(sql), params)
            return list(await cur.fetchall()) if cur.description else []

    async def write(self, fn: Callable[[_Tx], Awaitable[T]]) -> T:
        async with self._pool.connection() as conn:
            async with conn.transaction():
                return await fn(_Tx(conn))

    def search_clause(self, columns: Sequence[str]) -> str:
        return "(" + " OR ".join(f"{c} ILIKE ?" for c in columns) + ")"

    async def insert_events(self, tx: _Tx, rows: list[tuple]) -> set[str]:
        cur = await tx.raw(_INSERT_EVENTS, [list(col) for col in zip(*rows)])
        return {r[0] for r in await cur.fetchall()}

    async def upsert_tasks(self, tx: _Tx, rows: list[list[Any]]) -> None:
        await tx.raw(_UPSERT_TASKS, [list(col) for col in zip(*rows)])
