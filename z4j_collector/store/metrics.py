"""SQL behind ``GET /metrics``. Mixed into :class:`~z4j_collector.store.base.SqlStore`.

One scrape reads a handful of small aggregates: tasks and commands are one
GROUP BY each; workers and queues are small tables read whole. Rows carry the
project's slug so the exposition needs no second lookup.
"""

from __future__ import annotations

from typing import Any


class MetricsSql:
    """Needs ``fetchall`` (SqlStore)."""

    async def metric_task_counts(self) -> list[tuple[str, str, str, int]]:
        """(project, engine, state, count) over every task row."""
        rows = await self.fetchall(  # type: ignore[attr-defined]
            "SELECT p.slug, t.engine, t.state, t.n FROM "
            "(SELECT project_id, engine, state, COUNT(*) AS n FROM tasks GROUP BY project_id, engine, state) t "
            "JOIN projects p ON p.id = t.project_id")
        return [(r[0], r[1], r[2], int(r[3])) for r in rows]

    async def metric_queues(self) -> list[tuple[str, str, str, int, float]]:
        """(project, engine, queue, depth, updated_at): the depth each queue last reported."""
        rows = await self.fetchall(  # type: ignore[attr-defined]
            "SELECT p.slug, q.engine, q.name, q.depth, q.updated_at FROM queues q JOIN projects p ON p.id = q.project_id")
        return [(r[0], r[1], r[2], int(r[3] or 0), float(r[4] or 0)) for r in rows]

    async def metric_workers(self) -> list[tuple[str, str, str, str, float]]:
        """(project, engine, worker, state, last_seen_at) of every worker ever seen."""
        rows = await self.fetchall(  # type: ignore[attr-defined]
            "SELECT p.slug, w.engine, w.name, w.state, w.last_seen_at FROM workers w "
            "JOIN projects p ON p.id = w.project_id")
        return [(r[0], r[1], r[2], r[3], float(r[4] or 0)) for r in rows]

    async def metric_command_counts(self) -> list[tuple[str, str, str, int]]:
        """(project, action, state, count) over every command row."""
        rows = await self.fetchall(  # type: ignore[attr-defined]
            "SELECT p.slug, c.action, c.state, c.n FROM "
            "(SELECT project_id, action, state, COUNT(*) AS n FROM commands GROUP BY project_id, action, state) c "
            "JOIN projects p ON p.id = c.project_id")
        return [(r[0], r[1], r[2], int(r[3])) for r in rows]

    async def metric_delivery_counts(self) -> list[tuple[str, str, str, int]]:
        """(project, channel kind, status, count) over the notification delivery log."""
        rows = await self.fetchall(  # type: ignore[attr-defined]
            "SELECT p.slug, d.kind, d.status, d.n FROM "
            "(SELECT project_id, kind, status, COUNT(*) AS n FROM notification_deliveries "
            "GROUP BY project_id, kind, status) d JOIN projects p ON p.id = d.project_id")
        return [(r[0], r[1], r[2], int(r[3])) for r in rows]

    async def metric_project_slugs(self) -> dict[int, str]:
        rows: list[Any] = await self.fetchall("SELECT id, slug FROM projects")  # type: ignore[attr-defined]
        return {int(r[0]): r[1] for r in rows}
