"""Agent overhead: no-op job throughput of a real arq worker with and without the z4j agent.

A private redis-server holds the queue; a real collector (``z4j serve``,
SQLite) receives the agent's events. Each run puts N no-op jobs on the queue
before the clock (arq's own job encoding and keys, written in one pipeline),
then starts a fresh ``arq arq_overhead.WorkerSettings`` on them: with the
agent (the module calls ``install(WorkerSettings)`` when ``Z4J_BRAIN_URL``
is set) or without (unset: plain arq), alternating, R runs each, in one
invocation.

    .venvs/arq/bin/python benchmarks/arq_overhead.py            # table
    .venvs/arq/bin/python benchmarks/arq_overhead.py --json
    .venvs/arq/bin/python benchmarks/arq_overhead.py --jobs 5000 --runs 3

jobs/s: N divided by the time from the start of a marker job queued before
the N (the first the worker takes) to the end of one queued after them (the
last it takes); the worker's defaults (max_jobs 10, results kept an hour)
except ``poll_delay`` 0.01 s, so that the queue, not the poll sleep, sets
the pace. In an agent run the script then waits until the collector holds
every job as succeeded (``stored``) before it stops the worker. CPU: the
worker's process (its loop and the agent's threads) between the two
markers, per job.

This module is also the arq application the worker runs.
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

from arq.connections import RedisSettings

ROOT = Path(__file__).resolve().parent.parent
REDIS = os.environ.get("Z4J_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
QUEUE = "arq:queue"


async def noop(ctx):
    return None


async def mark(ctx, key: str, edge: str):
    """``start``: stamp when it begins (the first job taken); ``end``: when it is done (the last)."""
    await ctx["redis"].set(f"{key}:{edge}", repr(time.time()))


class WorkerSettings:
    functions = [noop, mark]
    redis_settings = RedisSettings.from_dsn(REDIS)
    queue_name = QUEUE
    poll_delay = 0.01


if os.environ.get("Z4J_BRAIN_URL"):
    from z4j_agents.arq import install

    install(WorkerSettings)


# ------------------------------------------------------------------ the driver


def _enqueue(redis_client, n: int, key: str) -> None:
    """N no-op jobs between two markers, as ``enqueue_job`` writes them (job key + queue score)."""
    from arq.constants import job_key_prefix
    from arq.jobs import serialize_job

    now = int(time.time() * 1000)
    jobs = [(f"{key}-start", "mark", (key, "start"), now - 1)]
    jobs += [(f"{key}-{i:07d}", "noop", (), now) for i in range(n)]
    jobs.append((f"{key}-end", "mark", (key, "end"), now + 1))
    pipe = redis_client.pipeline(transaction=False)
    for job_id, function, args, score in jobs:
        pipe.psetex(job_key_prefix + job_id, 86_400_000, serialize_job(function, args, {}, None, now))
        pipe.zadd(QUEUE, {job_id: score})
    pipe.execute()


def _cpu(pid: int) -> float:
    """User + system CPU of one process, all its threads (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_once(n: int, agent_env: dict[str, str] | None, redis_client, workdir: Path, delivered=None,
             timeout: float = 600.0) -> dict:
    redis_client.flushall()
    key = f"run-{time.time_ns()}"
    _enqueue(redis_client, n, key)
    env = {k: v for k, v in os.environ.items() if not k.startswith("Z4J_") or k == "Z4J_HOME"}
    env.update(agent_env or {})
    env.update(Z4J_BENCH_REDIS_URL=REDIS, PYTHONPATH=f"{ROOT}{os.pathsep}{Path(__file__).parent}")
    proc = subprocess.Popen([sys.executable, "-m", "arq", "arq_overhead.WorkerSettings"], env=env,
                            cwd=Path(__file__).parent, stdout=open(workdir / "worker.log", "ab"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + timeout
    cpu_at_start = None
    try:
        while redis_client.get(f"{key}:end") is None:
            if proc.poll() is not None:
                raise RuntimeError(f"arq worker exited {proc.returncode}: see {workdir / 'worker.log'}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the run did not finish within {timeout} s")
            if cpu_at_start is None and redis_client.get(f"{key}:start") is not None:
                cpu_at_start = _cpu(proc.pid)
            time.sleep(0.02)
        worker_cpu = _cpu(proc.pid) - (cpu_at_start or 0.0)
        stored = delivered() if delivered is not None else None  # before the stop: no shutdown flush deadline
    finally:
        os.kill(proc.pid, signal.SIGTERM)  # the agent reports offline and flushes what it holds
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    start = float(redis_client.get(f"{key}:start"))
    end = float(redis_client.get(f"{key}:end"))
    result = {"agent": agent_env is not None, "jobs_per_s": round(n / (end - start), 1),
              "seconds": round(end - start, 3), "worker_cpu_ms_per_job": round(worker_cpu * 1000 / n, 3)}
    if stored is not None:
        result["stored"] = stored
    return result


def _stored(api, n: int, timeout: float = 120.0) -> int:
    """Wait until the collector holds N succeeded jobs; how many it holds."""
    deadline = time.monotonic() + timeout
    count = 0
    while time.monotonic() < deadline:
        count = api.get("/api/v1/projects/default/tasks/counts",
                        params={"engine": "arq"}).raise_for_status().json().get("success", 0)
        if count >= n:
            break
        time.sleep(0.5)
    return count


def main() -> None:
    global REDIS
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=5000, help="no-op jobs per run")
    parser.add_argument("--runs", type=int, default=3, help="runs with and runs without the agent")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    sys.path[:0] = [str(ROOT)]
    import httpx
    import redis

    from tests.support.collector import Collector
    from tests.support.servers import RedisServer

    with tempfile.TemporaryDirectory(prefix="z4j-arq-bench-") as tmp, RedisServer() as server:
        workdir = Path(tmp)
        REDIS = server.url
        redis_client = redis.Redis.from_url(REDIS)
        collector = Collector(f"sqlite:///{workdir}/z4j.db", workdir).start()
        try:
            agent_env = collector.agent_env(collector.create_agent("bench"))
            api = httpx.Client(base_url=collector.url, timeout=30,
                               headers={"Authorization": f"Bearer {collector.create_token('viewer')}"})
            runs: dict[str, list[dict]] = {"without": [], "with": []}
            stored_total = 0
            for i in range(args.runs):
                for label in ("without", "with"):
                    print(f"run {i + 1}/{args.runs} {label} the agent: {args.jobs:,} no-op jobs", file=sys.stderr)
                    delivered = None
                    if label == "with":
                        stored_total += args.jobs + 2
                        delivered = (lambda total=stored_total: _stored(api, total) - (total - args.jobs - 2))
                    result = run_once(args.jobs, agent_env if label == "with" else None, redis_client, workdir,
                                      delivered)
                    runs[label].append(result)
                    print(f"  {result}", file=sys.stderr)
        finally:
            collector.stop()

    without = statistics.median(r["jobs_per_s"] for r in runs["without"])
    with_agent = statistics.median(r["jobs_per_s"] for r in runs["with"])
    out = {
        "jobs": args.jobs, "runs": args.runs, "max_jobs": 10, "poll_delay": 0.01,
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
    print(f"{'':16}{'jobs/s (median)':>18}   runs")
    for label, key in (("without agent", "without_agent"), ("with agent", "with_agent")):
        print(f"{label:16}{out[key]['jobs_per_s']:>18,.0f}   "
              + " · ".join(f"{r['jobs_per_s']:,.0f}" for r in out[key]["runs"]))
    print(f"ratio with/without: {out['ratio']:.3f} (overhead {out['overhead_pct']:.1f} %)")
    cpu = out["worker_cpu_ms_per_job"]
    print(f"worker CPU per job: {cpu['without']:.3f} ms without, {cpu['with']:.3f} ms with the agent")


if __name__ == "__main__":
    main()
