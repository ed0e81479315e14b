"""SQLite (embedded default): one writer thread, one reader, WAL.

The writer is a plain ``sqlite3`` connection owned by one thread of its own:
every write transaction's statements run there, in order. Ingest's
transaction runs there whole, in one call (``write_inline``): the ingest
writer is the collector's bottleneck, and each statement sent from the event
loop waited for the loop's turn (behind the verification and redaction of
other batches) before the next could start. WAL checkpoints run on a third
connection in the background, so the writer's commits never copy the log
into the database themselves.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import sqlite3
import sys
import time
from itertools import chain
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import aiosqlite
import msgspec

from z4j_collector.errors import StoreError
from z4j_collector.store.base import INSERT_EVENT_COLUMNS, SqlStore, TaskQuery
from z4j_collector.store.textindex import TextIndexSql

T = TypeVar("T")
log = logging.getLogger("z4j.collector.store")
PRAGMAS = ("journal_mode=WAL", "synchronous=NORMAL", "busy_timeout=10000", "foreign_keys=ON",
           "cache_size=-65536", "temp_store=MEMORY", "journal_size_limit=67108864")
"""Every connection's settings. WAL + NORMAL: durable across process crashes
(SIGKILL); the last commits may roll back on power loss (docs/production.md).
The log file is cut back to 64 MB when it restarts."""
WRITER_AUTOCHECKPOINT_PAGES = 20_000
"""The writer checkpoints the log itself only when the background checkpoints
have fallen this far behind (80 MB of 4 KB pages; SQLite's default is 1,000)."""
ROWS_PER_STATEMENT = 1000
"""Rows an INSERT … VALUES sends per statement (see ``_InlineTx.executemany``)."""
_ONE_ROW = re.compile(r"VALUES (\((?:\?, )*\?\))")
CHECKPOINT_EVERY_S = 0.25
"""At most one background checkpoint per this many seconds, after an ingest commit."""
SWITCH_INTERVAL_S = 0.001
"""The process's GIL switch interval from the moment a SQLite store opens
(never raised; CPython's default is 5 ms): the writer's thread lets go of the GIL for every statement
and must take it back from the event loop's thread, which holds it while it
verifies and redacts the next batches; each take waits up to this long
(docs/performance.md, "the GIL's switch interval")."""
DENSITY_WINDOWS = 4
"""Stretches of the task table in which each trigram of a free text is counted."""
DENSITY_ROWS = 64
"""Rows per stretch."""
SPARSE_DENSITY = 0.1
"""When every trigram of a text is common, those sampled below this density
are intersected (a denser one narrows little and costs a long list)."""
SPARSE_TERMS = 8
"""At most this many of them, the sparsest."""
SEARCH_TRIGRAMS_MAX = 64
"""Trigrams of a free text sized (a long text: its first ones)."""
INDEX_LIST_MAX = 2000
"""A free-text search or a name prefix matching at most this many tasks reads
them through its index and sorts them; one matching more walks the task list
newest first, where the page fills sooner than the index is read."""
LIST_INDEXED = ("name", "worker", "queue", "state", "engine")
"""The task list's filters with a (project_id, column, created_at) index, the
kinds most often rare first."""
MEMBER_MAX = 100_000
"""The tasks a free text's two sparsest trigrams match, up to this many
(estimated), are read whole into a set that the newest-first walk probes by
rowid when the text itself is not rare: the walk then reads a row only
where the trigrams are."""
HOLDING_SAMPLE = 200
"""Rows of such a set checked against the text, to tell how many tasks hold it."""
_FOUND = "rowid IN (SELECT value FROM json_each(?))"
"""The condition of a free text found in the text index (a short list)."""
_MEMBER = "rowid IN (SELECT rowid FROM tasks_text WHERE tasks_text MATCH ?)"
"""The condition of the tasks a text index query matches (a set read once per query)."""
_FEW_NAMES = "name >= ? AND name < ?"
"""The condition of a name prefix of few tasks, read through the name index."""
_INSERT_EVENT_SQL = (
    f"INSERT INTO task_events ({', '.join(INSERT_EVENT_COLUMNS)}) "
    f"VALUES ({', '.join('?' for _ in INSERT_EVENT_COLUMNS)})"
)


def _json_list(values: Sequence[int | str]) -> str:
    """Values as one JSON array, a statement's single parameter that
    ``json_each`` reads back (rowids for ``_FOUND``, event ids for ingest)."""
    return msgspec.json.encode(values).decode()


def _fts_term(text: str) -> str:
    """``text`` (one trigram) as an FTS5 string (quoted, its quotes doubled)."""
    return '"' + text.replace('"', '""') + '"'


class _WriterThread:
    """The writer connection and the one thread that runs everything on it."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="z4j-sqlite-writer")
        self.conn: sqlite3.Connection | None = None

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def open(self, path: str) -> None:
        def connect() -> None:
            conn = sqlite3.connect(path, isolation_level=None)
            for pragma in (*PRAGMAS, f"wal_autocheckpoint={WRITER_AUTOCHECKPOINT_PAGES}"):
                conn.execute(f"PRAGMA {pragma}")
            self.conn = conn

        await self.call(connect)

    async def close(self) -> None:
        if self.conn is not None:
            await self.call(self.conn.close)
            self.conn = None
        self._pool.shutdown(wait=True)


class _InlineTx:
    """A write transaction's statements, run at once: in the writer's thread."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        return self.conn.execute(sql, params).rowcount

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        # ``executemany`` steps once per row, and each step lets go of the GIL
        # and must take it back: while the event loop's thread verifies and
        # redacts other batches, every take waits for its switch interval
        # (5 ms). An INSERT … VALUES goes as a few statements of up to
        # ROWS_PER_STATEMENT rows each instead (rows are still applied in
        # order, so an upsert meeting its own earlier row updates it).
        one = _ONE_ROW.search(sql)
        if one is None or len(rows) < 2:
            self.conn.executemany(sql, rows)
            return
        limit = self.conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // max(1, one.group(1).count("?"))
        per = max(1, min(ROWS_PER_STATEMENT, limit))
        statements: dict[int, str] = {}
        for start in range(0, len(rows), per):
            part = rows[start:start + per]
            text = statements.get(len(part))
            if text is None:
                values = "VALUES " + ", ".join([one.group(1)] * len(part))
                text = statements[len(part)] = sql[:one.start()] + values + sql[one.end():]
            self.conn.execute(text, list(chain.from_iterable(part)))

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        return self.conn.execute(sql, params).fetchall()


class _Tx:
    """The same statements sent from the event loop, each to the writer's thread."""

    def __init__(self, writer: _WriterThread) -> None:
        self.writer = writer
        assert writer.conn is not None, "store is not open"
        self.inline = _InlineTx(writer.conn)

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        return await self.writer.call(_run, self.inline.execute(sql, params))

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        await self.writer.call(_run, self.inline.executemany(sql, rows))

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        return await self.writer.call(_run, self.inline.fetchall(sql, params))


def _run(coro: Awaitable[T]) -> T:
    """Run a coroutine that never waits (it only awaits ``_InlineTx``) to its end, here."""
    try:
        coro.send(None)  # type: ignore[attr-defined]
    except StopIteration as done:
        return done.value
    coro.close()  # type: ignore[attr-defined]
    raise RuntimeError("an inline write transaction awaited something other than its statements")


class SqliteStore(TextIndexSql, SqlStore):
    dialect = "sqlite"

    def __init__(self, url: str) -> None:
        self.path = url[len("sqlite:///"):]
        self._writer: _WriterThread | None = None
        self._reader: aiosqlite.Connection | None = None
        self._checkpointer: aiosqlite.Connection | None = None
        self._checkpoint: asyncio.Task[None] | None = None
        self._checkpoint_due = 0.0
        self._lock = asyncio.Lock()

    async def open(self) -> None:
        try:
            self._writer = _WriterThread()
            await self._writer.open(self.path)
            sys.setswitchinterval(min(sys.getswitchinterval(), SWITCH_INTERVAL_S))
            self._reader = await self._connect()
            self._checkpointer = await self._connect()
        except Exception as exc:  # noqa: BLE001
            await self.close()
            raise StoreError(f"cannot open SQLite database {self.path}: {exc}") from exc

    async def _connect(self) -> aiosqlite.Connection:
        conn = await aiosqlite.connect(self.path, isolation_level=None)
        for pragma in PRAGMAS:
            await conn.execute(f"PRAGMA {pragma}")
        return conn

    async def close(self) -> None:
        if self._checkpoint is not None:
            await asyncio.gather(self._checkpoint, return_exceptions=True)
            self._checkpoint = None
        for conn in (self._reader, self._checkpointer):
            if conn is not None:
                await conn.close()
        if self._writer is not None:
            await self._writer.close()
        self._writer = self._reader = self._checkpointer = None

    def note_ingest(self) -> None:
        # The log is copied into the database by a connection of its own,
        # one checkpoint at a time (PASSIVE: it never waits for, nor holds
        # up, the writer), instead of by the commit that crossed SQLite's
        # 1,000-page mark, which made every few ingest commits that much longer.
        now = time.monotonic()
        if now < self._checkpoint_due or (self._checkpoint is not None and not self._checkpoint.done()):
            return
        self._checkpoint_due = now + CHECKPOINT_EVERY_S
        self._checkpoint = asyncio.create_task(self._checkpoint_wal(), name="z4j-sqlite-checkpoint")

    async def _checkpoint_wal(self) -> None:
        if self._checkpointer is None:
            return
        try:
            await self._checkpointer.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except Exception as exc:  # noqa: BLE001 - the writer's own checkpoint is the fallback
            log.warning("background checkpoint failed: %s", exc)

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        assert self._reader is not None, "store is not open"
        async with self._reader.execute(sql, params) as cur:
            return list(await cur.fetchall())

    async def write(self, fn: Callable[[_Tx], Awaitable[T]]) -> T:
        assert self._writer is not None, "store is not open"
        async with self._lock:
            tx = _Tx(self._writer)
            await tx.execute("BEGIN IMMEDIATE")
            try:
                result = await fn(tx)
            except BaseException:
                await tx.execute("ROLLBACK")
                raise
            await tx.execute("COMMIT")
            return result

    async def write_inline(self, fn: Callable[[_InlineTx], Awaitable[T]]) -> T:
        assert self._writer is not None and self._writer.conn is not None, "store is not open"
        conn = self._writer.conn

        def transaction() -> T:
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = _run(fn(_InlineTx(conn)))
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return result

        async with self._lock:
            return await self._writer.call(transaction)

    async def search_condition(self, text: str) -> tuple[str, list[Any]]:
        # The trigram index (z4j db text-index) finds a text of three
        # characters or more, by its trigrams ANDed (the index keeps no
        # positions: textindex.py). FTS5 answers an AND by reading every one
        # of its trigrams' lists, and a rare text is mostly common trigrams
        # ("order-4242424": "ord", "rde", … are in every row). So each list
        # is sized first (a count that stops past INDEX_LIST_MAX, and the
        # matches in a few short stretches of the table), and the rows found
        # by the rarest trigrams are checked against the text itself:
        # - a trigram with a short list: the two rarest, intersected;
        # - every trigram common: the sparse ones (sampled below SPARSE_DENSITY),
        #   intersected ("-42", "424", "242"… of an order id: a handful of
        #   rows in millions);
        # - too many rows that way, and the text in many tasks too (a sample
        #   of the two sparsest trigrams' rows says): the newest-first walk,
        #   probing the pair's set where it is at most MEMBER_MAX rows;
        # - else every trigram ANDed says whether the text itself is rare;
        #   when it is not, the newest-first walk fills the page sooner.
        # Without the index, every search walks.
        like, like_params = self.like_condition(text)
        if len(text) < 3 or not await self.has_text_index():
            return like, like_params
        # A subset of the trigrams still finds every task holding the text.
        tokens = [_fts_term(t) for t in dict.fromkeys(text[i:i + 3] for i in range(len(text) - 2))]
        tokens = tokens[:SEARCH_TRIGRAMS_MAX]
        count = "(SELECT count(*) FROM (SELECT 1 FROM tasks_text WHERE tasks_text MATCH ? LIMIT ?))"
        counts = (await self.fetchall("SELECT " + ", ".join([count] * len(tokens)),
                                      [v for token in tokens for v in (token, INDEX_LIST_MAX + 1)]))[0]
        if 0 in counts:
            return "0", []  # a trigram no task has: nothing matches
        stats = sorted(zip(counts, tokens))
        # Trigrams are not the text: what they find is checked against it.
        checked = f"{_FOUND} AND {like}"
        if stats[0][0] <= INDEX_LIST_MAX:
            found = await self._text_rows(" AND ".join(t for _, t in stats[:2]))
            return (like, like_params) if found is None else (checked, [found, *like_params])
        (low, high), densities = await self._densities(tokens)
        span = high - low + 1
        ranked = sorted(zip(densities, tokens))
        sparse = [r for r in ranked if r[0] < SPARSE_DENSITY][:SPARSE_TERMS] or ranked[:1]
        # (Two or fewer: the same query as the pair's below, asked once there.)
        if len(sparse) > 2 and span * math.prod(d for d, _ in sparse) <= INDEX_LIST_MAX:
            found = await self._text_rows(" AND ".join(t for _, t in sparse))
            if found is not None:
                return checked, [found, *like_params]
        # More rows than the index list takes. The first rows (oldest first)
        # of the two sparsest say how many they match in all, and how many
        # of those hold the text: a text in more tasks than the index list
        # takes is walked newest first, probing the pair's set where it is
        # not too long. Two lists, not all: an AND reads each of its lists
        # whole in FTS5, and a list of 10 % of ten million tasks costs tens
        # of ms where two sparse ones cost one or two.
        pair = " AND ".join(t for _, t in sparse[:2])
        first = await self._first_rows(pair)
        if len(first) <= INDEX_LIST_MAX:
            return checked, [_json_list(first), *like_params]
        rows = len(first) * span / (first[-1] - low + 1)
        sample = _json_list(first[:HOLDING_SAMPLE])
        holding = (await self.fetchall(f"SELECT count(*) FROM tasks WHERE {checked}", [sample, *like_params]))[0][0]
        if rows * holding / min(len(first), HOLDING_SAMPLE) > INDEX_LIST_MAX:
            return (f"{_MEMBER} AND {like}", [pair, *like_params]) if rows <= MEMBER_MAX else (like, like_params)
        # The text itself may still be rare: all its trigrams together say.
        found = await self._text_rows(" AND ".join(tokens))
        return (like, like_params) if found is None else (checked, [found, *like_params])

    async def _densities(self, tokens: list[str]) -> tuple[tuple[int, int], list[float]]:
        """The task table's lowest and highest rowid, and each token's share
        of the rows in DENSITY_WINDOWS stretches of DENSITY_ROWS rows spread
        over the table (an estimate read from a few list entries, whatever
        the table's size)."""
        low, high = (await self.fetchall("SELECT (SELECT min(rowid) FROM tasks), (SELECT max(rowid) FROM tasks)"))[0]
        starts = [low + (high - low - DENSITY_ROWS) * (2 * k + 1) // (2 * DENSITY_WINDOWS)
                  for k in range(DENSITY_WINDOWS)]
        window = "(SELECT count(*) FROM tasks_text WHERE tasks_text MATCH ? AND rowid >= ? AND rowid < ?)"
        sums = ", ".join(["(" + " + ".join([window] * len(starts)) + ")"] * len(tokens))
        params = [v for token in tokens for start in starts for v in (token, start, start + DENSITY_ROWS)]
        matches = (await self.fetchall("SELECT " + sums, params))[0]
        return (low, high), [m / (DENSITY_WINDOWS * DENSITY_ROWS) for m in matches]

    async def _first_rows(self, query: str) -> list[int]:
        """The lowest INDEX_LIST_MAX + 1 rowids the text index matches for ``query``, in order."""
        rows = await self.fetchall("SELECT rowid FROM tasks_text WHERE tasks_text MATCH ? ORDER BY rowid LIMIT ?",
                                   (query, INDEX_LIST_MAX + 1))
        return [r[0] for r in rows]

    async def _text_rows(self, query: str) -> str | None:
        """The rowids the text index matches for ``query`` (a JSON list), or
        None when there are more than INDEX_LIST_MAX."""
        rows = await self._first_rows(query)
        return None if len(rows) > INDEX_LIST_MAX else _json_list(rows)

    async def prefix_condition(self, project_id: int, prefix: str) -> str:
        # SQLite's statistics cannot tell a prefix of a few names from one of
        # half the table. Few rows: read them from the name index and sort
        # them; many: walk the list newest first (``+name`` keeps the name
        # index out), where the page fills at once.
        rows = await self.fetchall(
            "SELECT count(*) FROM (SELECT 1 FROM tasks WHERE project_id = ? AND name >= ? AND name < ? LIMIT ?)",
            (project_id, prefix, prefix + "\U0010ffff", INDEX_LIST_MAX + 1),
        )
        return _FEW_NAMES if rows[0][0] <= INDEX_LIST_MAX else "+name >= ? AND +name < ?"

    async def list_index(self, project_id: int, query: TaskQuery, where: list[str]) -> str:
        # SQLite's planner picks the task list's index from statistics it
        # does not have (no ANALYZE: an equality then looks rare or the newest-
        # first walk looks cheap, by the query's shape) or has as averages
        # (after ANALYZE one queue of twelve "is" a twelfth of the table,
        # whichever it is): a queue of two hundred tasks among ten million was
        # found by walking all of them (6.4 s). So the store chooses:
        # - a list already narrowed (the rows of a rare text, a prefix of few
        #   names, one workflow): the planner reads those few and sorts them;
        # - no equality filter: the newest-first walk (ix_tasks_created);
        # - one: its own index, which gives its rows newest first;
        # - several: the one matching at most INDEX_LIST_MAX tasks (fewest
        #   first; read and sorted), else the first single value in
        #   LIST_INDEXED's order, else the walk.
        if query.root_id or query.parent_id or any(_FOUND in c or c == _FEW_NAMES for c in where):
            return ""
        asked = {"name": [query.name] if query.name and not query.name.endswith("*") else [],
                 "worker": [query.worker] if query.worker else [], "queue": [query.queue] if query.queue else [],
                 "state": list(query.states), "engine": [query.engine] if query.engine else []}
        candidates = [(column, asked[column]) for column in LIST_INDEXED if asked[column]]
        single = [column for column, values in candidates if len(values) == 1]
        if not candidates:
            return " INDEXED BY ix_tasks_created"
        if len(candidates) == 1 and single:
            return f" INDEXED BY ix_tasks_{single[0]}"
        counts = []
        for column, values in candidates:
            rows = await self.fetchall(
                f"SELECT count(*) FROM (SELECT 1 FROM tasks INDEXED BY ix_tasks_{column} WHERE project_id = ? "
                f"AND {column} IN ({', '.join('?' for _ in values)}) LIMIT ?)",
                (project_id, *values, INDEX_LIST_MAX + 1),
            )
            counts.append((rows[0][0], column))
        fewest, column = min(counts)
        if fewest <= INDEX_LIST_MAX:
            return f" INDEXED BY ix_tasks_{column}"
        return f" INDEXED BY ix_tasks_{single[0]}" if single else " INDEXED BY ix_tasks_created"

    async def insert_events(self, tx: _Tx, rows: list[tuple]) -> set[str]:
        # One writer holds the database (BEGIN IMMEDIATE), so "look, then
        # insert what is missing" cannot race. One statement for the whole
        # group (the ids as one JSON array): every await here is a turn of the
        # event loop that the commit may wait behind.
        found = await tx.fetchall(
            "SELECT id FROM task_events WHERE id IN (SELECT value FROM json_each(?))",
            (_json_list([row[0] for row in rows]),),
        )
        existing = {r[0] for r in found}
        new_rows = [row for row in rows if row[0] not in existing] if existing else rows
        if new_rows:
            await tx.executemany(_INSERT_EVENT_SQL, new_rows)
        return {row[0] for row in new_rows}
