"""Retention under load: a day of old task events (1,000,000 by default) goes
while ingest runs at full rate; the longest ingest stall is reported.

A real collector process on SQLite and on PostgreSQL (a private, durable
server), senders as in benchmarks/ingest.py streaming new events as fast as
the collector takes them, and the collector's own retention pass (the
leader's background job, every ``Z4J_RETENTION_PASS_S``) removing the old
day: on PostgreSQL by dropping its partition, on SQLite by batched deletes.

    python benchmarks/retention.py                  # both databases, at saturation
    python benchmarks/retention.py --rate 8000      # a steady 8,000 events/s offered
    python benchmarks/retention.py --old 200000 --db sqlite

Stall: the longest gap between two consecutive commits of new events
(``task_events.ingested_at``) while the senders were sending; the pass must
happen inside that window (the old day is counted at the end; 1,000,000
new events by default, so SQLite's batched deletes finish while they are
sent). At saturation the collector commits groups of up to
``MAX_GROUP_EVENTS`` (z4j_collector/services/ingest.py), a few per second;
with ``--rate`` the senders offer a steady load below saturation, commits
come every few tens of milliseconds, and a stall shows as it is. Commit lag
(commit time minus emit time of each new event, p99 and max) says the same
from the events' side; every gap over 400 ms is listed with its time into
the run. Each database runs twice: without the old day (baseline), then
with it.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

import ingest  # noqa: E402
import workload  # noqa: E402

from tests.support.collector import Collector  # noqa: E402
from tests.support.servers import PostgresServer  # noqa: E402
from z4j_agents import protocol as p  # noqa: E402
from z4j_collector.store import make_store, migrate  # noqa: E402
from z4j_collector.store.base import IngestItem  # noqa: E402

DAY = 86_400.0
RETENTION_DAYS = 3


async def seed_old_day(db_url: str, n: int) -> float:
    """``n`` events of ``n // 4`` tasks, all on one day ten days ago; the
    project keeps events ``RETENTION_DAYS`` days. Returns the seconds it took."""
    store = make_store(db_url)
    await store.open()
    t0 = time.perf_counter()
    try:
        pid = await store.project_id("default")
        day = (time.time() - 10 * DAY) // DAY * DAY
        kinds = ("received", "started", "succeeded", "succeeded")
        batch: list[p.TaskEvent] = []
        for i in range(n):
            ts = day + (i / n) * DAY
            batch.append(p.TaskEvent(id=f"{int(ts * 1000):012x}{i:020x}", task_id=f"old-{i // 4}", engine="celery",
                                     kind=kinds[i % 4], ts=ts, name="app.old", queue="q", worker="w0"))
            if len(batch) == 5000:
                await store.ingest([IngestItem(pid, None, batch)])
                batch = []
        if batch:
            await store.ingest([IngestItem(pid, None, batch)])

        async def keep(tx):
            await store.set_retention(tx, pid, {"events_days": RETENTION_DAYS, "tasks_days": 30, "rollups_days": 30})

        await store.write(keep)
    finally:
        await store.close()
    return time.perf_counter() - t0


async def _read(db_url: str, sql: str) -> list[tuple]:
    store = make_store(db_url)
    await store.open()
    try:
        return await store.fetchall(sql)
    finally:
        await store.close()


def run(db_url: str, workdir: Path, old: int, new: int, senders: int, rate: float) -> dict:
    migrate.upgrade(db_url)
    seeded_s = asyncio.run(seed_old_day(db_url, old))
    items = ingest.to_z4j(workload.generate(new, heartbeats=False))
    # The first retention pass comes 3 s after start, while the senders run.
    collector = Collector(db_url, workdir, env={"Z4J_RETENTION_PASS_S": "3"}).start()
    try:
        ctx = mp.get_context("fork")
        start, done = ctx.Event(), ctx.Queue()
        procs = []
        for i in range(senders):
            env = collector.agent_env(collector.create_agent(f"bench-{i}"))
            procs.append(ctx.Process(target=ingest.sender,
                                     args=(env, items[i::senders], start, done, 20_000, rate / senders)))
        for proc in procs:
            proc.start()
        time.sleep(0.5)
        start.set()
        results = [done.get(timeout=1800) for _ in procs]
        for proc in procs:
            proc.join(30)
    finally:
        collector.stop()
    if not all(r[2] for r in results) or any(r[3] for r in results):
        raise RuntimeError(f"a sender did not deliver everything: {results}")
    left = asyncio.run(_read(db_url, "SELECT count(*) FROM task_events WHERE task_id LIKE 'old-%'"))[0][0]
    new_rows = asyncio.run(_read(db_url, "SELECT ingested_at, ingested_at - ts FROM task_events "
                                         "WHERE task_id NOT LIKE 'old-%'"))
    commits = sorted({r[0] for r in new_rows})
    lags = sorted(r[1] for r in new_rows)
    t0, t1 = min(r[0] for r in results), max(r[1] for r in results)
    window = [c for c in commits if t0 <= c <= t1]
    gaps = [b - a for a, b in zip(window, window[1:])]
    return {"old_events": old, "old_left": left, "seeded_s": round(seeded_s, 1), "new_events": len(items),
            "events_per_s": round(len(items) / (t1 - t0)), "commits": len(window),
            "max_stall_ms": round(max(gaps) * 1000, 1) if gaps else None,
            "slow_gaps": [(round(a - t0, 1), round((b - a) * 1000)) for a, b in zip(window, window[1:])
                          if b - a > 0.4],
            "lag_p99_ms": round(lags[int(len(lags) * 0.99)] * 1000, 1), "lag_max_ms": round(lags[-1] * 1000, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--old", type=int, default=1_000_000, help="events of the old day (default 1,000,000)")
    parser.add_argument("--new", type=int, default=1_000_000,
                        help="events sent during the pass (default 1,000,000)")
    parser.add_argument("--senders", type=int, default=1)
    parser.add_argument("--rate", type=float, default=0.0,
                        help="events/s offered, steadily (default 0: as fast as the collector takes them)")
    parser.add_argument("--db", choices=("sqlite", "postgres", "both"), default="both")
    args = parser.parse_args()
    for kind in ("sqlite", "postgres") if args.db == "both" else (args.db,):
        # The same ingest without an old day first: the stall retention adds
        # is the difference, on this machine, in this run.
        for old in (0, args.old):
            with tempfile.TemporaryDirectory(prefix="z4j-retention-") as tmp:
                workdir = Path(tmp)
                if kind == "sqlite":
                    result = run(f"sqlite:///{workdir}/z4j.db", workdir, old, args.new, args.senders, args.rate)
                else:
                    with PostgresServer(durable=True, settings=ingest.PG_SETTINGS) as pg:
                        result = run(pg.create_database("bench"), workdir, old, args.new, args.senders,
                                     args.rate)
            gone = "all gone" if result["old_left"] == 0 else f"{result['old_left']:,} LEFT"
            what = f"{old:,} old events ({gone})" if old else "no old events (baseline)"
            print(f"{kind}: {what} while ingesting {result['new_events']:,} at {result['events_per_s']:,}/s; "
                  f"longest stall between commits {result['max_stall_ms']} ms ({result['commits']} commits); "
                  f"commit lag p99 {result['lag_p99_ms']} ms, max {result['lag_max_ms']} ms; "
                  f"gaps over 400 ms (s into the run, ms): {result['slow_gaps']}",
                  flush=True)


if __name__ == "__main__":
    main()
