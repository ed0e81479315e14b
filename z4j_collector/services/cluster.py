"""Several collectors, one PostgreSQL: who leads, where each agent is
connected, and how the nodes talk (LISTEN/NOTIFY, no other broker).

Every collector process is a *node* with a random id. On SQLite there is one
node and it leads (``Cluster``). On PostgreSQL (``PgCluster``) each node:

* heartbeats its row in ``cluster_nodes`` and lists its agent connections in
  ``cluster_sessions``; the other nodes read them (on a ``sess`` notice and
  at every heartbeat) into ``RemoteSession`` proxies in their registry, so a
  command issued on any node reaches an agent connected to any other;
* leads when it holds a session-level advisory lock (store/cluster.py): the
  leader alone runs the background jobs registered with ``leader_job``
  (reconciler, schedule sync, notification rules, retention, audit
  checkpoints); when the leader dies its lock goes with its connection and
  the next node to try takes over within a heartbeat;
* announces the projects its clients are streaming (``watch``) and, for the
  projects other nodes stream, ships the changed rows it committed
  (``chg``), coalesced per task over the stream interval like the hub does.

Messages are JSON on one channel, addressed (``to``) or broadcast, split in
parts when longer than a notification may be.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from z4j_agents import protocol as p
from z4j_collector.services.hub import Hub, Subscriber
from z4j_collector.services.periodic import cancel
from z4j_collector.settings import env_number
from z4j_collector.store import cluster as sql

log = logging.getLogger("z4j.collector.cluster")

PART_BYTES = 7000
"""A notification's payload must stay under 8000 bytes."""
_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.decode


class RemoteSession:
    """An agent connection held by another node (implements AgentSession)."""

    def __init__(self, cluster: PgCluster, row: dict[str, Any]) -> None:
        self.cluster = cluster
        self.node_id = row["node_id"]
        self.session_id = row["session_id"]
        self.agent_id = row["agent_id"]
        self.project_id = row["project_id"]
        self.engines = row["engines"]
        self.capabilities = row["capabilities"]
        self.remote = True

    async def send_command(self, command: p.Command) -> None:
        await self.cluster.forward_command(self, command)

    async def close(self, reason: str) -> None:
        await self.cluster.send({"t": "kick", "sid": self.session_id, "reason": reason}, to=self.node_id)


class Cluster:
    """One node alone (SQLite, or a collector without peers): it leads."""

    enabled = False

    def __init__(self) -> None:
        self.node_id = p.new_id()[-16:]
        self.leader = False
        self._jobs: list[tuple[Callable[[], Any], Callable[[], Awaitable[Any]]]] = []

    def leader_job(self, start: Callable[[], Any], stop: Callable[[], Awaitable[Any]]) -> None:
        """Run ``start()`` while this node leads and ``await stop()`` when it stops leading."""
        self._jobs.append((start, stop))

    async def start(self) -> None:
        await self._lead()

    async def stop(self) -> None:
        await self._step_down()

    async def _lead(self) -> None:
        if self.leader:
            return
        self.leader = True
        for start, _ in self._jobs:
            start()

    async def _step_down(self) -> None:
        if not self.leader:
            return
        self.leader = False
        for _, stop in reversed(self._jobs):
            try:
                await stop()
            except Exception:  # noqa: BLE001 - stopping one job never keeps the others running
                log.exception("stopping a leader job failed")

    def view(self) -> dict[str, Any]:
        return {"node": self.node_id, "leader": self.leader, "peers": 0}


class PgCluster(Cluster):
    enabled = True

    def __init__(self, store: Any, hub: Hub, registry: Any, commands: Any, *, heartbeat_s: float | None = None,
                 alive_s: float | None = None, ship_interval_s: float = 0.2) -> None:
        super().__init__()
        self.store = store
        self.hub = hub
        self.registry = registry
        self.commands = commands
        self.heartbeat_s = heartbeat_s or env_number("Z4J_CLUSTER_HEARTBEAT_S", 2.0)
        self.alive_s = alive_s or env_number("Z4J_CLUSTER_ALIVE_S", 10.0)
        """A node silent for this long is gone: its agent connections no longer count."""
        self.ship_interval_s = ship_interval_s
        self.link = sql.ClusterLink(store.url)
        self.started_at = time.time()
        self.peers = 0
        self._tasks: list[asyncio.Task[Any]] = []
        self._remote_watch: dict[int, float] = {}  # project -> until when another node streams it
        self._outbox: dict[int, Subscriber] = {}  # project -> changes to ship to the other nodes
        self._parts: dict[str, list[str | None]] = {}
        self._refresh_now = asyncio.Event()
        self._session_writes: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        await self.link.open()
        self.registry.listener = self._on_local_session
        self.hub.cluster = self
        await self._beat()
        self._tasks = [asyncio.create_task(self._listen(), name="z4j-cluster-listen"),
                       asyncio.create_task(self._heartbeats(), name="z4j-cluster-heartbeat"),
                       asyncio.create_task(self._ship(), name="z4j-cluster-ship"),
                       asyncio.create_task(self._write_sessions(), name="z4j-cluster-sessions")]

    async def stop(self) -> None:
        await self._step_down()
        for task in self._tasks:
            await cancel(task)
        self._tasks = []
        self.registry.listener = None
        self.hub.cluster = None
        try:
            await sql.node_gone(self.store, self.node_id)
            await self.send({"t": "sess"})
        except Exception as exc:  # noqa: BLE001 - the database may be what went away
            log.warning("cluster: could not sign off: %s", exc)
        await self.link.close()

    def view(self) -> dict[str, Any]:
        return {"node": self.node_id, "leader": self.leader, "peers": self.peers}

    # ------------------------------------------------------------ heartbeat, leadership, sessions

    async def _heartbeats(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._refresh_now.wait(), self.heartbeat_s)
            except TimeoutError:
                pass
            self._refresh_now.clear()
            try:
                await self._beat()
            except Exception:  # noqa: BLE001 - the next beat tries again
                log.exception("cluster heartbeat failed; next in %.0f s", self.heartbeat_s)

    async def _beat(self) -> None:
        now = time.time()
        try:
            if self.leader and not await self.link.still_leading():
                log.warning("cluster: node %s lost the leader lock", self.node_id)
                await self._step_down()
            if not self.leader and await self.link.try_lead():
                log.info("cluster: node %s leads", self.node_id)
                await self._lead()
        except Exception as exc:  # noqa: BLE001 - the lock's connection is gone: so is the lock
            log.warning("cluster: leader lock connection failed (%s); not leading until it is back", exc)
            await self._step_down()
            await self.link.reopen_lead()
            raise
        await sql.node_heartbeat(self.store, self.node_id, socket.gethostname(), os.getpid(), self.started_at,
                                 now, self.leader)
        if self.leader:
            await sql.forget_dead_nodes(self.store, now - 3 * self.alive_s)
        rows = await sql.live_sessions(self.store, self.node_id, now - self.alive_s)
        self.registry.remote = [RemoteSession(self, row) for row in rows]
        self.peers = len(await sql.live_nodes(self.store, now - self.alive_s)) - 1
        watched = sorted(self.hub.local_watched())
        if watched:
            await self.send({"t": "watch", "projects": watched})
        for project_id, until in list(self._remote_watch.items()):
            if until < now:
                del self._remote_watch[project_id]
                self._outbox.pop(project_id, None)

    def _on_local_session(self, op: str, session: Any) -> None:
        """Registry hook (sync): a local agent connection opened or closed."""
        self._session_writes.put_nowait((op, session))

    async def _write_sessions(self) -> None:
        while True:
            op, session = await self._session_writes.get()
            try:
                if op == "add":
                    await sql.add_session(self.store, self.node_id, session.session_id, session.agent_id,
                                          session.project_id, session.engines, session.capabilities, time.time())
                else:
                    await sql.remove_session(self.store, self.node_id, session.session_id)
                await self.send({"t": "sess"})
            except Exception:  # noqa: BLE001 - the heartbeat's refresh is the fallback
                log.exception("cluster: could not record agent session %s", op)

    # ------------------------------------------------------------ live stream fan-out

    def watching_changed(self) -> None:
        """Hub hook: a stream opened here; tell the other nodes at once."""
        watched = sorted(self.hub.local_watched())
        task = asyncio.ensure_future(self.send({"t": "watch", "projects": watched}))
        task.add_done_callback(lambda t: t.cancelled() or t.exception() and log.warning(
            "cluster: could not announce watched projects: %s", t.exception()))

    def remote_watched(self) -> frozenset[int]:
        return frozenset(self._remote_watch)

    def forward_changes(self, project_id: int, tasks: list[dict[str, Any]], workers: list[dict[str, Any]]) -> None:
        """Hub hook: changes committed here, for a project another node streams."""
        box = self._outbox.get(project_id)
        if box is None:
            box = self._outbox[project_id] = Subscriber(project_id)
        box.offer(tasks, workers)

    async def _ship(self) -> None:
        while True:
            await asyncio.sleep(self.ship_interval_s)
            for project_id, box in list(self._outbox.items()):
                if not box.ready.is_set():
                    continue
                tasks, workers, resync = box.take()
                try:
                    await self._ship_project(project_id, tasks, workers, resync)
                except Exception:  # noqa: BLE001 - the watchers resync on the next overflow at worst
                    log.exception("cluster: shipping changes of project %s failed", project_id)

    async def _ship_project(self, project_id: int, tasks: list[dict[str, Any]], workers: list[dict[str, Any]],
                            resync: bool) -> None:
        if resync:
            await self.send({"t": "chg", "project_id": project_id, "tasks": [], "workers": [], "resync": True})
            return
        # Batches of rows that fit a notification; a row too long for one
        # (a huge exception text) travels in parts like any long message.
        batch: list[dict[str, Any]] = []
        size = 0
        rows = [("tasks", row) for row in tasks] + [("workers", row) for row in workers]
        for kind, row in rows:
            length = len(_encode(row)) + 1
            if batch and size + length > PART_BYTES:
                await self._send_rows(project_id, batch)
                batch, size = [], 0
            batch.append({"k": kind, "r": row})
            size += length
        if batch:
            await self._send_rows(project_id, batch)

    async def _send_rows(self, project_id: int, batch: list[dict[str, Any]]) -> None:
        await self.send({"t": "chg", "project_id": project_id,
                         "tasks": [b["r"] for b in batch if b["k"] == "tasks"],
                         "workers": [b["r"] for b in batch if b["k"] == "workers"]})

    # ------------------------------------------------------------ commands across nodes

    async def forward_command(self, session: RemoteSession, command: p.Command) -> None:
        await self.send({"t": "cmd", "sid": session.session_id, "agent_id": session.agent_id,
                         "ask": self.commands.is_ask(command.command_id),
                         "command": msgspec.to_builtins(command)}, to=session.node_id)

    async def _run_forwarded(self, msg: dict[str, Any], origin: str) -> None:
        command = msgspec.convert(msg["command"], p.Command)
        session = self.registry.local_session(msg["sid"])
        if session is None:
            await self.send({"t": "res", "command_id": command.command_id, "ask": msg["ask"], "ok": False,
                             "result": None, "error": "the agent left this collector before the command arrived"},
                            to=origin)
            return
        self.commands.accept_forwarded(command.command_id, origin, msg["ask"])
        try:
            await session.send_command(command)
        except Exception as exc:  # noqa: BLE001 - the agent went away while we sent
            self.commands.forget_forwarded(command.command_id)
            await self.send({"t": "res", "command_id": command.command_id, "ask": msg["ask"], "ok": False,
                             "result": None, "error": f"could not reach the agent: {exc}"}, to=origin)

    # ------------------------------------------------------------ the channel

    async def send(self, msg: dict[str, Any], to: str | None = None) -> None:
        msg = {**msg, "from": self.node_id, **({"to": to} if to else {})}
        payload = _encode(msg).decode()
        if len(payload) <= PART_BYTES:
            await sql.notify(self.store, payload)
            return
        part_id = p.new_id()
        pieces = [payload[i:i + PART_BYTES - 200] for i in range(0, len(payload), PART_BYTES - 200)]
        for i, piece in enumerate(pieces):
            await sql.notify(self.store, _encode({"t": "part", "from": self.node_id, "to": to, "id": part_id,
                                                  "i": i, "n": len(pieces), "d": piece}).decode())

    async def _listen(self) -> None:
        while True:
            try:
                async for payload in self.link.payloads():
                    try:
                        msg = _decode(payload)
                        await self._receive(msg)
                    except Exception:  # noqa: BLE001 - one bad message never stops the listener
                        log.exception("cluster: could not handle a message")
            except Exception as exc:  # noqa: BLE001 - reconnect the listener
                log.warning("cluster: listener connection lost (%s); reconnecting", exc)
                await self._step_down()
                await asyncio.sleep(1.0)
                try:
                    await self.link.close()
                    await self.link.open()
                    self._refresh_now.set()
                except Exception as again:  # noqa: BLE001
                    log.warning("cluster: cannot reconnect yet: %s", again)

    async def _receive(self, msg: dict[str, Any]) -> None:
        origin = msg.get("from")
        if origin == self.node_id or msg.get("to") not in (None, self.node_id):
            return
        kind = msg.get("t")
        if kind == "part":
            pieces = self._parts.setdefault(msg["id"], [None] * msg["n"])
            pieces[msg["i"]] = msg["d"]
            if all(piece is not None for piece in pieces):
                del self._parts[msg["id"]]
                await self._receive(_decode("".join(pieces)))  # type: ignore[arg-type]
            return
        if kind == "sess":
            self._refresh_now.set()
        elif kind == "watch":
            until = time.time() + 3 * self.heartbeat_s + 1
            for project_id in msg["projects"]:
                self._remote_watch[int(project_id)] = until
        elif kind == "chg":
            self.hub.offer(int(msg["project_id"]), msg["tasks"], msg["workers"], bool(msg.get("resync")))
        elif kind == "cmd":
            await self._run_forwarded(msg, origin)
        elif kind == "res":
            await self.commands.on_remote_result(msg)
        elif kind == "done":
            self.commands.wake(msg["command_id"])
        elif kind == "kick":
            session = self.registry.local_session(msg["sid"])
            if session is not None:
                await session.close(msg["reason"])
