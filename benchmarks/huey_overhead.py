"""Agent overhead: no-op task throughput of a real Huey consumer with and without the z4j agent.

A private redis-server holds the queue (RedisHuey); a real collector (``z4j
serve``, SQLite) receives the agent's events. Each run enqueues N no-op tasks
before the clock (from this process, no agent), then starts a fresh
``huey_consumer huey_overhead.huey -w 2`` (thread workers, Huey's default
kind) on them: with the agent (``install(huey)`` and Z4J_BRAIN_URL and
friends set) or without (no install, no z4j), alternating, R runs each, in one
invocation.

    .venvs/huey/bin/python benchmarks/huey_overhead.py            # table
    .venvs/huey/bin/python benchmarks/huey_overhead.py --json
    .venvs/huey/bin/python benchmarks/huey_overhead.py --tasks 5000 --runs 3 --workers 2

tasks/s: N divided by the time from the start of a marker task enqueued
before the N (the first one the consumer takes) to the end of one enqueued
after them (the last it takes); the queue is FIFO, so the clock spans the N
tasks and no consumer start-up or shutdown. After an agent run the script
checks that the collector stored every task as succeeded (the agent really
worked). CPU: the consumer's process (its worker threads and the agent's
thread) between the two markers, per task, which shows the agent's cost even
when the machine is busy.

This module is also the Huey app the consumer runs.
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

from huey import RedisHuey

ROOT = Path(__file__).resolve().parent.parent
REDIS = os.environ.get("Z4J_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")

huey = RedisHuey("bench", url=REDIS)

if os.environ.get("Z4J_BRAIN_URL"):
    from z4j_agents.huey import install

    install(huey)


@huey.task()
def noop():
    return None


@huey.task()
def mark(key: str, edge: str):
    """``start``: stamp when it begins (the first task taken); ``end``: when it is done (the last)."""
    huey.storage.conn.set(f"{key}:{edge}", repr(time.time()))


# ------------------------------------------------------------------ the driver


def _consumer(env: dict[str, str], log: Path, workers: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "huey.bin.huey_consumer", "huey_overhead.huey", "-w", str(workers), "-k", "thread",
           "-q"]
    return subprocess.Popen(cmd, env=env, cwd=Path(__file__).parent, stdout=open(log, "ab"),
                            stderr=subprocess.STDOUT, start_new_session=True)


def _cpu(pid: int) -> float:
    """User + system CPU of one process, all its threads (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_once(app, n: int, agent_env: dict[str, str] | None, workdir: Path, workers: int,
             timeout: float = 600.0) -> dict:
    """One run; ``app`` is this module imported by name (task names ``huey_overhead.*``, as the consumer has them)."""
    conn = app.huey.storage.conn
    conn.flushall()
    key = f"run-{time.time_ns()}"
    app.mark(key, "start")
    for _ in range(n):
        app.noop()
    app.mark(key, "end")
    env = {k: v for k, v in os.environ.items() if not k.startswith("Z4J_") or k == "Z4J_HOME"}
    env.update(agent_env or {})
    env.update(Z4J_BENCH_REDIS_URL=app.REDIS, PYTHONPATH=f"{ROOT}{os.pathsep}{Path(__file__).parent}")
    proc = _consumer(env, workdir / "consumer.log", workers)
    deadline = time.monotonic() + timeout
    cpu_at_start = None
    try:
        while conn.get(f"{key}:end") is None:
            if proc.poll() is not None:
                raise RuntimeError(f"huey_consumer exited {proc.returncode}: see {workdir / 'consumer.log'}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the run did not finish within {timeout} s")
            if cpu_at_start is None and conn.get(f"{key}:start") is not None:
                cpu_at_start = _cpu(proc.pid)
            time.sleep(0.02)
        cpu = _cpu(proc.pid) - (cpu_at_start or 0.0)
    finally:
        os.kill(proc.pid, signal.SIGINT)  # graceful: the agent reports offline and flushes what it holds
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    start, end = float(conn.get(f"{key}:start")), float(conn.get(f"{key}:end"))
    return {"agent": agent_env is not None, "tasks_per_s": round(n / (end - start), 1),
            "seconds": round(end - start, 3), "consumer_cpu_ms_per_task": round(cpu * 1000 / n, 3)}


def _stored(api, n: int, timeout: float = 120.0) -> int:
    """Wait until the collector holds N tasks as succeeded; how many it holds."""
    deadline = time.monotonic() + timeout
    count = 0
    while time.monotonic() < deadline:
        count = api.get("/api/v1/projects/default/tasks/counts").raise_for_status().json().get("success", 0)
        if count >= n:
            break
        time.sleep(0.5)
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=5000, help="no-op tasks per run")
    parser.add_argument("--runs", type=int, default=3, help="runs with and runs without the agent")
    parser.add_argument("--workers", type=int, default=2, help="consumer worker threads")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    sys.path[:0] = [str(ROOT), str(Path(__file__).parent)]
    import httpx

    from tests.support.collector import Collector
    from tests.support.servers import RedisServer

    with tempfile.TemporaryDirectory(prefix="z4j-huey-bench-") as tmp, RedisServer() as server:
        workdir = Path(tmp)
        os.environ["Z4J_BENCH_REDIS_URL"] = server.url
        os.environ.pop("Z4J_BRAIN_URL", None)  # the producer side here runs without z4j
        import huey_overhead as app

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
                    result = run_once(app, args.tasks, agent_env if label == "with" else None, workdir,
                                      args.workers)
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
        "tasks": args.tasks, "runs": args.runs, "worker_type": "thread", "workers": args.workers,
        "storage": "RedisHuey",
        "without_agent": {"tasks_per_s": without, "runs": runs["without"]},
        "with_agent": {"tasks_per_s": with_agent, "runs": runs["with"]},
        "ratio": round(with_agent / without, 3),
        "consumer_cpu_ms_per_task": {label: statistics.median(r["consumer_cpu_ms_per_task"] for r in runs[label])
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
    cpu = out["consumer_cpu_ms_per_task"]
    print(f"consumer CPU per task: {cpu['without']:.3f} ms without, {cpu['with']:.3f} ms with the agent")


if __name__ == "__main__":
    main()
