"""Live fan-out of committed changes to client streams.

Each subscriber keeps a dict of pending changes keyed by task (or worker),
so a burst of updates to one task costs one entry: changes are coalesced, not
queued. The dict is bounded (``max_pending``); past it the subscriber is told
to resync (refetch over REST) instead of growing without limit.
"""

from __future__ import annotations

import asyncio
from typing import Any

from z4j_collector.store.base import IngestResult


class Subscriber:
    def __init__(self, project_id: int, max_pending: int = 10_000) -> None:
        self.project_id = project_id
        self.max_pending = max_pending
        self.tasks: dict[tuple[str, str], dict[str, Any]] = {}
        self.workers: dict[tuple[str, str], dict[str, Any]] = {}
        self.resync = False
        self.ready = asyncio.Event()

    def offer(self, tasks: list[dict[str, Any]], workers: list[dict[str, Any]]) -> None:
        for task in tasks:
            self.tasks[(task["engine"], task["task_id"])] = task
        for worker in workers:
            self.workers[(worker["engine"], worker["name"])] = worker
        if len(self.tasks) + len(self.workers) > self.max_pending:
            self.tasks.clear()
            self.workers.clear()
            self.resync = True
        self.ready.set()

    def take(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]], bool]:
        tasks, workers, resync = list(self.tasks.values()), list(self.workers.values()), self.resync
        self.tasks, self.workers, self.resync = {}, {}, False
        self.ready.clear()
        return tasks, workers, resync


class Hub:
    def __init__(self) -> None:
        self._subscribers: dict[int, set[Subscriber]] = {}
        self.cluster: Any = None
        """services/cluster.PgCluster when other collectors share the database:
        it ships changes of the projects they stream, and brings theirs."""

    def subscribe(self, project_id: int) -> Subscriber:
        sub = Subscriber(project_id)
        self._subscribers.setdefault(project_id, set()).add(sub)
        if self.cluster is not None:
            self.cluster.watching_changed()
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        subs = self._subscribers.get(sub.project_id)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._subscribers[sub.project_id]

    def local_watched(self) -> frozenset[int]:
        """Projects somebody is streaming from this process right now."""
        return frozenset(self._subscribers)

    def watched(self) -> frozenset[int]:
        """Projects somebody is streaming, from this process or another collector."""
        if self.cluster is None:
            return frozenset(self._subscribers)
        return frozenset(self._subscribers) | self.cluster.remote_watched()

    def publish(self, result: IngestResult) -> None:
        """Changes committed by this process: to its streams, and to the
        other collectors that stream the project."""
        remote = self.cluster.remote_watched() if self.cluster is not None else frozenset()
        if not self._subscribers and not remote:
            return
        by_project: dict[int, tuple[list, list]] = {}
        for task in result.tasks:
            by_project.setdefault(task["project_id"], ([], []))[0].append(task)
        for worker in result.workers:
            by_project.setdefault(worker["project_id"], ([], []))[1].append(worker)
        for project_id, (tasks, workers) in by_project.items():
            self.offer(project_id, tasks, workers)
            if project_id in remote:
                self.cluster.forward_changes(project_id, tasks, workers)

    def offer(self, project_id: int, tasks: list[dict[str, Any]], workers: list[dict[str, Any]],
              resync: bool = False) -> None:
        """Changes of one project to this process's streams."""
        for sub in self._subscribers.get(project_id, ()):
            if resync:
                sub.offer([], [])
                sub.resync = True
            else:
                sub.offer(tasks, workers)
