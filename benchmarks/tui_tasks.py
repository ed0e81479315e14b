"""The console's task table on a big project: time to the first page and to a
filter change, through the very client calls the tasks screen makes (one page
of ``PAGE`` rows, GET …/tasks, plus on opening the counts per state,
GET …/tasks/counts),
against a real collector process.

    python benchmarks/tui_tasks.py                       # 1,000,000 tasks, SQLite
    python benchmarks/tui_tasks.py --db postgres --tasks 200000
    python benchmarks/tui_tasks.py --text-index          # with z4j db text-index on

The tasks go in through the store's ingest (one event per task, 5,000 a
batch), spread over the last seven days: 10 % failures, 50 names, 8 queues,
4 workers. Each figure is the median of ``--repeat`` runs (the first run of
each is not counted: it warms the database's cache, as a console that is
open does). Goals (issue 5): first page < 1 s, a filter change < 300 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

import ingest  # noqa: E402

from tests.support.collector import Collector, mint_tokens, with_store  # noqa: E402
from tests.support.servers import PostgresServer  # noqa: E402
from z4j_agents import protocol as p  # noqa: E402
from z4j_collector.store import make_store, migrate  # noqa: E402
from z4j_collector.store.base import IngestItem  # noqa: E402
from z4j_tui.client import Client  # noqa: E402
from z4j_tui.screens.tasks import PAGE, TaskFilter  # noqa: E402

DAY = 86_400.0
FILTERS = ["state:failure", "queue:q3", "name:app.job.7*", "since:1h", "state:failure worker:w2 since:1d",
           "job-123456"]
"""Typed into the filter line; parsed as the screen parses them."""


async def seed(db_url: str, n: int) -> float:
    store = make_store(db_url)
    await store.open()
    t0 = time.perf_counter()
    now = time.time()
    try:
        pid = await store.project_id("default")
        batch: list[p.TaskEvent] = []
        for i in range(n):
            ts = now - 7 * DAY + (i / n) * 7 * DAY
            failed = i % 10 == 0
            batch.append(p.TaskEvent(
                id=f"{int(ts * 1000):012x}{i:020x}", task_id=f"job-{i}", engine="bare",
                kind="failed" if failed else "succeeded", ts=ts, name=f"app.job.{i % 50}", queue=f"q{i % 8}",
                worker=f"w{i % 4}", runtime=0.01 * (i % 100), exception="Boom('x')" if failed else None))
            if len(batch) == 5000:
                await store.ingest([IngestItem(pid, None, batch)])
                batch = []
        if batch:
            await store.ingest([IngestItem(pid, None, batch)])
    finally:
        await store.close()
    return time.perf_counter() - t0


def screen_fetch(client: Client, filter: TaskFilter, counts: bool) -> int:
    """What TasksScreen.refresh_tasks asks: one page with the filter, and the counts on
    opening (a filter change skips them: the counts route takes no filters)."""
    page = client.list_tasks("default", **filter.params(), limit=PAGE)
    if counts:
        client.task_counts("default")
    return len(page["tasks"])


def timed(client: Client, filter: TaskFilter, repeat: int, counts: bool) -> tuple[float, int]:
    rows = screen_fetch(client, filter, counts)  # warm-up, not counted
    runs = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        screen_fetch(client, filter, counts)
        runs.append(time.perf_counter() - t0)
    return statistics.median(runs) * 1000, rows


def run(kind: str, db_url: str, workdir: Path, n: int, repeat: int, text_index: bool) -> None:
    migrate.upgrade(db_url)
    seeded = asyncio.run(seed(db_url, n))
    print(f"{kind}: {n:,} tasks loaded in {seeded:.0f} s", flush=True)
    if text_index:
        t0 = time.perf_counter()
        with_store(db_url, lambda store: store.set_text_index(True))
        print(f"{kind}: text index built in {time.perf_counter() - t0:.0f} s", flush=True)
    collector = Collector(db_url, workdir).start()
    try:
        client = Client(collector.url, mint_tokens(collector, "viewer")["viewer"])
        try:
            # the first page, cold: a console that just started
            t0 = time.perf_counter()
            rows = screen_fetch(client, TaskFilter(), counts=True)
            cold = (time.perf_counter() - t0) * 1000
            first, _ = timed(client, TaskFilter(), repeat, counts=True)
            print(f"{kind}: first page ({rows} rows + counts): {cold:.0f} ms cold, {first:.0f} ms median "
                  f"(goal < 1000 ms)", flush=True)
            for text in FILTERS:
                ms, rows = timed(client, TaskFilter.parse(text), repeat, counts=False)
                print(f"{kind}: filter {text!r:40} {ms:6.0f} ms median, {rows} rows (goal < 300 ms)", flush=True)
        finally:
            client.close()
    finally:
        collector.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--db", choices=("sqlite", "postgres", "both"), default="sqlite")
    parser.add_argument("--text-index", action="store_true", help="switch the free-text index on (z4j db text-index on)")
    args = parser.parse_args()
    for kind in ("sqlite", "postgres") if args.db == "both" else (args.db,):
        with tempfile.TemporaryDirectory(prefix="z4j-tui-bench-") as tmp:
            workdir = Path(tmp)
            if kind == "sqlite":
                run(kind, f"sqlite:///{workdir}/z4j.db", workdir, args.tasks, args.repeat, args.text_index)
            else:
                with PostgresServer(durable=True, settings=ingest.PG_SETTINGS) as pg:
                    run(kind, pg.create_database("bench"), workdir, args.tasks, args.repeat, args.text_index)


if __name__ == "__main__":
    main()
