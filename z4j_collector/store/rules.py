"""SQL for notification rules and their evaluator (services/rules.py). Mixed
into :class:`~z4j_collector.store.base.SqlStore`.

Rule state rows are keyed by (rule id, dedupe key); ``claim_fire`` is a
compare-and-set on ``last_fired_at`` so a condition is sent once even if two
evaluators ran at the same time. Task queries use the (project, state,
created_at) index with a lower bound on created_at (``LOOKBACK_S`` before the
window), so a task that ran for longer than that before finishing is not seen.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec

RULE_COLUMNS = ("id", "project_id", "name", "kind", "params", "channel_ids", "cooldown_s", "enabled", "created_at",
                "updated_at")
STATE_COLUMNS = ("key", "last_fired_at", "last_value", "active", "updated_at")
TASK_COLUMNS = ("engine", "task_id", "name", "queue", "worker", "state", "exception", "started_at", "finished_at")
LOOKBACK_S = 86400.0
_SELECT_RULE = f"SELECT {', '.join(RULE_COLUMNS)} FROM notification_rules"


def _rule(row: Sequence[Any]) -> dict[str, Any]:
    d = dict(zip(RULE_COLUMNS, row))
    d["params"] = msgspec.json.decode(d["params"])
    d["channel_ids"] = msgspec.json.decode(d["channel_ids"])
    d["enabled"] = bool(d["enabled"])
    d["cooldown_s"] = float(d["cooldown_s"])
    return d


def like(pattern: str) -> str:
    """A name filter with ``*`` wildcards as a LIKE pattern (escape ``\\``)."""
    escaped = pattern.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%")


def _filters(params: dict[str, Any], alias: str = "t") -> tuple[str, list[Any]]:
    sql, args = "", []
    for column in ("name", "queue"):
        value = params.get(column)
        if value:
            sql += f" AND {alias}.{column} LIKE ? ESCAPE '\\'"
            args.append(like(value))
    return sql, args


class RulesSql:
    """Needs ``fetchall``, ``fetchone`` and ``write`` (SqlStore)."""

    # -------------------------------------------------- rules

    async def list_rules(self, project_id: int) -> list[dict[str, Any]]:
        rows = await self.fetchall(  # type: ignore[attr-defined]
            f"{_SELECT_RULE} WHERE project_id = ? ORDER BY name", (project_id,))
        return [_rule(r) for r in rows]

    async def enabled_rules(self) -> list[dict[str, Any]]:
        rows = await self.fetchall(f"{_SELECT_RULE} WHERE enabled = ? ORDER BY id", (True,))  # type: ignore[attr-defined]
        return [_rule(r) for r in rows]

    async def get_rule(self, project_id: int, rule_id: int) -> dict[str, Any] | None:
        row = await self.fetchone(  # type: ignore[attr-defined]
            f"{_SELECT_RULE} WHERE project_id = ? AND id = ?", (project_id, rule_id))
        return _rule(row) if row else None

    async def rule_by_name_tx(self, tx: Any, project_id: int, name: str) -> dict[str, Any] | None:
        rows = await tx.fetchall(f"{_SELECT_RULE} WHERE project_id = ? AND name = ?", (project_id, name))
        return _rule(rows[0]) if rows else None

    async def insert_rule(self, tx: Any, project_id: int, rule: dict[str, Any], now: float) -> int:
        rows = await tx.fetchall(
            "INSERT INTO notification_rules (project_id, name, kind, params, channel_ids, cooldown_s, enabled, "
            "created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
            (project_id, rule["name"], rule["kind"], msgspec.json.encode(rule["params"]).decode(),
             msgspec.json.encode(rule["channel_ids"]).decode(), rule["cooldown_s"], rule["enabled"], now, now))
        return int(rows[0][0])

    async def update_rule(self, tx: Any, project_id: int, rule_id: int, rule: dict[str, Any], now: float) -> int:
        return await tx.execute(
            "UPDATE notification_rules SET name = ?, params = ?, channel_ids = ?, cooldown_s = ?, enabled = ?, "
            "updated_at = ? WHERE project_id = ? AND id = ?",
            (rule["name"], msgspec.json.encode(rule["params"]).decode(),
             msgspec.json.encode(rule["channel_ids"]).decode(), rule["cooldown_s"], rule["enabled"], now,
             project_id, rule_id))

    async def delete_rule(self, tx: Any, project_id: int, rule_id: int) -> int:
        await tx.execute("DELETE FROM notification_rule_state WHERE rule_id IN "
                         "(SELECT id FROM notification_rules WHERE project_id = ? AND id = ?)", (project_id, rule_id))
        return await tx.execute("DELETE FROM notification_rules WHERE project_id = ? AND id = ?",
                                (project_id, rule_id))

    async def project_channel_ids_tx(self, tx: Any, project_id: int) -> set[int]:
        rows = await tx.fetchall("SELECT id FROM notification_channels WHERE project_id = ?", (project_id,))
        return {int(r[0]) for r in rows}

    # -------------------------------------------------- state

    async def rule_states(self, rule_id: int, prefix: str | None = None) -> dict[str, dict[str, Any]]:
        sql, args = f"SELECT {', '.join(STATE_COLUMNS)} FROM notification_rule_state WHERE rule_id = ?", [rule_id]
        if prefix is not None:
            sql += " AND key LIKE ? ESCAPE '\\'"
            args.append(like(prefix) + "%")
        rows = await self.fetchall(sql, args)  # type: ignore[attr-defined]
        return {r[0]: {**dict(zip(STATE_COLUMNS, r)), "active": bool(r[3])} for r in rows}

    async def claim_fire(self, rule_id: int, key: str, previous: float | None, value: float | None,
                         now: float) -> bool:
        """Record that ``key`` fires now, if its last firing is still ``previous``
        (None: never fired). False when another evaluator got there first."""
        async def tx_fn(tx: Any) -> bool:
            rows = await tx.fetchall(
                "INSERT INTO notification_rule_state (rule_id, key, last_fired_at, last_value, active, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (rule_id, key) DO NOTHING RETURNING rule_id",
                (rule_id, key, now, value, True, now))
            if rows:
                return True
            if previous is None:
                changed = await tx.execute(
                    "UPDATE notification_rule_state SET last_fired_at = ?, last_value = ?, active = ?, updated_at = ? "
                    "WHERE rule_id = ? AND key = ? AND last_fired_at IS NULL", (now, value, True, now, rule_id, key))
            else:
                changed = await tx.execute(
                    "UPDATE notification_rule_state SET last_fired_at = ?, last_value = ?, active = ?, updated_at = ? "
                    "WHERE rule_id = ? AND key = ? AND last_fired_at = ?",
                    (now, value, True, now, rule_id, key, previous))
            return changed > 0

        return await self.write(tx_fn)  # type: ignore[attr-defined]

    async def note_states(self, rule_id: int, holding: dict[str, float | None], cleared: Sequence[str],
                          now: float) -> None:
        """Conditions that hold but were not sent (value, active) and ones that cleared."""
        if not holding and not cleared:
            return

        async def tx_fn(tx: Any) -> None:
            for key, value in holding.items():
                await tx.execute(
                    "INSERT INTO notification_rule_state (rule_id, key, last_fired_at, last_value, active, updated_at) "
                    "VALUES (?, ?, NULL, ?, ?, ?) ON CONFLICT (rule_id, key) DO UPDATE SET "
                    "last_value = excluded.last_value, active = excluded.active, updated_at = excluded.updated_at",
                    (rule_id, key, value, True, now))
            for key in cleared:
                await tx.execute("UPDATE notification_rule_state SET active = ?, updated_at = ? "
                                 "WHERE rule_id = ? AND key = ?", (False, now, rule_id, key))

        await self.write(tx_fn)  # type: ignore[attr-defined]

    async def set_watermark(self, rule_id: int, value: float, now: float) -> None:
        await self.write(lambda tx: tx.execute(  # type: ignore[attr-defined]
            "INSERT INTO notification_rule_state (rule_id, key, last_value, active, updated_at) "
            "VALUES (?, 'watermark', ?, ?, ?) ON CONFLICT (rule_id, key) DO UPDATE SET "
            "last_value = excluded.last_value, updated_at = excluded.updated_at", (rule_id, value, False, now)))

    async def forget_states(self, rule_id: int, prefix: str, older_than: float) -> None:
        """Drop per-task dedupe rows of tasks fired before ``older_than`` that no longer hold."""
        await self.write(lambda tx: tx.execute(  # type: ignore[attr-defined]
            "DELETE FROM notification_rule_state WHERE rule_id = ? AND key LIKE ? ESCAPE '\\' AND active = ? "
            "AND updated_at < ?", (rule_id, like(prefix) + "%", False, older_than)))

    # -------------------------------------------------- conditions

    async def rule_tasks_since(self, rule_id: int, project_id: int, state: str, since: float,
                               params: dict[str, Any], limit: int) -> list[dict[str, Any]]:
        """Tasks in ``state`` finished at or after ``since`` (oldest first) that this
        rule has not fired for yet (no ``task:<engine>:<id>`` state row)."""
        where, args = _filters(params)
        rows = await self.fetchall(  # type: ignore[attr-defined]
            f"SELECT {', '.join('t.' + c for c in TASK_COLUMNS)} FROM tasks t "
            "WHERE t.project_id = ? AND t.state = ? AND t.created_at >= ? AND t.finished_at >= ?" + where +
            " AND NOT EXISTS (SELECT 1 FROM notification_rule_state s WHERE s.rule_id = ? "
            "AND s.key = 'task:' || t.engine || ':' || t.task_id) "
            "ORDER BY t.finished_at, t.engine, t.task_id LIMIT ?",
            [project_id, state, since - LOOKBACK_S, since, *args, rule_id, limit])
        return [dict(zip(TASK_COLUMNS, r)) for r in rows]

    async def rule_failure_counts(self, project_id: int, since: float, params: dict[str, Any]) -> tuple[int, int]:
        """(failed, finished) among tasks finished since ``since`` (success and failure count as finished)."""
        where, args = _filters(params)
        rows = await self.fetchall(  # type: ignore[attr-defined]
            "SELECT t.state, COUNT(*) FROM tasks t WHERE t.project_id = ? AND t.state IN ('success', 'failure') "
            "AND t.created_at >= ? AND t.finished_at >= ?" + where + " GROUP BY t.state",
            [project_id, since - LOOKBACK_S, since, *args])
        counts = {r[0]: int(r[1]) for r in rows}
        return counts.get("failure", 0), counts.get("success", 0) + counts.get("failure", 0)

    async def rule_stuck_tasks(self, project_id: int, started_before: float, params: dict[str, Any],
                               limit: int) -> list[dict[str, Any]]:
        where, args = _filters(params)
        rows = await self.fetchall(  # type: ignore[attr-defined]
            f"SELECT {', '.join('t.' + c for c in TASK_COLUMNS)} FROM tasks t "
            "WHERE t.project_id = ? AND t.state = 'started' AND t.started_at < ?" + where +
            " ORDER BY t.started_at, t.engine, t.task_id LIMIT ?", [project_id, started_before, *args, limit])
        return [dict(zip(TASK_COLUMNS, r)) for r in rows]

    async def rule_offline_workers(self, project_id: int, seen_before: float, seen_after: float,
                                   params: dict[str, Any]) -> list[dict[str, Any]]:
        """Workers offline, or silent since ``seen_before``, but seen after ``seen_after``."""
        sql, args = "", []
        if params.get("worker"):
            sql, args = " AND name LIKE ? ESCAPE '\\'", [like(params["worker"])]
        rows = await self.fetchall(  # type: ignore[attr-defined]
            "SELECT engine, name, state, last_seen_at FROM workers WHERE project_id = ? "
            "AND (state = 'offline' OR last_seen_at < ?) AND last_seen_at >= ?" + sql + " ORDER BY engine, name",
            [project_id, seen_before, seen_after, *args])
        return [{"engine": r[0], "name": r[1], "state": r[2], "last_seen_at": r[3]} for r in rows]

    async def rule_deep_queues(self, project_id: int, depth: int, params: dict[str, Any]) -> list[dict[str, Any]]:
        sql, args = "", []
        if params.get("queue"):
            sql, args = " AND name LIKE ? ESCAPE '\\'", [like(params["queue"])]
        rows = await self.fetchall(  # type: ignore[attr-defined]
            "SELECT engine, name, depth, updated_at FROM queues WHERE project_id = ? AND depth > ?" + sql +
            " ORDER BY engine, name", [project_id, depth, *args])
        return [{"engine": r[0], "name": r[1], "depth": int(r[2]), "updated_at": r[3]} for r in rows]

    async def project_slug(self, project_id: int) -> str | None:
        row = await self.fetchone("SELECT slug FROM projects WHERE id = ?", (project_id,))  # type: ignore[attr-defined]
        return row[0] if row else None

    async def claim_new(self, rule_id: int, keys: Sequence[str], now: float) -> set[str]:
        """Insert dedupe rows for ``keys`` (fired now, not holding); the keys that were new."""
        async def tx_fn(tx: Any) -> set[str]:
            new: set[str] = set()
            for key in keys:
                rows = await tx.fetchall(
                    "INSERT INTO notification_rule_state (rule_id, key, last_fired_at, active, updated_at) "
                    "VALUES (?, ?, ?, ?, ?) ON CONFLICT (rule_id, key) DO NOTHING RETURNING key",
                    (rule_id, key, now, False, now))
                new.update(r[0] for r in rows)
            return new

        return await self.write(tx_fn)  # type: ignore[attr-defined]
