"""SQL of the reconciler (services/reconciler.py). Mixed into
:class:`~z4j_collector.store.base.SqlStore`.

A task is a candidate while it is ``received``/``started`` and either its
worker is gone (the worker row says offline, or it has not been heard of
for ``worker_offline_after_s``) or it has run for ``stuck_after_s``.
Candidates are taken in the order they became due: ``reconcile_after``
(the next-look time the reconciler wrote when it could not settle the task)
or, for a task never looked at, its last activity. That is a queue, not
"oldest first": a task that keeps failing goes to the back each time.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import msgspec

from z4j_agents import protocol as p
from z4j_collector import taskmerge

SETTING_COLUMNS = ("stuck_after_s", "worker_offline_after_s", "reconcile_batch", "lost_unprobed_after_s")
CANDIDATE_COLUMNS = (
    "engine", "task_id", "state", "worker", "received_at", "started_at", "updated_at", "reconcile_attempts",
    "worker_state", "worker_seen_at", "agent_id",
)
OPEN_STATES = ("received", "started")
_encode = msgspec.json.Encoder().encode


class ReconcileSql:
    """Reconciler queries; ``self`` is the SqlStore."""

    async def reconcile_settings(self, project_id: int) -> dict[str, Any]:
        """The project's own settings (None where it keeps the default)."""
        row = await self.fetchone(  # type: ignore[attr-defined]
            f"SELECT {', '.join(SETTING_COLUMNS)} FROM project_settings WHERE project_id = ?", (project_id,))
        return dict(zip(SETTING_COLUMNS, row)) if row else dict.fromkeys(SETTING_COLUMNS)

    async def set_reconcile_settings(self, tx: Any, project_id: int, values: dict[str, Any]) -> None:
        """Replace the project's settings row (None: back to the default)."""
        cols = ("project_id",) + SETTING_COLUMNS + ("updated_at",)
        row = [project_id, *(values.get(c) for c in SETTING_COLUMNS), time.time()]
        await tx.execute(
            f"INSERT INTO project_settings ({', '.join(cols)}) VALUES ({', '.join('?' for _ in cols)}) "
            f"ON CONFLICT (project_id) DO UPDATE SET "
            + ", ".join(f"{c} = excluded.{c}" for c in cols[1:]), row)

    async def stuck_candidates(self, project_id: int, now: float, stuck_after_s: float,
                               worker_offline_after_s: float, limit: int) -> list[dict[str, Any]]:
        """Up to ``limit`` stuck tasks due for a look, the longest-waiting first."""
        offline_before = now - worker_offline_after_s
        rows = await self.fetchall(  # type: ignore[attr-defined]
            "SELECT t.engine, t.task_id, t.state, t.worker, t.received_at, t.started_at, t.updated_at, "
            "t.reconcile_attempts, w.state, w.last_seen_at, t.agent_id "
            "FROM tasks t LEFT JOIN workers w ON w.project_id = t.project_id AND w.engine = t.engine "
            "AND w.name = t.worker "
            "WHERE t.project_id = ? AND t.state IN ('received', 'started') "
            "AND COALESCE(t.reconcile_after, 0) <= ? "
            "AND (w.state = 'offline' OR COALESCE(w.last_seen_at, t.updated_at) < ? "
            "OR COALESCE(t.started_at, t.received_at, t.updated_at) < ?) "
            "ORDER BY COALESCE(t.reconcile_after, t.updated_at), t.engine, t.task_id LIMIT ?",
            (project_id, now, offline_before, now - stuck_after_s, limit))
        return [dict(zip(CANDIDATE_COLUMNS, r)) for r in rows]

    async def count_stuck(self, project_id: int, now: float, stuck_after_s: float,
                          worker_offline_after_s: float) -> int:
        row = await self.fetchone(  # type: ignore[attr-defined]
            "SELECT COUNT(*) FROM tasks t LEFT JOIN workers w ON w.project_id = t.project_id "
            "AND w.engine = t.engine AND w.name = t.worker "
            "WHERE t.project_id = ? AND t.state IN ('received', 'started') "
            "AND (w.state = 'offline' OR COALESCE(w.last_seen_at, t.updated_at) < ? "
            "OR COALESCE(t.started_at, t.received_at, t.updated_at) < ?)",
            (project_id, now - worker_offline_after_s, now - stuck_after_s))
        return row[0] if row else 0

    async def reconcile_later(self, project_id: int, engine: str, due: Sequence[tuple[str, float]]) -> None:
        """Count one more attempt on each (task_id, next look) and set its next look."""
        if not due:
            return

        async def tx_fn(tx: Any) -> None:
            await tx.executemany(
                "UPDATE tasks SET reconcile_after = ?, reconcile_attempts = COALESCE(reconcile_attempts, 0) + 1 "
                "WHERE project_id = ? AND engine = ? AND task_id = ?",
                [(after, project_id, engine, task_id) for task_id, after in due])

        await self.write(tx_fn)  # type: ignore[attr-defined]

    async def lock_open_tasks(self, tx: Any, project_id: int, engine: str,
                              task_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Of ``task_ids``, those still received/started, locked for this
        transaction: a real event committed meanwhile wins over the guess."""
        out: dict[str, dict[str, Any]] = {}
        ids = list(task_ids)
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            rows = await tx.fetchall(
                f"SELECT task_id, state, engine_state, worker FROM tasks WHERE project_id = ? AND engine = ? "
                f"AND task_id IN ({', '.join('?' for _ in chunk)}) AND state IN ('received', 'started')"
                f"{self.for_update}",  # type: ignore[attr-defined]
                [project_id, engine, *chunk])
            out.update({r[0]: {"state": r[1], "engine_state": r[2], "worker": r[3]} for r in rows})
        return out

    async def apply_reconciled(self, tx: Any, project_id: int, events: list[p.TaskEvent]) -> None:
        """Store the reconciler's events (kind lost/succeeded/failed/…) and fold
        them into their tasks by the usual rules (taskmerge), in ``tx``.
        The events show on each task's timeline; reconcile_after is cleared."""
        if not events:
            return
        now = time.time()
        rows = [(ev.id, project_id, ev.engine, ev.task_id, ev.kind, ev.ts, now, None, _encode(ev).decode())
                for ev in events]
        await self.insert_events(tx, rows)  # type: ignore[attr-defined]
        await self.upsert_tasks(tx, taskmerge.fold(project_id, None, events))  # type: ignore[attr-defined]
        await tx.executemany(
            "UPDATE tasks SET reconcile_after = NULL WHERE project_id = ? AND engine = ? AND task_id = ?",
            [(project_id, ev.engine, ev.task_id) for ev in events])

    async def read_back_tasks(self, tx: Any, project_id: int, engine: str,
                              task_ids: Sequence[str]) -> list[dict[str, Any]]:
        """The changed rows for live streams (project_id + summary columns)."""
        return await self._read_back(tx, [[project_id, engine, t] for t in task_ids])  # type: ignore[attr-defined]
