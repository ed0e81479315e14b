"""SQL for periodic schedules and their fire history. Mixed into
:class:`~z4j_collector.store.base.SqlStore`.

A schedule row mirrors one entry of a scheduler's store as its agent last
reported it (services/schedules.py); JSON fields are stored as text, already
redacted. Methods that take a ``tx`` run inside the caller's transaction, so
a change and its audit row commit together.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec

SCHEDULE_COLUMNS = (
    "id", "engine", "scheduler", "name", "task", "spec", "args", "kwargs", "queue", "options", "enabled",
    "redacted", "next_run_at", "last_run_at", "total_run_count", "source", "agent_id", "created_at", "updated_at",
    "synced_at",
)
_WRITE_COLUMNS = SCHEDULE_COLUMNS[1:]
_JSON = ("spec", "args", "kwargs", "options")
_BOOL = ("enabled", "redacted")
# What a change of the schedule's definition is (updated_at moves); the rest
# (runs, next run) moves with every fire.
DEFINITION = ("task", "spec", "args", "kwargs", "queue", "options", "enabled")
FIRE_COLUMNS = ("id", "engine", "schedule", "task", "task_id", "ts", "manual", "actor", "agent_id")

_encode = msgspec.json.Encoder().encode


def _decode_row(row: Sequence[Any]) -> dict[str, Any]:
    d = dict(zip(SCHEDULE_COLUMNS, row))
    for key in _JSON:
        d[key] = msgspec.json.decode(d[key]) if d[key] else None
    for key in _BOOL:
        d[key] = bool(d[key])
    return d


def _encode_row(d: dict[str, Any]) -> list[Any]:
    out = []
    for key in _WRITE_COLUMNS:
        value = d.get(key)
        if key in _JSON:
            value = _encode(value).decode()
        elif key in _BOOL:
            value = bool(value)
        out.append(value)
    return out


_SELECT = f"SELECT {', '.join(SCHEDULE_COLUMNS)} FROM schedules"
_UPSERT = (
    f"INSERT INTO schedules (project_id, {', '.join(_WRITE_COLUMNS)}) "
    f"VALUES (?, {', '.join('?' for _ in _WRITE_COLUMNS)}) "
    "ON CONFLICT (project_id, engine, name) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in _WRITE_COLUMNS if c not in ("engine", "name", "created_at"))
)


class ScheduleSql:
    """Needs ``fetchall`` and ``fetchone`` (SqlStore)."""

    async def list_schedules(self, project_id: int, engine: str | None = None, source: str | None = None,
                             enabled: bool | None = None) -> list[dict[str, Any]]:
        where, params = ["project_id = ?"], [project_id]
        if engine is not None:
            where.append("engine = ?")
            params.append(engine)
        if source is not None:
            where.append("source = ?")
            params.append(source)
        if enabled is not None:
            where.append("enabled = ?")
            params.append(enabled)
        rows = await self.fetchall(  # type: ignore[attr-defined]
            f"{_SELECT} WHERE {' AND '.join(where)} ORDER BY engine, name", params)
        return [_decode_row(r) for r in rows]

    async def get_schedule(self, project_id: int, schedule_id: int) -> dict[str, Any] | None:
        row = await self.fetchone(  # type: ignore[attr-defined]
            f"{_SELECT} WHERE project_id = ? AND id = ?", (project_id, schedule_id))
        return _decode_row(row) if row else None

    async def schedule_by_name(self, project_id: int, engine: str, name: str) -> dict[str, Any] | None:
        row = await self.fetchone(  # type: ignore[attr-defined]
            f"{_SELECT} WHERE project_id = ? AND engine = ? AND name = ?", (project_id, engine, name))
        return _decode_row(row) if row else None

    async def schedules_tx(self, tx: Any, project_id: int, engine: str) -> dict[str, dict[str, Any]]:
        """The project's schedules of one engine by name, inside a write transaction."""
        rows = await tx.fetchall(f"{_SELECT} WHERE project_id = ? AND engine = ?", (project_id, engine))
        return {d["name"]: d for d in map(_decode_row, rows)}

    async def schedule_tx(self, tx: Any, project_id: int, engine: str, name: str) -> dict[str, Any] | None:
        rows = await tx.fetchall(f"{_SELECT} WHERE project_id = ? AND engine = ? AND name = ?",
                                 (project_id, engine, name))
        return _decode_row(rows[0]) if rows else None

    async def put_schedules(self, tx: Any, project_id: int, rows: Sequence[dict[str, Any]]) -> None:
        """Insert or replace schedules (by project, engine and name)."""
        if rows:
            await tx.executemany(_UPSERT, [[project_id, *_encode_row(d)] for d in rows])

    async def delete_schedules(self, tx: Any, project_id: int, ids: Sequence[int]) -> None:
        if ids:
            await tx.executemany("DELETE FROM schedules WHERE project_id = ? AND id = ?",
                                 [(project_id, i) for i in ids])

    # -------------------------------------------------- fires

    async def insert_fires(self, tx: Any, project_id: int, fires: Sequence[dict[str, Any]]) -> None:
        """Record fires; one reported again (same id) is stored once."""
        if fires:
            await tx.executemany(
                f"INSERT INTO schedule_fires (project_id, {', '.join(FIRE_COLUMNS)}) "
                f"VALUES (?, {', '.join('?' for _ in FIRE_COLUMNS)}) ON CONFLICT (id) DO NOTHING",
                [[project_id, *(bool(f.get(c)) if c == "manual" else f.get(c) for c in FIRE_COLUMNS)]
                 for f in fires],
            )

    async def schedule_fires(self, project_id: int, engine: str, name: str, limit: int = 100,
                             before: float | None = None) -> list[dict[str, Any]]:
        """Newest first."""
        sql = (f"SELECT {', '.join(FIRE_COLUMNS)} FROM schedule_fires "
               "WHERE project_id = ? AND engine = ? AND schedule = ?")
        params: list[Any] = [project_id, engine, name]
        if before is not None:
            sql += " AND ts < ?"
            params.append(before)
        rows = await self.fetchall(f"{sql} ORDER BY ts DESC, id DESC LIMIT ?", [*params, limit])  # type: ignore[attr-defined]
        return [{**dict(zip(FIRE_COLUMNS, r)), "manual": bool(r[6])} for r in rows]
