"""Agent overhead: no-op job throughput of a real RQ worker with and without the z4j agent.

A private redis-server holds the queue; a real collector (``z4j serve``,
SQLite) receives the agent's events. Each run enqueues N no-op jobs before
the clock, then starts a fresh ``rq worker --burst`` on them: RQ's default
forking worker (a work horse per job), ``-w rq.Worker`` without the agent or
``-w z4j_agents.rq.Worker`` with it (Z4J_BRAIN_URL and friends set),
alternating, R runs each, in one invocation. ``--worker simple`` measures
RQ's SimpleWorker (no fork) instead.

    .venvs/rq/bin/python benchmarks/rq_overhead.py            # table
    .venvs/rq/bin/python benchmarks/rq_overhead.py --json
    .venvs/rq/bin/python benchmarks/rq_overhead.py --jobs 2000 --runs 3

jobs/s: N divided by the time from the start of a marker job enqueued
before the N (the first the worker takes) to the end of one enqueued after
them (the last); the queue is FIFO, so the clock spans the N jobs and no
worker start-up or shutdown. After an agent run the script checks that the
collector stored every job as succeeded. CPU: the worker process and its
reaped work horses (utime+stime+cutime+cstime), per job.

This module is also where the jobs live (``rq_overhead.noop``).
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

ROOT = Path(__file__).resolve().parent.parent
QUEUE = "bench"
WORKERS = {"fork": ("rq.Worker", "z4j_agents.rq.Worker"),
           "simple": ("rq.SimpleWorker", "z4j_agents.rq.SimpleWorker")}


def noop():
    return None


def mark(key: str, edge: str):
    """``start``: stamp when it begins (the first job taken); ``end``: when it is done (the last)."""
    from rq import get_current_job

    get_current_job().connection.set(f"{key}:{edge}", repr(time.time()))


# ------------------------------------------------------------------ the driver


def _enqueue(queue, n: int, key: str) -> None:
    from rq import Queue

    jobs = [Queue.prepare_data("rq_overhead.mark", (key, "start"))]
    jobs += [Queue.prepare_data("rq_overhead.noop") for _ in range(n)]
    jobs.append(Queue.prepare_data("rq_overhead.mark", (key, "end")))
    for begin in range(0, len(jobs), 1000):
        queue.enqueue_many(jobs[begin:begin + 1000])


def _cpu(pid: int) -> float:
    """User + system CPU of a process and of its reaped children (its work horses)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def run_once(n: int, worker_class: str, agent_env: dict[str, str] | None, redis_url: str, redis_client,
             workdir: Path, timeout: float = 900.0) -> dict:
    from rq import Queue

    redis_client.flushall()
    key = f"run-{time.time_ns()}"
    _enqueue(Queue(QUEUE, connection=redis_client), n, key)
    env = {k: v for k, v in os.environ.items() if not k.startswith("Z4J_") or k == "Z4J_HOME"}
    env.update(agent_env or {})
    env.update(PYTHONPATH=f"{ROOT}{os.pathsep}{Path(__file__).parent}")
    cmd = [sys.executable, "-m", "rq.cli", "worker", "--burst", "-w", worker_class, "--url", redis_url,
           "--logging_level", "WARNING", "-n", f"bench-{time.time_ns()}", QUEUE]
    proc = subprocess.Popen(cmd, env=env, cwd=Path(__file__).parent, stdout=open(workdir / "worker.log", "ab"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + timeout
    cpu_at_start = None
    try:
        while redis_client.get(f"{key}:end") is None:
            if proc.poll() is not None:
                raise RuntimeError(f"rq worker exited {proc.returncode}: see {workdir / 'worker.log'}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the run did not finish within {timeout} s")
            if cpu_at_start is None and redis_client.get(f"{key}:start") is not None:
                cpu_at_start = _cpu(proc.pid)
            time.sleep(0.02)
        worker_cpu = _cpu(proc.pid) - (cpu_at_start or 0.0)
        proc.wait(60)  # --burst: the worker stops by itself (teardown flushes the agent)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    start = float(redis_client.get(f"{key}:start"))
    end = float(redis_client.get(f"{key}:end"))
    return {"agent": agent_env is not None, "jobs_per_s": round(n / (end - start), 1),
            "seconds": round(end - start, 3), "worker_cpu_ms_per_job": round(worker_cpu * 1000 / n, 3)}


def _stored(api, n: int, timeout: float = 120.0) -> int:
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
    parser.add_argument("--jobs", type=int, default=2000, help="no-op jobs per run")
    parser.add_argument("--runs", type=int, default=3, help="runs with and runs without the agent")
    parser.add_argument("--worker", choices=sorted(WORKERS), default="fork",
                        help="fork: RQ's default Worker (a work horse per job); simple: SimpleWorker")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    sys.path[:0] = [str(ROOT)]
    import httpx
    import redis

    from tests.support.collector import Collector
    from tests.support.servers import RedisServer

    plain, with_z4j = WORKERS[args.worker]
    with tempfile.TemporaryDirectory(prefix="z4j-rq-bench-") as tmp, RedisServer() as server:
        workdir = Path(tmp)
        redis_client = redis.Redis.from_url(server.url)
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
                    print(f"run {i + 1}/{args.runs} {label} the agent: {args.jobs:,} no-op jobs", file=sys.stderr)
                    agent = label == "with"
                    result = run_once(args.jobs, with_z4j if agent else plain, agent_env if agent else None,
                                      server.url, redis_client, workdir)
                    if agent:
                        stored_total += args.jobs + 2
                        result["stored"] = _stored(api, stored_total) - (stored_total - args.jobs - 2)
                    runs[label].append(result)
                    print(f"  {result}", file=sys.stderr)
        finally:
            collector.stop()

    without = statistics.median(r["jobs_per_s"] for r in runs["without"])
    with_agent = statistics.median(r["jobs_per_s"] for r in runs["with"])
    out = {
        "jobs": args.jobs, "runs": args.runs, "worker": args.worker,
        "without_agent": {"jobs_per_s": without, "runs": runs["without"]},
        "with_agent": {"jobs_per_s": with_agent, "runs": runs["with"]},
        "ratio": round(with_agent / without, 3),
        "worker_cpu_ms_per_job": {label: statistics.median(r["worker_cpu_ms_per_job"] for r in runs[label])
                                  for label in ("without", "with")},
        "overhead_pct": round((1 - with_agent / without) * 100, 1),
    }
    if args.json:
        print(json.dumps(out, indent=2))
        return
    print(f"{args.worker} worker{'':6}{'jobs/s (median)':>18}   runs")
    for label, key in (("without agent", "without_agent"), ("with agent", "with_agent")):
        print(f"{label:17}{out[key]['jobs_per_s']:>18,.0f}   "
              + " · ".join(f"{r['jobs_per_s']:,.0f}" for r in out[key]["runs"]))
    print(f"ratio with/without: {out['ratio']:.3f} (overhead {out['overhead_pct']:.1f} %)")
    cpu = out["worker_cpu_ms_per_job"]
    print(f"worker CPU per job: {cpu['without']:.3f} ms without, {cpu['with']:.3f} ms with the agent")


if __name__ == "__main__":
    main()
