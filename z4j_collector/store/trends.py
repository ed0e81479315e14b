"""SQL of trends (task_rollups) and retention. Mixed into SqlStore.

Rollup rows are keyed by (project, bucket size, bucket start, engine, name,
queue); counts add up in SQL, the runtime and queue-wait sketches are merged
in Python under a row lock (FOR UPDATE on PostgreSQL; SQLite's single writer
holds the database), so several collectors can flush into the same row.

Retention deletes at most ``limit`` rows per statement; the caller runs one
statement per transaction so ingest waits for one small batch at most.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

ROLLUP_STATES = ("pending", "received", "started", "retry", "success", "failure", "revoked", "rejected", "lost")
COUNT_COLUMNS = tuple(f"n_{s}" for s in ROLLUP_STATES)
ROLLUP_KEY = ("project_id", "bucket_size", "bucket_start", "engine", "name", "queue")
DEFAULT_ROLLUP_DAYS = 400

RollupKey = tuple[int, str, float, str, str, str]


def event_id_before(ts: float) -> str:
    """Event ids start with 12 hex digits of milliseconds (protocol.new_id):
    every id made before ``ts`` sorts below this one."""
    return f"{max(0, int(ts * 1000)):012x}"


class TrendsSql:
    """Needs ``fetchall``, ``write`` and ``for_update`` (SqlStore)."""

    # ------------------------------------------------------------ ingest side

    async def trend_task_facts(self, project_id: int, engine: str, task_ids: Sequence[str]
                               ) -> dict[str, tuple[str | None, str | None, float | None, float | None]]:
        """task_id -> (name, queue, sent_at, started_at) of committed task rows."""
        rows = await self.tasks_by_id(  # type: ignore[attr-defined]
            self, project_id, engine, task_ids, ("task_id", "name", "queue", "sent_at", "started_at"))
        return {r[0]: (r[1], r[2], r[3], r[4]) for r in rows}

    async def merge_rollups(self, rows: dict[RollupKey, tuple[list[int], str | None, str | None]],
                            merge_sketch: Any) -> None:
        """Add counts and merge sketches into the rollup rows, one transaction.

        ``rows``: key -> (counts in ROLLUP_STATES order, runtime sketch text,
        wait sketch text); ``merge_sketch(stored_text, new_text) -> text``."""
        if not rows:
            return
        now = time.time()
        keys = list(rows)
        insert = (f"INSERT INTO task_rollups ({', '.join(ROLLUP_KEY)}, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?) "
                  f"ON CONFLICT ({', '.join(ROLLUP_KEY)}) DO NOTHING")
        where = " AND ".join(f"{c} = ?" for c in ROLLUP_KEY)
        update = (f"UPDATE task_rollups SET {', '.join(f'{c} = {c} + ?' for c in COUNT_COLUMNS)}, "
                  f"runtime_sketch = ?, wait_sketch = ?, updated_at = ? WHERE {where}")
        select = f"SELECT runtime_sketch, wait_sketch FROM task_rollups WHERE {where}{self.for_update}"  # type: ignore[attr-defined]

        async def tx_fn(tx: Any) -> None:
            await tx.executemany(insert, [(*key, now) for key in keys])
            updates = []
            for key in sorted(keys):  # one lock order for every collector
                counts, runtime, wait = rows[key]
                stored = await tx.fetchall(select, key)
                old_runtime, old_wait = stored[0] if stored else (None, None)
                updates.append((*counts, merge_sketch(old_runtime, runtime), merge_sketch(old_wait, wait), now, *key))
            await tx.executemany(update, updates)

        await self.write(tx_fn)  # type: ignore[attr-defined]

    # ------------------------------------------------------------ reads

    async def read_rollups(self, project_id: int, bucket_size: str, since: float, until: float,
                           engine: str | None = None, name: str | None = None, queue: str | None = None
                           ) -> list[dict[str, Any]]:
        where = ["project_id = ?", "bucket_size = ?", "bucket_start >= ?", "bucket_start < ?"]
        params: list[Any] = [project_id, bucket_size, since, until]
        for column, value in (("engine", engine), ("name", name), ("queue", queue)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        cols = ("bucket_start", "engine", "name", "queue", *COUNT_COLUMNS, "runtime_sketch", "wait_sketch")
        rows = await self.fetchall(  # type: ignore[attr-defined]
            f"SELECT {', '.join(cols)} FROM task_rollups WHERE {' AND '.join(where)} ORDER BY bucket_start",
            params)
        return [dict(zip(cols, r)) for r in rows]

    # ------------------------------------------------------------ retention

    async def get_retention(self, project_id: int) -> dict[str, Any]:
        row = await self.fetchone(  # type: ignore[attr-defined]
            "SELECT p.retention_days, r.events_days, r.tasks_days, r.rollups_days, r.updated_at FROM projects p "
            "LEFT JOIN project_retention r ON r.project_id = p.id WHERE p.id = ?", (project_id,))
        if row is None:
            return {}
        base = int(row[0] or 30)
        return {"events_days": row[1] if row[1] is not None else base,
                "tasks_days": row[2] if row[2] is not None else base,
                "rollups_days": row[3] if row[3] is not None else DEFAULT_ROLLUP_DAYS,
                "set": {"events_days": row[1], "tasks_days": row[2], "rollups_days": row[3]},
                "updated_at": row[4]}

    async def set_retention(self, tx: Any, project_id: int, values: dict[str, int | None]) -> None:
        """Upsert the given columns (None: back to the default) inside the caller's transaction."""
        cols = list(values)
        await tx.execute(
            f"INSERT INTO project_retention (project_id, {', '.join(cols)}, updated_at) "
            f"VALUES (?, {', '.join('?' for _ in cols)}, ?) ON CONFLICT (project_id) DO UPDATE SET "
            f"{', '.join(f'{c} = excluded.{c}' for c in cols)}, updated_at = excluded.updated_at",
            (project_id, *[values[c] for c in cols], time.time()))

    async def retention_projects(self) -> list[int]:
        rows = await self.fetchall("SELECT id FROM projects ORDER BY id")  # type: ignore[attr-defined]
        return [int(r[0]) for r in rows]

    async def delete_old_events(self, project_id: int, cutoff: float, limit: int) -> int:
        # Walks the primary key (time-ordered ids) up to the cutoff; ts guards
        # against an id that does not follow protocol.new_id.
        return await self.execute(  # type: ignore[attr-defined]
            "DELETE FROM task_events WHERE id IN (SELECT id FROM task_events WHERE id < ? AND project_id = ? "
            "AND ts < ? LIMIT ?)", (event_id_before(cutoff), project_id, cutoff, limit))

    async def delete_old_tasks(self, project_id: int, cutoff: float, limit: int) -> int:
        # Created and last changed before the cutoff (walks ix_tasks_created).
        return await self.execute(  # type: ignore[attr-defined]
            "DELETE FROM tasks WHERE project_id = ? AND (engine, task_id) IN (SELECT engine, task_id FROM tasks "
            "WHERE project_id = ? AND created_at < ? AND updated_at < ? LIMIT ?)",
            (project_id, project_id, cutoff, cutoff, limit))

    async def delete_old_rollups(self, project_id: int, bucket_size: str, cutoff: float, limit: int) -> int:
        return await self.execute(  # type: ignore[attr-defined]
            "DELETE FROM task_rollups WHERE project_id = ? AND bucket_size = ? AND (bucket_start, engine, name, queue) "
            "IN (SELECT bucket_start, engine, name, queue FROM task_rollups WHERE project_id = ? AND bucket_size = ? "
            "AND bucket_start < ? LIMIT ?)", (project_id, bucket_size, project_id, bucket_size, cutoff, limit))
