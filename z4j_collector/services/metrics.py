"""Prometheus metrics: the text exposition format (0.0.4), written here.

What one scrape shows (docs/api.md "Metrics"):

- from the database, read at scrape time (store/metrics.py): tasks by
  project, engine and state; the depth each queue last reported; workers up;
  commands by project, action and state;
- from this process: agents connected, the ingest writer's counters and its
  last commit's lag, and a histogram of task runtimes *since this collector
  process started* — kept in memory, fed by the ingest writer from the new
  events of each commit that report a runtime (no SQL on the ingest path,
  nothing re-read at scrape time). Counters and the histogram restart at 0
  with the process, which Prometheus' ``rate()``/``increase()`` handle.

Other services add their own families with :meth:`Metrics.add_source`.
"""

from __future__ import annotations

import bisect
import math
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Seconds. Task runtimes span milliseconds (no-op tasks) to hours (reports).
RUNTIME_BUCKETS: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
)


class RuntimeHistogram:
    """Cumulative runtime histograms per (project_id, engine), in memory."""

    def __init__(self, buckets: Sequence[float] = RUNTIME_BUCKETS) -> None:
        self.buckets = tuple(buckets)
        # key -> [count per bucket (last: above the largest bound)..., sum]
        self._series: dict[tuple[int, str], list[float]] = {}

    def observe_many(self, rows: Iterable[tuple[int, str, float]]) -> None:
        buckets, series, width = self.buckets, self._series, len(self.buckets) + 1
        for project_id, engine, runtime in rows:
            if not (runtime >= 0 and math.isfinite(runtime)):
                continue  # nonsense from an agent never poisons the sum
            counts = series.get((project_id, engine))
            if counts is None:
                counts = series[(project_id, engine)] = [0.0] * (width + 1)
            counts[bisect.bisect_left(buckets, runtime)] += 1
            counts[width] += runtime

    def snapshot(self) -> dict[tuple[int, str], tuple[list[int], float]]:
        """key -> (cumulative counts per bound, +Inf last; sum)."""
        out = {}
        for key, counts in self._series.items():
            cumulative, running = [], 0
            for n in counts[:-1]:
                running += int(n)
                cumulative.append(running)
            out[key] = (cumulative, counts[-1])
        return out


@dataclass
class Family:
    """One metric family: name, type, help and its samples."""

    name: str
    kind: str
    """gauge · counter · histogram"""
    help: str
    samples: list[tuple[str, dict[str, str], float]] = field(default_factory=list)
    """(sample name, labels, value)"""

    def add(self, value: float, suffix: str = "", **labels: Any) -> None:
        self.samples.append((self.name + suffix, {k: str(v) for k, v in labels.items()}, value))


def _label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer() and abs(value) < 2**53):
        return str(int(value))
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def render(families: Iterable[Family]) -> str:
    lines: list[str] = []
    for family in families:
        help_text = family.help.replace("\\", "\\\\").replace("\n", "\\n")
        lines.append(f"# HELP {family.name} {help_text}")
        lines.append(f"# TYPE {family.name} {family.kind}")
        for name, labels, value in family.samples:
            if labels:
                inner = ",".join(f'{k}="{_label_value(v)}"' for k, v in labels.items())
                lines.append(f"{name}{{{inner}}} {_number(value)}")
            else:
                lines.append(f"{name} {_number(value)}")
    return "\n".join(lines) + "\n"


Source = Callable[[], Awaitable[list[Family]]]


class Metrics:
    """Collects every family for one scrape."""

    def __init__(self, store: Any, writer: Any, registry: Any, version: str, worker_fresh_s: float) -> None:
        self.store = store
        self.writer = writer
        self.registry = registry
        self.version = version
        self.worker_fresh_s = worker_fresh_s
        """A worker is up when its state is online and it was heard from within this many seconds."""
        self._sources: list[Source] = []

    def add_source(self, source: Source) -> None:
        """Another service's families (reconciler actions, notification deliveries, …)."""
        self._sources.append(source)

    async def scrape(self) -> str:
        families = await self._core() + await self._deliveries()
        for source in self._sources:
            families.extend(await source())
        return render(families)

    async def _deliveries(self) -> list[Family]:
        deliveries = Family("z4j_notification_deliveries", "gauge",
                            "Notification deliveries in the delivery log by project, channel kind and status "
                            "(pending, sent, failed, refused).")
        for project, kind, status, count in await self.store.metric_delivery_counts():
            deliveries.add(count, project=project, kind=kind, status=status)
        return [deliveries]

    async def _core(self) -> list[Family]:
        store, now = self.store, time.time()
        slugs = await store.metric_project_slugs()

        info = Family("z4j_collector_info", "gauge", "The collector's version and database (always 1).")
        info.add(1, version=self.version, database=store.dialect)

        tasks = Family("z4j_tasks", "gauge", "Tasks on record by project, engine and state.")
        for project, engine, state, count in await store.metric_task_counts():
            tasks.add(count, project=project, engine=engine, state=state)

        runtime = Family("z4j_task_runtime_seconds", "histogram",
                         "Runtimes reported by tasks that finished since this collector process started.")
        bounds = [_number(b) for b in self.writer.runtimes.buckets] + ["+Inf"]
        for (project_id, engine), (cumulative, total) in sorted(self.writer.runtimes.snapshot().items()):
            labels = {"project": slugs.get(project_id, str(project_id)), "engine": engine}
            for le, count in zip(bounds, cumulative):
                runtime.add(count, "_bucket", **labels, le=le)
            runtime.add(total, "_sum", **labels)
            runtime.add(cumulative[-1], "_count", **labels)

        depth = Family("z4j_queue_depth", "gauge", "Messages waiting in each queue, as its agent last reported.")
        for project, engine, queue, value, _ in await store.metric_queues():
            depth.add(value, project=project, engine=engine, queue=queue)

        up = Family("z4j_worker_up", "gauge",
                    f"1 when the worker is online and was heard from in the last {self.worker_fresh_s:g} s, else 0.")
        for project, engine, worker, state, last_seen in await store.metric_workers():
            fresh = state == "online" and now - last_seen <= self.worker_fresh_s
            up.add(1 if fresh else 0, project=project, engine=engine, worker=worker)

        agents = Family("z4j_agents_connected", "gauge", "Live agent connections to this collector process.")
        connected = dict.fromkeys(slugs.values(), 0)
        for session in self.registry.local_sessions():
            slug = slugs.get(session.project_id)
            if slug is not None:
                connected[slug] += 1
        for project, count in sorted(connected.items()):
            agents.add(count, project=project)

        commands = Family("z4j_commands_total", "gauge", "Commands on record by project, action and state.")
        for project, action, state, count in await store.metric_command_counts():
            commands.add(count, project=project, action=action, state=state)

        stats = self.writer.stats
        ingest = []
        for name, value, text in (
            ("events", stats.events, "Events committed (new, not duplicates) since this process started."),
            ("batches", stats.batches, "Agent batches committed since this process started."),
            ("duplicates", stats.duplicates, "Events dropped as already stored (resent batches)."),
            ("commits", stats.commits, "Ingest transactions committed (one per group of batches)."),
            ("failures", stats.failures, "Ingest commits that failed (the agents resend)."),
        ):
            family = Family(f"z4j_ingest_{name}_total", "counter", text)
            family.add(value)
            ingest.append(family)
        lag = Family("z4j_ingest_lag_seconds", "gauge",
                     "Last commit: its time minus the newest event timestamp of its batches (NaN before any).")
        lag.add(stats.lag_s if stats.lag_s is not None else math.nan)
        waiting = Family("z4j_ingest_queue_batches", "gauge", "Agent batches waiting for the ingest writer.")
        waiting.add(self.writer.queue.qsize())
        return [info, tasks, runtime, depth, up, agents, commands, *ingest, lag, waiting]
