"""SQL of the actions (retry, bulk retry jobs); functions over a SqlStore.

A bulk-retry job is a row of ``commands`` with ``agent_id`` NULL and action
``tasks.bulk_retry``: its ``args`` hold the filter, its ``result`` the
progress, so ``GET …/commands/{id}`` reads it like any command.
"""

from __future__ import annotations

import base64
import time
from typing import Any

import msgspec

from z4j_collector.store.base import SqlStore, Tx

_json_encode = msgspec.json.Encoder().encode


async def retry_source(store: SqlStore, project_id: int, task_id: str, engine: str | None) -> dict[str, Any] | None:
    """The task with its sealed original calls, newest first, each with the
    agent that sealed it (``replays``: [(agent_id, bytes)]).

    Only the sealing agent's secret opens a replay, and that agent is the one
    that sent the event carrying it (``task_events.agent_id``), which is not
    always ``tasks.agent_id`` (the last agent that reported the task: a
    worker's, while a publisher's agent may have sealed the call).
    """
    task = await _task_row(store, project_id, task_id, engine, ("replay", "event_ids"))
    if task is None:
        return None
    event_ids = task.pop("event_ids")
    replay = task.pop("replay")
    task["replays"] = []
    if replay is None:
        return task
    ids = event_ids.split(",") if event_ids else []
    found: list[tuple[float, str, int | None, bytes]] = []
    for start in range(0, len(ids), 500):
        chunk = ids[start:start + 500]
        rows = await store.fetchall(
            f"SELECT id, ts, agent_id, data FROM task_events WHERE id IN ({', '.join('?' for _ in chunk)})", chunk)
        for event_id, ts, agent_id, data in rows:
            sealed = msgspec.json.decode(data).get("replay")
            if sealed is not None:
                found.append((ts, event_id, agent_id, base64.b64decode(sealed)))
    found.sort(reverse=True)
    task["replays"] = [(agent_id, blob) for _, _, agent_id, blob in found] or [(task["agent_id"], bytes(replay))]
    return task


async def task_agent(store: SqlStore, project_id: int, task_id: str, engine: str | None) -> dict[str, Any] | None:
    """A task's engine, state and last reporting agent (for cancel)."""
    return await _task_row(store, project_id, task_id, engine)


async def _task_row(store: SqlStore, project_id: int, task_id: str, engine: str | None,
                    more: tuple[str, ...] = ()) -> dict[str, Any] | None:
    cols = ("engine", "task_id", "name", "state", "engine_state", "queue", "agent_id", *more)
    sql = f"SELECT {', '.join(cols)} FROM tasks WHERE project_id = ? AND task_id = ?"
    params: list[Any] = [project_id, task_id]
    if engine:
        sql += " AND engine = ?"
        params.append(engine)
    row = await store.fetchone(sql + " ORDER BY updated_at DESC LIMIT 1", params)
    return dict(zip(cols, row)) if row is not None else None


async def reporting_agents(store: SqlStore, project_id: int, table: str, name: str) -> list[tuple[str, int]]:
    """(engine, agent_id) of the agents that last reported a queue or a worker."""
    assert table in ("queues", "workers")
    rows = await store.fetchall(
        f"SELECT engine, agent_id FROM {table} WHERE project_id = ? AND name = ? ORDER BY engine", (project_id, name))
    return [(r[0], r[1]) for r in rows if r[1] is not None]


async def update_job(db: SqlStore | Tx, job_id: str, state: str, progress: dict[str, Any], *,
                     error: str | None = None, finished: bool = False) -> None:
    """The job's row (``db``: the store, or a transaction of it)."""
    await db.execute(
        "UPDATE commands SET state = ?, result = ?, error = ?, dispatched_at = COALESCE(dispatched_at, ?), "
        "finished_at = ? WHERE id = ?",
        (state, _json_encode(progress).decode(), error, time.time(), time.time() if finished else None, job_id),
    )


async def retried_since(store: SqlStore, project_id: int, since: float) -> set[str]:
    """Task ids retried (a succeeded retry command, by hand or by a job) at or after ``since``."""
    rows = await store.fetchall(
        "SELECT args FROM commands WHERE project_id = ? AND created_at >= ? AND state = 'succeeded' "
        "AND action LIKE ?", (project_id, since, "%.retry"))
    done: set[str] = set()
    for (args,) in rows:
        task_id = msgspec.json.decode(args).get("task_id")
        if isinstance(task_id, str):
            done.add(task_id)
    return done
