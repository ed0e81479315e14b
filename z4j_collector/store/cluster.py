"""SQL of the cluster (several collectors on one PostgreSQL): nodes, their
agent connections, the leader lock and the notification channel.

Functions over a SqlStore, plus ``ClusterLink``: the one dedicated
PostgreSQL connection a node keeps for LISTEN and for the leader's
session-level advisory lock (both end with that connection, so a node
killed with SIGKILL lets go of the lock as soon as PostgreSQL notices).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from z4j_collector.store.base import SqlStore

CHANNEL = "z4j_cluster"
LEADER_LOCK = 0x7A346A  # "z4j": the advisory lock key the leader holds


async def node_heartbeat(store: SqlStore, node_id: str, host: str, pid: int, started_at: float, now: float,
                         leader: bool) -> None:
    async def tx_fn(tx: Any) -> None:
        if not await tx.execute("UPDATE cluster_nodes SET heartbeat_at = ?, leader = ? WHERE node_id = ?",
                                [now, leader, node_id]):
            await tx.execute(
                "INSERT INTO cluster_nodes (node_id, host, pid, started_at, heartbeat_at, leader) "
                "VALUES (?, ?, ?, ?, ?, ?)", [node_id, host[:255], pid, started_at, now, leader])

    await store.write(tx_fn)


async def node_gone(store: SqlStore, node_id: str) -> None:
    """A clean stop: the node and its sessions leave at once."""
    await store.write(lambda tx: tx.execute("DELETE FROM cluster_nodes WHERE node_id = ?", [node_id]))


async def forget_dead_nodes(store: SqlStore, older_than: float) -> int:
    """Delete nodes whose heartbeat stopped (their sessions cascade)."""
    return await store.write(lambda tx: tx.execute("DELETE FROM cluster_nodes WHERE heartbeat_at < ?",
                                                   [older_than]))


async def add_session(store: SqlStore, node_id: str, session_id: str, agent_id: int, project_id: int,
                      engines: list[str], capabilities: list[str], opened_at: float) -> None:
    await store.write(lambda tx: tx.execute(
        "INSERT INTO cluster_sessions (node_id, session_id, agent_id, project_id, engines, capabilities, "
        "opened_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
        [node_id, session_id, agent_id, project_id, json.dumps(engines), json.dumps(capabilities), opened_at]))


async def remove_session(store: SqlStore, node_id: str, session_id: str) -> None:
    await store.write(lambda tx: tx.execute(
        "DELETE FROM cluster_sessions WHERE node_id = ? AND session_id = ?", [node_id, session_id]))


async def live_sessions(store: SqlStore, other_than: str, alive_since: float) -> list[dict[str, Any]]:
    """Agent connections held by the other live nodes, oldest first."""
    rows = await store.fetchall(
        "SELECT s.node_id, s.session_id, s.agent_id, s.project_id, s.engines, s.capabilities "
        "FROM cluster_sessions s JOIN cluster_nodes n ON n.node_id = s.node_id "
        "WHERE s.node_id <> ? AND n.heartbeat_at >= ? ORDER BY s.opened_at", [other_than, alive_since])
    return [{"node_id": r[0], "session_id": r[1], "agent_id": r[2], "project_id": r[3],
             "engines": json.loads(r[4]), "capabilities": json.loads(r[5])} for r in rows]


async def live_nodes(store: SqlStore, alive_since: float) -> list[dict[str, Any]]:
    rows = await store.fetchall(
        "SELECT node_id, host, pid, started_at, heartbeat_at, leader FROM cluster_nodes "
        "WHERE heartbeat_at >= ? ORDER BY started_at", [alive_since])
    cols = ("node_id", "host", "pid", "started_at", "heartbeat_at", "leader")
    return [dict(zip(cols, r)) for r in rows]


async def notify(store: SqlStore, payload: str) -> None:
    await store.fetchall("SELECT pg_notify(?, ?)", [CHANNEL, payload])


class ClusterLink:
    """A node's own PostgreSQL connections: one that only LISTENs (psycopg
    holds a connection's lock while it waits for notifications) and one that
    holds the leader's session-level advisory lock, if this node leads."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._listen: Any = None
        self._lead: Any = None

    async def open(self) -> None:
        import psycopg

        self._listen = await psycopg.AsyncConnection.connect(self.url, autocommit=True)
        await self._listen.execute(f"LISTEN {CHANNEL}")
        self._lead = await psycopg.AsyncConnection.connect(self.url, autocommit=True)

    async def close(self) -> None:
        for conn in (self._listen, self._lead):
            if conn is not None:
                await conn.close()
        self._listen = self._lead = None

    async def reopen_lead(self) -> None:
        """A new lock connection after the old one failed (the lock went with it)."""
        import psycopg

        if self._lead is not None:
            try:
                await self._lead.close()
            except Exception:  # noqa: BLE001 - it is broken already
                pass
        self._lead = None
        self._lead = await psycopg.AsyncConnection.connect(self.url, autocommit=True)

    async def try_lead(self) -> bool:
        """Take the leader lock if nobody holds it (held until this connection ends)."""
        cur = await self._lead.execute("SELECT pg_try_advisory_lock(%s)", [LEADER_LOCK])
        return bool((await cur.fetchone())[0])

    async def still_leading(self) -> bool:
        """Whether this node's lock connection still holds the leader lock."""
        cur = await self._lead.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = %s AND granted "
            "AND pid = pg_backend_pid()", [LEADER_LOCK])
        return bool((await cur.fetchone())[0])

    async def payloads(self) -> AsyncIterator[str]:
        """Every notification on the channel, as it arrives."""
        async for notice in self._listen.notifies():
            yield notice.payload
