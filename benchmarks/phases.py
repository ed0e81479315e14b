"""CPU per event of each ingest stage, in one process (no network, no peers).

    python benchmarks/phases.py                      # agent + collector stages, SQLite store
    python benchmarks/phases.py --db postgres        # store stage on a private durable PostgreSQL
    python benchmarks/phases.py --events 50000 --repeat 3

The end-to-end benchmark (``ingest.py``) shares two cores between sender,
collector and database, so its rate moves ±15% with whatever else runs; this
script times each stage's CPU (``time.process_time``, best of ``--repeat``)
on the same workload, which is what a change to one stage should be judged
by. Stages:

* agent redact: ``AgentRuntime._prepare`` on freshly built events;
* agent encode+sign: one ``EventBatch`` per 1,000 events, sealed;
* collector open: verify + decode each sealed batch;
* collector clean: ``Gateway._clean`` (key checks, NUL, redaction again);
* store ingest: ``SqlStore.ingest`` in groups, as the ingest writer commits
  (CPU of this process only; PostgreSQL's own CPU is not included, its wall
  time is printed beside).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

import workload  # noqa: E402
from ingest import PG_SETTINGS, to_z4j  # noqa: E402


def build(items: list[tuple]) -> list:
    from z4j_agents import protocol as p

    return [
        p.TaskEvent(id=p.new_id(), task_id=item[1], engine="celery", kind=item[2], ts=time.time(), **item[3])
        if item[0] == "task"
        else p.WorkerEvent(id=p.new_id(), worker=item[1], engine="celery", kind="heartbeat", ts=time.time(),
                           info=item[2])
        for item in items
    ]


def timed(fn, repeat: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.process_time()
        out = fn()
        best = min(best, time.process_time() - t0)
    return best, out


def best_of(run, repeat: int) -> tuple[float, object]:
    """``run`` prepares fresh input and returns timed(...) of the stage alone."""
    best, out = float("inf"), None
    for _ in range(repeat):
        spent, out = run()
        best = min(best, spent)
    return best, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--db", choices=["sqlite", "postgres", "none"], default="sqlite")
    parser.add_argument("--group", type=int, default=4, help="batches of 1,000 per store commit")
    args = parser.parse_args()

    from z4j_agents import protocol as p
    from z4j_agents.config import AgentConfig
    from z4j_agents.redaction import Redactor
    from z4j_agents.runtime import AgentRuntime
    from z4j_collector.api.gateway import Gateway

    items = to_z4j(workload.generate(args.events))
    n = len(items)
    config = AgentConfig(brain_url="ws://127.0.0.1:1/agent/ws", token="t", hmac_secret="s" * 32,
                         project="bench", agent_name="bench")
    runtime = AgentRuntime(config)
    key = p.frame_key("s" * 32)
    rows: dict[str, float] = {}

    def agent_redact():
        events = build(items)
        return timed(lambda: [runtime._prepare(ev) for ev in events], 1)

    rows["agent redact"], prepared = best_of(agent_redact, args.repeat)

    def encode():
        signer = p.Signer(key)
        return [signer.seal_body(p.encode_frame(p.EventBatch(batch_id=p.new_id(), events=prepared[i:i + 1000])))
                for i in range(0, n, 1000)]

    rows["agent encode+sign"], sealed = timed(encode, args.repeat)

    def open_all():
        verifier = p.Verifier(key)
        return [verifier.open(raw) for raw in sealed]

    rows["collector open"], batches = timed(open_all, args.repeat)
    gateway = Gateway(None, None, None, None, Redactor())  # type: ignore[arg-type]

    def clean():
        fresh = [b.events for b in open_all()]
        return timed(lambda: [gateway._clean(events)[0] for events in fresh], 1)

    rows["collector clean"], cleaned = best_of(clean, args.repeat)

    wall = None
    if args.db != "none":
        spent, wall = asyncio.run(store_phase(args.db, cleaned, args.group))
        rows[f"store ingest ({args.db}, this process)"] = spent

    total = 0.0
    for name, seconds in rows.items():
        total += seconds
        print(f"{name:40} {seconds / n * 1e6:7.1f} µs/event")
    print(f"{'total (this process)':40} {total / n * 1e6:7.1f} µs/event  ({n:,} events)")
    if wall is not None:
        print(f"{'store ingest wall':40} {wall / n * 1e6:7.1f} µs/event  ({n / wall:,.0f} events/s)")


async def store_phase(db: str, cleaned: list[list], group: int) -> tuple[float, float]:
    from tests.support.collector import z4j
    from z4j_collector.store import make_store
    from z4j_collector.store.base import IngestItem

    with tempfile.TemporaryDirectory(prefix="z4j-phases-") as tmp:
        if db == "sqlite":
            return await _store_run(f"sqlite:///{tmp}/z4j.db", cleaned, group, z4j, make_store, IngestItem)
        from tests.support.servers import PostgresServer

        with PostgresServer(durable=True, settings=PG_SETTINGS) as pg:
            return await _store_run(pg.create_database("phases"), cleaned, group, z4j, make_store, IngestItem)


async def _store_run(url, cleaned, group, z4j, make_store, IngestItem) -> tuple[float, float]:
    z4j("db", "upgrade", "--db", url)
    store = make_store(url)
    await store.open()
    try:
        project_id = await store.project_id("default")
        agent_id = await store.create_agent(project_id, "bench", "h" * 64, b"k" * 32)
        t0, w0 = time.process_time(), time.perf_counter()
        for i in range(0, len(cleaned), group):
            await store.ingest([IngestItem(project_id, agent_id, events) for events in cleaned[i:i + group]])
        return time.process_time() - t0, time.perf_counter() - w0
    finally:
        await store.close()


if __name__ == "__main__":
    main()
