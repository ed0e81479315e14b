"""SQL for notification channels and their delivery log. Mixed into
:class:`~z4j_collector.store.base.SqlStore`.

``config`` is JSON text holding the channel's secrets as given; masking for
API answers is the service's job (services/notify/). Methods that take a
``tx`` run inside the caller's transaction, so a change and its audit row
commit together.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec

CHANNEL_COLUMNS = ("id", "kind", "name", "config", "enabled", "created_at", "updated_at")
DELIVERY_COLUMNS = ("id", "channel_id", "channel_name", "kind", "source", "title", "status", "attempts", "error",
                    "created_at", "finished_at")
_SELECT_CHANNEL = f"SELECT {', '.join(CHANNEL_COLUMNS)} FROM notification_channels"


def _channel(row: Sequence[Any]) -> dict[str, Any]:
    d = dict(zip(CHANNEL_COLUMNS, row))
    d["config"] = msgspec.json.decode(d["config"])
    d["enabled"] = bool(d["enabled"])
    return d


class NotifySql:
    """Needs ``fetchall``, ``fetchone`` and ``write`` (SqlStore)."""

    async def list_channels(self, project_id: int) -> list[dict[str, Any]]:
        rows = await self.fetchall(  # type: ignore[attr-defined]
            f"{_SELECT_CHANNEL} WHERE project_id = ? ORDER BY name", (project_id,))
        return [_channel(r) for r in rows]

    async def get_channel(self, project_id: int, channel_id: int) -> dict[str, Any] | None:
        row = await self.fetchone(  # type: ignore[attr-defined]
            f"{_SELECT_CHANNEL} WHERE project_id = ? AND id = ?", (project_id, channel_id))
        return _channel(row) if row else None

    async def channel_by_name_tx(self, tx: Any, project_id: int, name: str) -> dict[str, Any] | None:
        rows = await tx.fetchall(f"{_SELECT_CHANNEL} WHERE project_id = ? AND name = ?", (project_id, name))
        return _channel(rows[0]) if rows else None

    async def insert_channel(self, tx: Any, project_id: int, kind: str, name: str, config: dict[str, Any],
                             enabled: bool, now: float) -> int:
        rows = await tx.fetchall(
            "INSERT INTO notification_channels (project_id, kind, name, config, enabled, created_at, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING id",
            (project_id, kind, name, msgspec.json.encode(config).decode(), enabled, now, now))
        return int(rows[0][0])

    async def update_channel(self, tx: Any, project_id: int, channel_id: int, name: str, config: dict[str, Any],
                             enabled: bool, now: float) -> int:
        return await tx.execute(
            "UPDATE notification_channels SET name = ?, config = ?, enabled = ?, updated_at = ? "
            "WHERE project_id = ? AND id = ?",
            (name, msgspec.json.encode(config).decode(), enabled, now, project_id, channel_id))

    async def delete_channel(self, tx: Any, project_id: int, channel_id: int) -> int:
        return await tx.execute("DELETE FROM notification_channels WHERE project_id = ? AND id = ?",
                                (project_id, channel_id))

    # -------------------------------------------------- deliveries

    async def insert_delivery(self, tx: Any, project_id: int, channel: dict[str, Any], source: str, title: str,
                              now: float) -> int:
        rows = await tx.fetchall(
            "INSERT INTO notification_deliveries (project_id, channel_id, channel_name, kind, source, title, "
            "status, attempts, created_at) VALUES (?, ?, ?, ?, ?, ?, 'pending', 0, ?) RETURNING id",
            (project_id, channel["id"], channel["name"], channel["kind"], source[:64], title[:400], now))
        return int(rows[0][0])

    async def finish_delivery(self, tx: Any, delivery_id: int, status: str, attempts: int, error: str | None,
                              now: float) -> None:
        await tx.execute(
            "UPDATE notification_deliveries SET status = ?, attempts = ?, error = ?, finished_at = ? WHERE id = ?",
            (status, attempts, error, now, delivery_id))

    async def list_deliveries(self, project_id: int, channel_id: int | None = None, status: str | None = None,
                              before: int | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """Newest first; ``before``: a delivery id (keyset)."""
        where, params = ["project_id = ?"], [project_id]
        for column, value in (("channel_id", channel_id), ("status", status)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        if before is not None:
            where.append("id < ?")
            params.append(before)
        rows = await self.fetchall(  # type: ignore[attr-defined]
            f"SELECT {', '.join(DELIVERY_COLUMNS)} FROM notification_deliveries WHERE {' AND '.join(where)} "
            "ORDER BY id DESC LIMIT ?", [*params, limit])
        return [dict(zip(DELIVERY_COLUMNS, r)) for r in rows]
