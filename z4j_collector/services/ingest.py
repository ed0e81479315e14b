"""The ingest writer: one task that commits agents' batches, grouped.

Gateways hand batches to :meth:`IngestWriter.submit` and ack the agent only
when the returned future resolves, i.e. after the commit. Batches that wait
together are committed in one transaction (group commit), which is what lets
one writer keep up with many agents. The queue is bounded: when it is full,
gateways stop reading their sockets and TCP pushes back on the agents.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from z4j_collector.services.hub import Hub
from z4j_collector.services.metrics import RuntimeHistogram
from z4j_collector.store.base import IngestItem, IngestOutcome, SqlStore

if TYPE_CHECKING:
    from z4j_collector.services.trends import Trends

log = logging.getLogger("z4j.collector.ingest")

# Ingest allocates a few containers per event (decoded payloads, redacted
# copies, rows) that live until their commit. With CPython's defaults (a young
# collection every 700 allocations) that churn triggered full collections
# that rescanned the whole startup heap (Litestar, SQLAlchemy metadata, …)
# every ~20,000 events: measured at 18% of the collector's CPU at 16k
# events/s. Freezing what exists once the app has started takes it out of
# every later collection; a larger young generation lets most per-batch
# objects die by reference count before a collection ever scans them.
# Garbage cycles are still collected, only less often.
GC_YOUNG_THRESHOLD = 20_000
_gc_tuned = False


def tune_gc() -> None:
    """Once per process, when the collector has started (see above)."""
    global _gc_tuned
    if _gc_tuned:
        return
    _gc_tuned = True
    gc.collect()
    gc.freeze()
    young, middle, old = gc.get_threshold()
    if 0 < young < GC_YOUNG_THRESHOLD:
        gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)


@dataclass
class IngestStats:
    batches: int = 0
    events: int = 0
    duplicates: int = 0
    commits: int = 0
    failures: int = 0
    lag_s: float | None = None
    """Last commit: its time minus the newest event timestamp (agent clock) of its batches."""


MAX_GROUP_EVENTS = 5_000
"""Events committed together at most. At saturation the writer finds the
queue full and every group reaches this cap, so one commit's time is what
the batches queued behind it wait: about 0.6 s for 20,000 events at 30,000
events/s, a quarter of that for 5,000, with no loss of rate measured
(docs/performance.md, "Retention under full-rate ingest")."""


class IngestWriter:
    def __init__(self, store: SqlStore, hub: Hub, max_batches: int = 64,
                 max_group_events: int = MAX_GROUP_EVENTS) -> None:
        self.store = store
        self.hub = hub
        self.max_group_events = max_group_events
        self.queue: asyncio.Queue[tuple[IngestItem, asyncio.Future[IngestOutcome]]] = asyncio.Queue(max_batches)
        self.stats = IngestStats()
        self.runtimes = RuntimeHistogram()
        """Runtimes of tasks committed since this process started (/metrics)."""
        self._task: asyncio.Task[None] | None = None
        self.trends: Trends | None = None
        """Given each commit's new task events (services/trends.py); set by the app."""

    def start(self) -> None:
        tune_gc()
        self._task = asyncio.create_task(self._run(), name="z4j-ingest-writer")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def submit(self, item: IngestItem) -> asyncio.Future[IngestOutcome]:
        """Queue a batch; the future resolves once it is committed."""
        future: asyncio.Future[IngestOutcome] = asyncio.get_running_loop().create_future()
        await self.queue.put((item, future))
        return future

    async def _run(self) -> None:
        queue = self.queue
        while True:
            group = [await queue.get()]
            size = len(group[0][0].events)
            while size < self.max_group_events and not queue.empty():
                entry = queue.get_nowait()
                group.append(entry)
                size += len(entry[0].events)
            await self._commit(group)

    async def _commit(self, group: list[tuple[IngestItem, asyncio.Future[IngestOutcome]]]) -> None:
        try:
            result = await self.store.ingest([item for item, _ in group], self.hub.watched())
        except Exception as exc:  # noqa: BLE001 - nothing is acked; agents resend
            if len(group) > 1:
                # One bad batch must not hold back the others: commit alone.
                for entry in group:
                    await self._commit([entry])
                return
            self.stats.failures += 1
            log.error("ingest commit failed: %s", exc)
            for _, future in group:
                if not future.done():
                    future.set_exception(exc)
            return
        self.store.note_ingest()
        stats = self.stats
        stats.commits += 1
        newest = max((item.events[-1].ts for item, _ in group if item.events), default=None)
        if newest is not None:
            stats.lag_s = max(0.0, time.time() - newest)
        if result.runtimes:
            self.runtimes.observe_many(result.runtimes)
        for (_, future), outcome in zip(group, result.outcomes):
            stats.batches += 1
            stats.events += outcome.accepted
            stats.duplicates += outcome.duplicates
            if not future.done():
                future.set_result(outcome)
        self.hub.publish(result)
        if self.trends is not None:
            self.trends.observe(result)
