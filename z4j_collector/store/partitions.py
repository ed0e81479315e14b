"""task_events partitions on PostgreSQL (migration 0010): one per UTC day of
the time-ordered event id, created ahead and dropped by retention.

Dropping a partition takes a brief exclusive lock on task_events; it waits
at most ``LOCK_TIMEOUT`` for ingest transactions to finish (and ingest waits
behind it no longer), else it gives up until the next retention pass. A
mixin of PostgresStore; SQLite keeps one table and deletes in batches.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any

log = logging.getLogger("z4j.collector.partitions")

DAY_S = 86_400
AHEAD_DAYS = 7
LOCK_TIMEOUT = "500ms"
_BOUNDS = re.compile(r"FOR VALUES FROM \((MINVALUE|'([0-9a-f]+)')\) TO \('([0-9a-f]+)'\)")


def _day_name(day_start: float) -> str:
    return "task_events_" + time.strftime("%Y%m%d", time.gmtime(day_start))


def _bound(ts: float) -> str:
    return f"{int(ts * 1000):012x}"


class PartitionsSql:
    """Needs ``fetchall`` and ``write`` (PostgresStore)."""

    partitioned_events = True

    async def event_partitions(self) -> list[dict[str, Any]]:
        """The day partitions of task_events (not the default one): name, and
        the seconds their ids span (lower None for the oldest)."""
        rows = await self.fetchall(  # type: ignore[attr-defined]
            "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i "
            "JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'task_events'::regclass ORDER BY c.relname")
        out = []
        for name, bound in rows:
            match = _BOUNDS.search(bound or "")
            if match is None:
                continue  # DEFAULT
            low = None if match.group(1) == "MINVALUE" else int(match.group(2), 16) / 1000
            out.append({"name": name, "from": low, "to": int(match.group(3), 16) / 1000})
        return out

    async def ensure_event_partitions(self, now: float | None = None) -> list[str]:
        """Create the partitions of today and the next days that are missing."""
        now = time.time() if now is None else now
        today = now // DAY_S * DAY_S
        have = {p["name"] for p in await self.event_partitions()}
        created = []
        for day in range(AHEAD_DAYS + 1):
            start = today + day * DAY_S
            name = _day_name(start)
            if name in have:
                continue
            sql = (f"CREATE TABLE {name} PARTITION OF task_events FOR VALUES FROM ('{_bound(start)}') "
                   f"TO ('{_bound(start + DAY_S)}')")
            try:
                await self.write(lambda tx, sql=sql: tx.execute(sql))  # type: ignore[attr-defined]
                created.append(name)
            except Exception as exc:  # noqa: BLE001 - e.g. the default partition holds rows of that day
                log.warning("could not create partition %s: %s", name, str(exc).splitlines()[0])
        return created

    async def drop_event_partitions(self, before: float) -> list[str]:
        """Drop the partitions whose every id is older than ``before``."""
        dropped = []
        for part in await self.event_partitions():
            if part["to"] > before:
                continue

            async def drop(tx: Any, name: str = part["name"]) -> None:
                await tx.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
                await tx.execute(f"DROP TABLE {name}")

            try:
                await self.write(drop)  # type: ignore[attr-defined]
                dropped.append(part["name"])
            except Exception as exc:  # noqa: BLE001 - busy: the next pass tries again
                log.warning("could not drop partition %s yet: %s", part["name"], str(exc).splitlines()[0])
        return dropped
