"""All SQL of the collector, shared by SQLite and PostgreSQL.

SQL is written once with ``?`` placeholders; the PostgreSQL store rewrites
them to ``%s``. Dialect differences (bulk insert, case-insensitive search)
are the few methods the subclasses override.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import msgspec

from z4j_agents import protocol as p
from z4j_collector import taskmerge
from z4j_collector.store.identity import IdentitySql
from z4j_collector.store.notify import NotifySql
from z4j_collector.store.rules import RulesSql
from z4j_collector.store.reconcile import ReconcileSql
from z4j_collector.store.metrics import MetricsSql
from z4j_collector.store.schedules import ScheduleSql
from z4j_collector.store.trends import TrendsSql

T = TypeVar("T")

TASK_SUMMARY_COLUMNS = (
    "engine", "task_id", "name", "state", "engine_state", "queue", "worker", "runtime", "retries",
    "exception", "parent_id", "root_id", "group_id", "created_at", "sent_at", "received_at",
    "started_at", "finished_at", "updated_at",
)
TASK_DETAIL_COLUMNS = TASK_SUMMARY_COLUMNS + (
    "args", "kwargs", "result", "traceback", "eta", "chord_id", "redacted", "replay",
)
TREE_COLUMNS = (
    "task_id", "name", "state", "engine_state", "queue", "worker", "runtime", "retries", "exception",
    "parent_id", "root_id", "group_id", "chord_id", "created_at", "started_at", "finished_at",
)
TREE_LINKS = ("root_id", "group_id", "task_id")
_json_encode = msgspec.json.Encoder().encode


class Tx(Protocol):
    """What a write transaction offers; one per dialect."""

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int: ...
    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None: ...
    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]: ...


@dataclass(frozen=True)
class AgentRow:
    id: int
    project_id: int
    project: str
    name: str
    frame_key: bytes
    revoked: bool


@dataclass
class IngestItem:
    """One agent batch to commit."""

    project_id: int
    agent_id: int
    events: list[p.Event]
    dropped: int = 0


@dataclass
class IngestOutcome:
    accepted: int = 0
    duplicates: int = 0


@dataclass
class IngestResult:
    outcomes: list[IngestOutcome]
    tasks: list[dict[str, Any]] = field(default_factory=list)
    """Changed task rows (project_id + summary columns), for live streams."""
    workers: list[dict[str, Any]] = field(default_factory=list)
    runtimes: list[tuple[int, str, float]] = field(default_factory=list)
    """(project_id, engine, runtime) of each new event that reports a runtime (/metrics)."""
    fresh: list[tuple[int, list[p.TaskEvent]]] = field(default_factory=list)
    """(project_id, new task events) per batch, for trends (services/trends.py)."""


@dataclass(frozen=True)
class TaskQuery:
    states: tuple[str, ...] = ()
    not_states: tuple[str, ...] = ()
    name: str | None = None
    """Exact name, or a prefix when it ends with ``*``."""
    queue: str | None = None
    worker: str | None = None
    engine: str | None = None
    since: float | None = None
    until: float | None = None
    search: str | None = None
    parent_id: str | None = None
    root_id: str | None = None


Cursor = tuple[float, str, str]


class SqlStore(IdentitySql, ScheduleSql, MetricsSql, NotifySql, ReconcileSql, TrendsSql, RulesSql):
    dialect = "sql"
    partitioned_events = False
    """Whether task_events is partitioned by day (PostgreSQL, store/partitions.py)."""

    # -------------------------------------------------- dialect primitives

    async def open(self) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        raise NotImplementedError

    async def write(self, fn: Callable[[Tx], Awaitable[T]]) -> T:
        """Run ``fn`` in one write transaction; commit when it returns."""
        raise NotImplementedError

    async def write_inline(self, fn: Callable[[Tx], Awaitable[T]]) -> T:
        """``write`` for a transaction that awaits nothing but its statements
        (SQLite runs it whole in its writer thread)."""
        return await self.write(fn)

    async def insert_events(self, tx: Tx, rows: list[tuple]) -> set[str]:
        """Insert task event rows; return the ids that were new."""
        raise NotImplementedError

    async def upsert_tasks(self, tx: Tx, rows: list[list[Any]]) -> None:
        await tx.executemany(UPSERT_TASK_SQL, rows)

    async def search_condition(self, text: str) -> tuple[str, list[Any]]:
        """A WHERE condition for free text: ``text`` anywhere in one of
        SEARCH_COLUMNS, case-insensitively. This one scans; each database
        overrides it with its text index."""
        return self.like_condition(text)

    async def prefix_condition(self, project_id: int, prefix: str) -> str:
        """A WHERE condition for names starting with ``prefix`` (two
        parameters: the range's ends). PostgreSQL's statistics choose between
        the name index and the newest-first walk; SQLite overrides this."""
        return "name >= ? AND name < ?"

    async def list_index(self, project_id: int, query: TaskQuery, where: list[str]) -> str:
        """What follows ``FROM tasks`` in the task list's query: an index hint
        where the database's planner needs one (SQLite overrides this;
        PostgreSQL's statistics choose well)."""
        return ""

    @staticmethod
    def like_condition(text: str) -> tuple[str, list[Any]]:
        condition = "(" + " OR ".join(f"{c} LIKE ? ESCAPE '\\'" for c in SEARCH_COLUMNS) + ")"
        return condition, [like_pattern(text)] * len(SEARCH_COLUMNS)

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """One statement in its own write transaction; the number of rows changed."""
        return await self.write(lambda tx: tx.execute(sql, params))

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> tuple | None:
        rows = await self.fetchall(sql, params)
        return rows[0] if rows else None

    # -------------------------------------------------- projects

    async def project_id(self, slug: str) -> int | None:
        row = await self.fetchone("SELECT id FROM projects WHERE slug = ?", (slug,))
        return row[0] if row else None

    async def list_projects(self) -> list[dict[str, Any]]:
        rows = await self.fetchall("SELECT id, slug, name, retention_days, created_at FROM projects ORDER BY slug")
        return [dict(zip(("id", "slug", "name", "retention_days", "created_at"), r)) for r in rows]

    # -------------------------------------------------- agents

    async def create_agent(self, project_id: int, name: str, token_hash: str, frame_key: bytes) -> int:
        return await self.write(lambda tx: self.insert_agent(tx, project_id, name, token_hash, frame_key, time.time()))

    async def agent_by_token(self, token_hash: str) -> AgentRow | None:
        row = await self.fetchone(
            "SELECT a.id, a.project_id, p.slug, a.name, a.frame_key, a.revoked_at "
            "FROM agents a JOIN projects p ON p.id = a.project_id WHERE a.token_hash = ?",
            (token_hash,),
        )
        if row is None:
            return None
        return AgentRow(row[0], row[1], row[2], row[3], bytes(row[4]), row[5] is not None)

    async def agent_seen(self, agent_id: int, hostname: str, version: str, engines: list[str]) -> None:
        await self.execute(
            "UPDATE agents SET last_seen_at = ?, hostname = ?, version = ?, engines = ? WHERE id = ?",
            (time.time(), hostname, version, _json_encode(engines).decode(), agent_id),
        )

    async def agent_heartbeat(self, agent_id: int, dropped: int) -> None:
        await self.execute(
            "UPDATE agents SET last_seen_at = ?, dropped_events = ? WHERE id = ?", (time.time(), dropped, agent_id)
        )

    async def list_agents(self, project_id: int) -> list[dict[str, Any]]:
        cols = ("id", "name", "created_at", "revoked_at", "last_seen_at", "hostname", "version", "engines", "dropped_events")
        rows = await self.fetchall(
            f"SELECT {', '.join(cols)} FROM agents WHERE project_id = ? ORDER BY name", (project_id,)
        )
        out = []
        for r in rows:
            d = dict(zip(cols, r))
            d["engines"] = msgspec.json.decode(d["engines"]) if d["engines"] else []
            out.append(d)
        return out

    # -------------------------------------------------- ingest

    async def ingest(self, items: list[IngestItem], watched: frozenset[int] = frozenset()) -> IngestResult:
        """Commit every item's events in one transaction.

        Duplicates (same event id, e.g. a batch resent after a reconnect) are
        dropped; only new events move tasks. For projects in ``watched`` (a
        live client is subscribed) the merged rows of changed tasks are read
        back in the same transaction.
        """
        return await self.write_inline(lambda tx: self._ingest(tx, items, watched))

    async def _ingest(self, tx: Tx, items: list[IngestItem], watched: frozenset[int]) -> IngestResult:
        now = time.time()
        event_rows: list[tuple] = []
        owner: dict[str, int] = {}
        for index, item in enumerate(items):
            for ev in item.events:
                if type(ev) is p.TaskEvent and ev.id not in owner:
                    owner[ev.id] = index
                    event_rows.append((
                        ev.id, item.project_id, ev.engine, ev.task_id, ev.kind, ev.ts, now,
                        item.agent_id, _json_encode(ev).decode(),
                    ))
        new_ids = await self.insert_events(tx, event_rows) if event_rows else set()
        outcomes = [IngestOutcome() for _ in items]
        fresh: dict[int, list[p.TaskEvent]] = {}
        for index, item in enumerate(items):
            outcome = outcomes[index]
            for ev in item.events:
                if type(ev) is p.TaskEvent:
                    if ev.id in new_ids and owner.get(ev.id) == index:
                        outcome.accepted += 1
                        fresh.setdefault(index, []).append(ev)
                        new_ids.discard(ev.id)
                    else:
                        outcome.duplicates += 1
                else:
                    outcome.accepted += 1
        task_rows: list[list[Any]] = []
        runtimes: list[tuple[int, str, float]] = []
        fresh_events: list[tuple[int, list[p.TaskEvent]]] = []
        for index, events in fresh.items():
            item = items[index]
            task_rows.extend(taskmerge.fold(item.project_id, item.agent_id, events))
            runtimes.extend((item.project_id, ev.engine, ev.runtime) for ev in events if ev.runtime is not None)
            fresh_events.append((item.project_id, events))
        if task_rows:
            await self.upsert_tasks(tx, _one_row_per_key(task_rows))
        workers = await self._ingest_workers(tx, items)
        await self._ingest_queues(tx, items)
        for item in items:
            if item.dropped:
                await tx.execute(
                    "UPDATE agents SET dropped_events = ? WHERE id = ?", (item.dropped, item.agent_id)
                )
        changed = await self._read_back(tx, [r for r in task_rows if r[0] in watched]) if watched else []
        return IngestResult(outcomes=outcomes, tasks=changed, workers=workers, runtimes=runtimes,
                            fresh=fresh_events)

    async def _read_back(self, tx: Tx, rows: list[list[Any]]) -> list[dict[str, Any]]:
        keys: dict[tuple[int, str], list[str]] = {}
        for row in rows:
            keys.setdefault((row[0], row[1]), []).append(row[2])
        out: list[dict[str, Any]] = []
        columns = ("project_id",) + TASK_SUMMARY_COLUMNS
        for (project_id, engine), ids in keys.items():
            found = await self.tasks_by_id(tx, project_id, engine, ids, columns)
            out.extend(dict(zip(columns, r)) for r in found)
        return out

    async def tasks_by_id(self, db: Any, project_id: int, engine: str, task_ids: Sequence[str],
                          columns: Sequence[str]) -> list[tuple]:
        """``columns`` of the stored tasks among ``task_ids`` (one project and
        engine), read through the primary key; ``db`` is the store or a transaction."""
        ids = list(dict.fromkeys(task_ids))
        out: list[tuple] = []
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            out.extend(await db.fetchall(
                f"SELECT {', '.join(columns)} FROM tasks WHERE project_id = ? AND engine = ? "
                f"AND task_id IN ({', '.join('?' for _ in chunk)})",
                [project_id, engine, *chunk],
            ))
        return out

    def note_ingest(self) -> None:
        """Called after each ingest commit (PostgreSQL keeps a young table's statistics)."""

    async def _ingest_workers(self, tx: Tx, items: list[IngestItem]) -> list[dict[str, Any]]:
        latest: dict[tuple, tuple] = {}
        for item in items:
            for ev in item.events:
                if type(ev) is p.WorkerEvent:
                    key = (item.project_id, ev.engine, ev.worker)
                    state = "offline" if ev.kind == "offline" else "online"
                    info = _json_encode(ev.info).decode() if ev.info is not None else None
                    prior = latest.get(key)
                    if prior is None or prior[4] <= ev.ts:
                        info = info if info is not None or prior is None else prior[6]
                        latest[key] = (item.project_id, ev.engine, ev.worker, state, ev.ts, ev.ts, info, item.agent_id)
        if not latest:
            return []
        await tx.executemany(UPSERT_WORKER_SQL, list(latest.values()))
        return [
            {"project_id": r[0], "engine": r[1], "name": r[2], "state": r[3], "last_seen_at": r[5]}
            for r in latest.values()
        ]

    async def _ingest_queues(self, tx: Tx, items: list[IngestItem]) -> None:
        latest: dict[tuple, tuple] = {}
        for item in items:
            for ev in item.events:
                if type(ev) is p.QueueEvent:
                    key = (item.project_id, ev.engine, ev.queue)
                    if key not in latest or latest[key][4] <= ev.ts:
                        latest[key] = (item.project_id, ev.engine, ev.queue, ev.depth, ev.ts, item.agent_id)
        if latest:
            await tx.executemany(UPSERT_QUEUE_SQL, list(latest.values()))

    # -------------------------------------------------- reads

    async def list_tasks(
        self, project_id: int, query: TaskQuery, limit: int, after: Cursor | None = None
    ) -> list[dict[str, Any]]:
        where = ["project_id = ?"]
        params: list[Any] = [project_id]
        if query.states:
            where.append(f"state IN ({', '.join('?' for _ in query.states)})")
            params.extend(query.states)
        if query.not_states:
            where.append(f"state NOT IN ({', '.join('?' for _ in query.not_states)})")
            params.extend(query.not_states)
        if query.name:
            if query.name.endswith("*"):
                where.append(await self.prefix_condition(project_id, query.name[:-1]))
                prefix = query.name[:-1]
                params.extend([prefix, prefix + "\U0010ffff"])
            else:
                where.append("name = ?")
                params.append(query.name)
        for column in ("queue", "worker", "engine", "parent_id", "root_id"):
            value = getattr(query, column)
            if value:
                where.append(f"{column} = ?")
                params.append(value)
        if query.since is not None:
            where.append("created_at >= ?")
            params.append(query.since)
        # A keyset page inside a time range: one upper bound, the tighter (an
        # index range has one; given both, SQLite took "until" and read the
        # whole range below it, checking the cursor on every row).
        cursor_first = after is not None and (query.until is None or after[0] < query.until)
        if query.until is not None and not cursor_first:
            where.append("created_at < ?")
            params.append(query.until)
        if query.search:
            condition, values = await self.search_condition(query.search)
            where.append(condition)
            params.extend(values)
        if cursor_first:
            # created_at <= … repeats the first term on its own, so the
            # (project_id, filter, created_at) indexes seek to the page too
            where.append("created_at <= ? AND (created_at, engine, task_id) < (?, ?, ?)")
            params.extend([after[0], *after])
        source = await self.list_index(project_id, query, where)
        sql = (
            f"SELECT {', '.join(TASK_SUMMARY_COLUMNS)} FROM tasks{source} WHERE {' AND '.join(where)} "
            "ORDER BY created_at DESC, engine DESC, task_id DESC LIMIT ?"
        )
        params.append(limit)
        rows = await self.fetchall(sql, params)
        return [dict(zip(TASK_SUMMARY_COLUMNS, r)) for r in rows]

    async def count_tasks_by_state(self, project_id: int) -> dict[str, int]:
        rows = await self.fetchall(
            "SELECT state, COUNT(*) FROM tasks WHERE project_id = ? GROUP BY state", (project_id,)
        )
        return {state: count for state, count in rows}

    async def get_task(self, project_id: int, task_id: str, engine: str | None = None,
                       events: bool = False) -> dict[str, Any] | None:
        """One task; with ``events``, its timeline as of the same row: the
        events the row was folded from, never one committed after it was read
        (a timeline with a "sent" event beside a null ``sent_at``)."""
        sql = f"SELECT {', '.join(TASK_DETAIL_COLUMNS)}, event_ids FROM tasks WHERE project_id = ? AND task_id = ?"
        params: list[Any] = [project_id, task_id]
        if engine:
            sql += " AND engine = ?"
            params.append(engine)
        rows = await self.fetchall(sql + " ORDER BY updated_at DESC LIMIT 1", params)
        if not rows:
            return None
        task = dict(zip(TASK_DETAIL_COLUMNS, rows[0]))
        for column in ("args", "kwargs", "result"):
            if task[column] is not None:
                task[column] = msgspec.json.decode(task[column])
        task["redacted"] = bool(task["redacted"])
        task["replayable"] = task.pop("replay") is not None
        if events:
            task["events"] = await self._events_by_id(rows[0][-1])
        return task

    async def task_events(self, project_id: int, engine: str, task_id: str) -> list[dict[str, Any]]:
        row = await self.fetchone(
            "SELECT event_ids FROM tasks WHERE project_id = ? AND engine = ? AND task_id = ?",
            (project_id, engine, task_id),
        )
        return await self._events_by_id(row[0] if row else None)

    async def _events_by_id(self, event_ids: str | None) -> list[dict[str, Any]]:
        """The events of a task row's ``event_ids``, oldest first."""
        ids = event_ids.split(",") if event_ids else []
        events = []
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            found = await self.fetchall(
                f"SELECT data FROM task_events WHERE id IN ({', '.join('?' for _ in chunk)})", chunk
            )
            for (data,) in found:
                event = msgspec.json.decode(data)
                event.pop("replay", None)
                events.append(event)
        events.sort(key=lambda e: (e["ts"], e["id"]))
        return events

    async def tree_tasks(
        self, project_id: int, engine: str, column: str, values: Sequence[str], limit: int
    ) -> list[dict[str, Any]]:
        """Up to ``limit`` tasks of one engine whose ``column`` (root_id,
        group_id or task_id) is one of ``values``: the tree's building blocks."""
        if column not in TREE_LINKS:
            raise ValueError(f"no tree lookup by {column!r}")
        out: list[dict[str, Any]] = []
        values = list(values)
        for start in range(0, len(values), 500):
            if len(out) >= limit:
                break
            chunk = values[start:start + 500]
            rows = await self.fetchall(
                f"SELECT {', '.join(TREE_COLUMNS)} FROM tasks WHERE project_id = ? AND engine = ? "
                f"AND {column} IN ({', '.join('?' for _ in chunk)}) LIMIT ?",
                [project_id, engine, *chunk, limit - len(out)],
            )
            out.extend(dict(zip(TREE_COLUMNS, r)) for r in rows)
        return out

    async def list_workers(self, project_id: int) -> list[dict[str, Any]]:
        cols = ("engine", "name", "state", "first_seen_at", "last_seen_at", "info")
        rows = await self.fetchall(
            f"SELECT {', '.join(cols)} FROM workers WHERE project_id = ? ORDER BY engine, name", (project_id,)
        )
        out = []
        for r in rows:
            d = dict(zip(cols, r))
            d["info"] = msgspec.json.decode(d["info"]) if d["info"] else {}
            out.append(d)
        return out

    async def list_queues(self, project_id: int) -> list[dict[str, Any]]:
        cols = ("engine", "name", "depth", "updated_at")
        rows = await self.fetchall(
            f"SELECT {', '.join(cols)} FROM queues WHERE project_id = ? ORDER BY engine, name", (project_id,)
        )
        return [dict(zip(cols, r)) for r in rows]

    async def status_counts(self) -> dict[str, int]:
        counts = {}
        for table in ("users", "projects", "agents", "tasks", "task_events", "workers", "api_tokens"):
            row = await self.fetchone(f"SELECT COUNT(*) FROM {table}")
            counts[table] = row[0] if row else 0
        return counts

    # -------------------------------------------------- commands

    async def insert_command(
        self, tx: Tx, command_id: str, project_id: int, agent_id: int | None, action: str, args: dict[str, Any],
        requested_by: str,
    ) -> None:
        await tx.execute(
            "INSERT INTO commands (id, project_id, agent_id, action, args, state, requested_by, created_at) "
            "VALUES (?, ?, ?, ?, ?, 'pending', ?, ?)",
            (command_id, project_id, agent_id, action, _json_encode(args).decode(), requested_by, time.time()),
        )

    async def command_dispatched(self, command_id: str, sent_at: float) -> None:
        """Note when the command went to its agent. Its result may already be
        in (the agent answered before this ran): the time is kept, the state too."""
        await self.execute(
            "UPDATE commands SET dispatched_at = ?, "
            "state = CASE WHEN state = 'pending' THEN 'dispatched' ELSE state END "
            "WHERE id = ? AND dispatched_at IS NULL",
            (sent_at, command_id),
        )

    async def command_finished(
        self, tx: Tx, command_id: str, state: str, result: Any, error: str | None, agent_id: int | None = None
    ) -> tuple[int, str] | None:
        """Close a command once (with ``agent_id``, only if it was sent to that
        agent); its (project_id, action), or None when nothing was closed."""
        rows = await tx.fetchall(
            f"SELECT project_id, action, agent_id FROM commands WHERE id = ? "
            f"AND state IN ('pending', 'dispatched'){self.for_update}", (command_id,))
        if not rows or (agent_id is not None and rows[0][2] != agent_id):
            return None
        encoded = _json_encode(result).decode() if result is not None else None
        await tx.execute(
            "UPDATE commands SET state = ?, finished_at = ?, result = ?, error = ? WHERE id = ?",
            (state, time.time(), encoded, error, command_id),
        )
        return rows[0][0], rows[0][1]

    async def get_command(self, project_id: int, command_id: str) -> dict[str, Any] | None:
        cols = ("id", "agent_id", "action", "args", "state", "requested_by", "created_at",
                "dispatched_at", "finished_at", "result", "error")
        row = await self.fetchone(
            f"SELECT {', '.join(cols)} FROM commands WHERE project_id = ? AND id = ?", (project_id, command_id)
        )
        if row is None:
            return None
        d = dict(zip(cols, row))
        d["args"] = msgspec.json.decode(d["args"])
        d["result"] = msgspec.json.decode(d["result"]) if d["result"] is not None else None
        return d


SEARCH_COLUMNS = ("task_id", "name", "args", "kwargs", "result", "exception")
"""What the task list's free text searches (store/textindex.py indexes them when it is on)."""


def like_pattern(text: str) -> str:
    """``text`` anywhere, with LIKE's wildcards in it taken literally (escape: backslash)."""
    return "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def _one_row_per_key(rows: list[list[Any]]) -> list[list[Any]]:
    """Two items of one ingest group may carry events of the same task; an
    upsert statement may touch each row once, so fold them in Python first."""
    seen: dict[tuple, list[Any]] = {}
    for row in rows:
        key = (row[0], row[1], row[2])
        if key in seen:
            seen[key] = taskmerge.merge_rows(seen[key], row)
        else:
            seen[key] = row
    return list(seen.values()) if len(seen) != len(rows) else rows


def _upsert_task_sql() -> str:
    cols = taskmerge.TASK_COLUMNS
    newer = (
        "(excluded.state_rank > tasks.state_rank OR "
        "(excluded.state_rank = tasks.state_rank AND excluded.state_ts >= tasks.state_ts))"
    )
    sets = []
    for col in cols:
        if col in taskmerge.KEY_COLUMNS:
            continue
        if col in taskmerge.STATE_COLUMNS:
            sets.append(f"{col} = CASE WHEN {newer} THEN excluded.{col} ELSE tasks.{col} END")
        elif col == "created_at":
            sets.append("created_at = CASE WHEN excluded.created_at < tasks.created_at THEN excluded.created_at ELSE tasks.created_at END")
        elif col == "updated_at":
            sets.append("updated_at = CASE WHEN excluded.updated_at > tasks.updated_at THEN excluded.updated_at ELSE tasks.updated_at END")
        elif col == "retries":
            sets.append("retries = CASE WHEN tasks.retries IS NULL OR excluded.retries > tasks.retries THEN COALESCE(excluded.retries, tasks.retries) ELSE tasks.retries END")
        elif col == "redacted":
            sets.append("redacted = (excluded.redacted OR tasks.redacted)")
        elif col == "event_ids":
            sets.append(
                "event_ids = CASE WHEN tasks.event_ids IS NULL THEN excluded.event_ids "
                "WHEN excluded.event_ids IS NULL THEN tasks.event_ids "
                "ELSE tasks.event_ids || ',' || excluded.event_ids END"
            )
        else:
            sets.append(f"{col} = COALESCE(excluded.{col}, tasks.{col})")
    return (
        f"INSERT INTO tasks ({', '.join(cols)}) VALUES ({', '.join('?' for _ in cols)}) "
        f"ON CONFLICT (project_id, engine, task_id) DO UPDATE SET {', '.join(sets)}"
    )


UPSERT_TASK_SQL = _upsert_task_sql()
UPSERT_WORKER_SQL = (
    "INSERT INTO workers (project_id, engine, name, state, first_seen_at, last_seen_at, info, agent_id) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (project_id, engine, name) DO UPDATE SET "
    "state = CASE WHEN excluded.last_seen_at >= workers.last_seen_at THEN excluded.state ELSE workers.state END, "
    "last_seen_at = CASE WHEN excluded.last_seen_at > workers.last_seen_at THEN excluded.last_seen_at ELSE workers.last_seen_at END, "
    "info = COALESCE(excluded.info, workers.info), agent_id = excluded.agent_id"
)
UPSERT_QUEUE_SQL = (
    "INSERT INTO queues (project_id, engine, name, depth, updated_at, agent_id) VALUES (?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (project_id, engine, name) DO UPDATE SET "
    "depth = CASE WHEN excluded.updated_at >= queues.updated_at THEN excluded.depth ELSE queues.depth END, "
    "updated_at = CASE WHEN excluded.updated_at > queues.updated_at THEN excluded.updated_at ELSE queues.updated_at END, "
    "agent_id = excluded.agent_id"
)
INSERT_EVENT_COLUMNS = ("id", "project_id", "engine", "task_id", "kind", "ts", "ingested_at", "agent_id", "data")
