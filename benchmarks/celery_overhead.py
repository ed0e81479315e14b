"""Agent overhead: no-op task throughput of a real Celery worker with and without the z4j agent.

A private redis-server is the broker; a real collector (``z4j serve``,
SQLite) receives the agent's events. Each run enqueues N no-op tasks before
the clock, then starts a fresh ``celery worker`` (prefork, -c 2) on them:
with the agent (zero-code activation: Z4J_BRAIN_URL and friends set) or
without (unset), alternating, R runs each, in one invocation.

    .venvs/celery/bin/python benchmarks/celery_overhead.py            # table
    .venvs/celery/bin/python benchmarks/celery_overhead.py --json
    .venvs/celery/bin/python benchmarks/celery_overhead.py --tasks 5000 --runs 3

tasks/s: N divided by the time from the start of a marker task enqueued
before the N (the first one the worker takes) to the end of one enqueued
after them (the last it takes); the queue is FIFO, so the clock spans the N
tasks and no worker start-up or shutdown. After an agent run the script
checks that the collector stored every task as succeeded (the agent really
worked). CPU: the worker's process group (main process, pool children, the
agent's thread) and the collector, between the two markers; per task for
the worker, which shows the agent's cost even when the machine is busy.

This module is also the Celery app the worker runs (``-A celery_overhead``).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from celery import Celery

ROOT = Path(__file__).resolve().parent.parent
BROKER = os.environ.get("Z4J_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
QUEUE = "bench"

app = Celery("celery_overhead", broker=BROKER)
app.conf.update(task_default_queue=QUEUE, task_ignore_result=True, broker_connection_retry_on_startup=True,
                worker_hijack_root_logger=False)


@app.task(name="bench.noop")
def noop():
    return None


@app.task(name="bench.mark")
def mark(key: str, edge: str):
    """``start``: stamp when it begins (the first task taken); ``end``: when it is done (the last)."""
    import redis

    if edge == "start":
        redis.Redis.from_url(BROKER).set(f"{key}:start", repr(time.time()))
    else:
        redis.Redis.from_url(BROKER).set(f"{key}:end", repr(time.time()))


# ------------------------------------------------------------------ the driver


def _enqueue(n: int, key: str) -> None:
    with app.producer_or_acquire() as producer:
        mark.apply_async((key, "start"), producer=producer)
        for _ in range(n):
            noop.apply_async(producer=producer)
        mark.apply_async((key, "end"), producer=producer)


def _worker(env: dict[str, str], log: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "celery", "-A", "celery_overhead", "worker", "--pool", "prefork", "-c", "2",
           "-Q", QUEUE, "-l", "warning", "--without-gossip", "--without-mingle", "--without-heartbeat",
           "-n", f"bench-{os.getpid()}@%h"]
    return subprocess.Popen(cmd, env=env, cwd=Path(__file__).parent, stdout=open(log, "ab"),
                            stderr=subprocess.STDOUT, start_new_session=True)


def _group_cpu(pgid: int) -> float:
    """User + system CPU of every live process of a process group (Linux /proc);
    the worker and the collector each lead their own group."""
    total = 0.0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def run_once(n: int, agent_env: dict[str, str] | None, redis_client, workdir: Path, collector=None,
             timeout: float = 600.0) -> dict:
    redis_client.flushall()
    key = f"run-{time.time_ns()}"
    _enqueue(n, key)
    env = {k: v for k, v in os.environ.items() if not k.startswith("Z4J_") or k == "Z4J_HOME"}
    env.update(agent_env or {})
    env.update(Z4J_BENCH_REDIS_URL=BROKER, PYTHONPATH=f"{ROOT}{os.pathsep}{Path(__file__).parent}")
    proc = _worker(env, workdir / "worker.log")
    deadline = time.monotonic() + timeout
    cpu_at_start = None
    try:
        while redis_client.get(f"{key}:end") is None:
            if proc.poll() is not None:
                raise RuntimeError(f"celery worker exited {proc.returncode}: see {workdir / 'worker.log'}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the run did not finish within {timeout} s")
            if cpu_at_start is None and redis_client.get(f"{key}:start") is not None:
                cpu_at_start = _group_cpu(proc.pid), _group_cpu(collector.proc.pid) if collector else 0.0
            time.sleep(0.02)
        worker_cpu = _group_cpu(proc.pid) - cpu_at_start[0]
        collector_cpu = (_group_cpu(collector.proc.pid) - cpu_at_start[1]) if collector else 0.0
    finally:
        os.kill(proc.pid, signal.SIGTERM)  # warm shutdown: the agent flushes what it holds
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    start = float(redis_client.get(f"{key}:start"))
    end = float(redis_client.get(f"{key}:end"))
    return {"agent": agent_env is not None, "tasks_per_s": round(n / (end - start), 1),
            "seconds": round(end - start, 3), "worker_cpu_ms_per_task": round(worker_cpu * 1000 / n, 3),
            "collector_cpu_s": round(collector_cpu, 2)}


def _stored(api, n: int, timeout: float = 120.0) -> int:
    """Wait until the collector holds the run's N no-op tasks as succeeded; how many it holds."""
    deadline = time.monotonic() + timeout
    count = 0
    while time.monotonic() < deadline:
        count = api.get("/api/v1/projects/default/tasks/counts").raise_for_status().json().get("success", 0)
        if count >= n:
            break
        time.sleep(0.5)
    return count


def main() -> None:
    global BROKER
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=5000, help="no-op tasks per run")
    parser.add_argument("--runs", type=int, default=3, help="runs with and runs without the agent")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    sys.path[:0] = [str(ROOT)]
    import httpx
    import redis

    from tests.support.collector import Collector
    from tests.support.servers import RedisServer

    with tempfile.TemporaryDirectory(prefix="z4j-celery-bench-") as tmp, RedisServer() as server:
        workdir = Path(tmp)
        BROKER = server.url
        app.conf.broker_url = BROKER
        redis_client = redis.Redis.from_url(BROKER)
        collector = Collector(f"sqlite:///{workdir}/z4j.db", workdir).start()
        try:
            creds = collector.create_agent("bench")
            agent_env = collector.agent_env(creds)
            api = httpx.Client(base_url=collector.url, timeout=30,
                               headers={"Authorization": f"Bearer {collector.create_token('viewer')}"})
            runs: dict[str, list[dict]] = {"without": [], "with": []}
            stored_total = 0
            for i in range(args.runs):
                for label in ("without", "with"):
                    print(f"run {i + 1}/{args.runs} {label} the agent: {args.tasks:,} no-op tasks", file=sys.stderr)
                    result = run_once(args.tasks, agent_env if label == "with" else None, redis_client, workdir,
                                      collector)
                    if label == "with":
                        stored_total += args.tasks + 2
                        result["stored"] = _stored(api, stored_total) - (stored_total - args.tasks - 2)
                    runs[label].append(result)
                    print(f"  {result}", file=sys.stderr)
        finally:
            collector.stop()

    without = statistics.median(r["tasks_per_s"] for r in runs["without"])
    with_agent = statistics.median(r["tasks_per_s"] for r in runs["with"])
    out = {
        "tasks": args.tasks, "runs": args.runs, "pool": "prefork", "concurrency": 2,
        "without_agent": {"tasks_per_s": without, "runs": runs["without"]},
        "with_agent": {"tasks_per_s": with_agent, "runs": runs["with"]},
        "ratio": round(with_agent / without, 3),
        "worker_cpu_ms_per_task": {label: statistics.median(r["worker_cpu_ms_per_task"] for r in runs[label])
                                   for label in ("without", "with")},
        "overhead_pct": round((1 - with_agent / without) * 100, 1),
    }
    if args.json:
        print(json.dumps(out, indent=2))
        return
    print(f"{'':16}{'tasks/s (median)':>18}   runs")
    for label, key in (("without agent", "without_agent"), ("with agent", "with_agent")):
        print(f"{label:16}{out[key]['tasks_per_s']:>18,.0f}   "
              + " · ".join(f"{r['tasks_per_s']:,.0f}" for r in out[key]["runs"]))
    print(f"ratio with/without: {out['ratio']:.3f} (overhead {out['overhead_pct']:.1f} %)")
    cpu = out["worker_cpu_ms_per_task"]
    print(f"worker CPU per task: {cpu['without']:.3f} ms without, {cpu['with']:.3f} ms with the agent")


if __name__ == "__main__":
    main()
