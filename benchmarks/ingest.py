"""Ingest benchmark: events/s persisted and acked, and commit lag.

A real collector process (``z4j serve``) on SQLite and on PostgreSQL (a
private, durable server started here), agent-runtime senders in their own
processes over real WebSockets, and the identical Celery-format event stream
fed to Celery's ``celery.events.state.State`` and Flower's ``EventsState``
(the in-memory peers) for comparison.

    python benchmarks/ingest.py                 # table
    python benchmarks/ingest.py --json          # one JSON object
    python benchmarks/ingest.py --events 100000 --runs 3 --senders 1

events/s: all events emitted, committed and acked, divided by the time from
the first emit to the last ack. Commit lag: for each event, the collector's
commit time minus the time the agent emitted it (both on this machine's
clock), read back from the task_events table.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

import peers  # noqa: E402
import workload  # noqa: E402

from tests.support.collector import Collector, with_store  # noqa: E402
from tests.support.servers import PostgresServer  # noqa: E402

# Durable (fsync, synchronous_commit and full_page_writes stay on), sized as
# docs/production.md recommends for a collector host instead of PostgreSQL's
# 128 MB defaults.
PG_SETTINGS = ("shared_buffers = 1GB", "max_wal_size = 4GB", "checkpoint_timeout = 15min", "wal_buffers = 64MB")

KIND = {
    "task-sent": "sent", "task-received": "received", "task-started": "started", "task-succeeded": "succeeded",
    "task-failed": "failed", "task-retried": "retried", "task-revoked": "revoked", "task-rejected": "rejected",
}


def to_z4j(events: list[dict]) -> list[tuple]:
    """Celery event dicts -> (kind, fields) ready for the bare agent API.

    Celery ships args/kwargs as repr strings; a z4j agent captures the real
    values, so the benchmark sends the parsed structures, as an agent would.
    """
    import ast

    out = []
    for ev in events:
        kind = KIND.get(ev["type"])
        if kind is None:
            out.append(("worker", ev["hostname"], {"active": ev.get("active"), "processed": ev.get("processed")}))
            continue
        fields: dict = {"worker": ev.get("hostname")}
        if kind == "received":
            fields.update(name=ev["name"], args=_literal(ast, ev["args"]), kwargs=_literal(ast, ev["kwargs"]),
                          retries=ev.get("retries"), parent_id=ev.get("parent_id"), root_id=ev.get("root_id"),
                          queue="celery")
        elif kind == "succeeded":
            fields.update(result=_literal(ast, ev.get("result")), runtime=ev.get("runtime"))
        elif kind in ("failed", "retried"):
            fields.update(exception=ev.get("exception"), traceback=ev.get("traceback"))
        out.append(("task", ev["uuid"], kind, {k: v for k, v in fields.items() if v is not None}))
    return out


def _literal(ast, text):
    try:
        return ast.literal_eval(text) if isinstance(text, str) else text
    except (ValueError, SyntaxError):
        return text


def sender(env: dict, items: list[tuple], start: mp.Event, done: mp.Queue, high_water: int,
           rate: float = 0.0) -> None:
    os.environ.update(env)
    from z4j_agents import protocol as p
    from z4j_agents.bare import Agent

    agent = Agent.from_env(engine="celery")
    runtime = agent.runtime
    # Build the events the way an engine adapter would, before the clock
    # starts: the timer covers the agent runtime (emit, redact, batch, sign,
    # send) and the collector (verify, redact, commit, ack), not this harness.
    events = [
        p.TaskEvent(id=p.new_id(), task_id=item[1], engine="celery", kind=item[2], ts=0.0, **item[3])
        if item[0] == "task"
        else p.WorkerEvent(id=p.new_id(), worker=item[1], engine="celery", kind="heartbeat", ts=0.0, info=item[2])
        for item in items
    ]
    # A million prebuilt events are this harness's, not the agent's: out of
    # every later collection, or each full one pauses the sender for a second.
    gc.collect()
    gc.freeze()
    runtime.connected.wait(30)
    start.wait()
    t0, cpu0 = time.time(), time.process_time()
    emit, now, queue = runtime.emit, time.time, runtime._queue
    for n, event in enumerate(events):
        event.ts = now()  # emit time: commit lag is measured from here
        emit(event)
        if n % 64 == 0:
            if rate:
                # A steady offered load: commit lag as a lightly loaded
                # collector shows it, not the agent's queue at saturation.
                ahead = t0 + n / rate - now()
                if ahead > 0:
                    time.sleep(ahead)
            # Offer load as fast as the collector takes it, without overflowing
            # the agent's buffer (an overflow would be counted, not measured).
            while len(queue) > high_water:
                time.sleep(0.001)
    ok = agent.flush(600)
    t1 = time.time()
    cpu = time.process_time() - cpu0
    done.put((t0, t1, ok, runtime.dropped, cpu))
    agent.stop()


def _cpu_seconds(pid: int) -> float:
    """User + system CPU of one process so far (Linux /proc), 0 when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _children_cpu(parent: int) -> dict[int, float]:
    """CPU of every live child of ``parent`` (PostgreSQL's backends and helpers)."""
    out = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rpartition(")")[2].split()
            except OSError:
                continue
            if int(fields[1]) == parent:
                out[int(entry)] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return out


def _postmaster(pg) -> int | None:
    if pg is None:
        return None
    try:
        return int((pg.data_dir / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def run_once(db_url: str, items: list[tuple], senders: int, workdir: Path, rate: float = 0.0, pg=None,
             collectors: int = 1, text_index: bool = False) -> dict:
    """One run; with ``collectors`` > 1 (PostgreSQL), that many collector
    processes share the database and sender i connects to collector i % n."""
    nodes = [Collector(db_url, workdir) for _ in range(collectors)]
    if text_index:
        with_store(db_url, lambda store: store.set_text_index(True))
    for node in nodes:
        node.start()
    try:
        ctx = mp.get_context("fork")
        start, done = ctx.Event(), ctx.Queue()
        procs = []
        for i in range(senders):
            node = nodes[i % collectors]
            creds = node.create_agent(f"bench-{i}")
            env = node.agent_env(creds)
            procs.append(ctx.Process(target=sender, args=(env, items[i::senders], start, done, 20_000, rate / senders)))
        for proc in procs:
            proc.start()
        time.sleep(2.0)  # let every sender connect before the clock starts
        postmaster = _postmaster(pg)
        db_cpu0 = _children_cpu(postmaster) if postmaster else {}
        collector_cpu0 = sum(_cpu_seconds(node.proc.pid) for node in nodes)
        start.set()
        results = [done.get(timeout=900) for _ in procs]
        # CPU per event of each process over the timed window: on this shared
        # machine a steadier yardstick for one stage than the wall-clock rate.
        collector_cpu = sum(_cpu_seconds(node.proc.pid) for node in nodes) - collector_cpu0
        db_cpu = sum(t - db_cpu0.get(pid, 0.0) for pid, t in _children_cpu(postmaster).items()) if postmaster else 0.0
        for proc in procs:
            proc.join(30)
        if not all(r[2] for r in results) or any(r[3] for r in results):
            raise RuntimeError(f"a sender did not deliver everything: {results}")
        elapsed = max(r[1] for r in results) - min(r[0] for r in results)
        task_events = sum(1 for item in items if item[0] == "task")
        lags = asyncio.run(_lags(db_url))
        if len(lags) != task_events:
            raise RuntimeError(f"stored {len(lags)} task events, sent {task_events}")
    finally:
        for node in nodes:
            node.stop()
    lags.sort()
    per_event = 1e6 / len(items)
    cpu = {"sender": sum(r[4] for r in results) * per_event, "collector": collector_cpu * per_event}
    if postmaster:
        cpu["postgres"] = db_cpu * per_event
    return {
        "events_per_s": len(items) / elapsed,
        "lag_p50_ms": lags[len(lags) // 2] * 1000,
        "lag_p99_ms": lags[int(len(lags) * 0.99)] * 1000,
        "cpu_us_per_event": {k: round(v, 1) for k, v in cpu.items()},
    }


async def _lags(db_url: str) -> list[float]:
    from z4j_collector.store import make_store

    store = make_store(db_url)
    await store.open()
    try:
        return [row[0] for row in await store.fetchall("SELECT ingested_at - ts FROM task_events")]
    finally:
        await store.close()


def measure(kind: str, items: list[tuple], runs: int, senders: int, rate: float = 0.0, collectors: int = 1,
            text_index: bool = False) -> dict:
    results = []
    for _ in range(runs):
        with tempfile.TemporaryDirectory(prefix="z4j-bench-") as tmp:
            workdir = Path(tmp)
            if kind == "sqlite":
                results.append(run_once(f"sqlite:///{workdir}/z4j.db", items, senders, workdir, rate,
                                        text_index=text_index))
            else:
                with PostgresServer(durable=True, settings=PG_SETTINGS) as pg:
                    results.append(run_once(pg.create_database("bench"), items, senders, workdir, rate, pg,
                                            collectors, text_index))
        cpu = ", ".join(f"{k} {v}" for k, v in results[-1]["cpu_us_per_event"].items())
        print(f"  {kind}: {results[-1]['events_per_s']:,.0f} events/s (CPU µs/event: {cpu})", file=sys.stderr)
    return {
        "events_per_s": statistics.median(r["events_per_s"] for r in results),
        "lag_p50_ms": statistics.median(r["lag_p50_ms"] for r in results),
        "lag_p99_ms": statistics.median(r["lag_p99_ms"] for r in results),
        "runs": [round(r["events_per_s"]) for r in results],
        "cpu_us_per_event": [r["cpu_us_per_event"] for r in results],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--senders", type=int, default=1)
    parser.add_argument("--lag-rate", type=float, default=5000.0,
                        help="events/s offered in the extra run that measures commit lag below saturation (0: skip)")
    parser.add_argument("--db", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--collectors", type=int, default=1,
                        help="collector processes on one PostgreSQL database (senders spread over them)")
    parser.add_argument("--text-index", action="store_true",
                        help="with the free-text index switched on (z4j db text-index on)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.collectors > 1 and args.db != "postgres":
        parser.error("--collectors above 1 needs --db postgres: several collectors share one PostgreSQL")
    if args.collectors > args.senders:
        parser.error(f"--collectors {args.collectors} needs at least as many --senders")

    stream = workload.generate(args.events)
    items = to_z4j(stream)
    out: dict = {}
    for kind in (["sqlite", "postgres"] if args.db == "both" else [args.db]):
        print(f"z4j on {kind}: {args.events:,} events, {args.senders} sender(s), {args.collectors} collector(s), "
              f"{args.runs} runs", file=sys.stderr)
        out[kind] = measure(kind, items, args.runs, args.senders, collectors=args.collectors,
                            text_index=args.text_index)
        if args.lag_rate:
            print(f"z4j on {kind}: commit lag at {args.lag_rate:,.0f} events/s offered", file=sys.stderr)
            steady = measure(kind, items[: int(args.lag_rate * 10)], 1, args.senders, args.lag_rate,
                             args.collectors, args.text_index)
            out[kind]["steady"] = {"offered_per_s": args.lag_rate, "lag_p50_ms": steady["lag_p50_ms"],
                                   "lag_p99_ms": steady["lag_p99_ms"]}
    print("peers on the identical stream", file=sys.stderr)
    out["celery_state"] = peers.celery_state_rate(stream, repeat=args.runs)
    out["flower_state"] = peers.flower_state_rate(stream, repeat=args.runs)
    for kind in ("sqlite", "postgres"):
        if kind in out:
            out[kind]["vs_celery_state"] = round(out[kind]["events_per_s"] / out["celery_state"]["events_per_s"], 2)
            out[kind]["vs_flower_state"] = round(out[kind]["events_per_s"] / out["flower_state"]["events_per_s"], 2)
    if args.json:
        print(json.dumps(out, indent=2))
        return
    print(f"{'':18}{'events/s':>10}{'lag p50 ms':>12}{'lag p99 ms':>12}{'÷ Celery':>10}{'÷ Flower':>10}  runs")
    for kind in ("sqlite", "postgres"):
        if kind in out:
            r = out[kind]
            print(f"{'z4j ' + kind:18}{r['events_per_s']:>10,.0f}{r['lag_p50_ms']:>12.1f}{r['lag_p99_ms']:>12.1f}"
                  f"{r['vs_celery_state']:>10.2f}{r['vs_flower_state']:>10.2f}  {r['runs']}")
    for kind in ("sqlite", "postgres"):
        if "steady" in out.get(kind, {}):
            s = out[kind]["steady"]
            print(f"{kind + ' at ' + format(s['offered_per_s'], ',.0f') + '/s':18}{'':>10}{s['lag_p50_ms']:>12.1f}"
                  f"{s['lag_p99_ms']:>12.1f}")
    for kind, label in (("celery_state", "Celery State"), ("flower_state", "Flower state")):
        print(f"{label:18}{out[kind]['events_per_s']:>10,.0f}  (in memory, nothing persisted)")


if __name__ == "__main__":
    main()
