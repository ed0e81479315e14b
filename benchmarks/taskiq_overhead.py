"""Agent overhead: no-op task throughput of a real taskiq worker with and without the z4j middleware.

A private redis-server is the broker (taskiq-redis ListQueueBroker); a real
collector (``z4j serve``, SQLite) receives the agent's events. Each run
pushes N no-op messages before the clock, then starts a fresh ``taskiq
worker`` (``--workers 2``) on them: with ``Z4JMiddleware`` (Z4J_BENCH_AGENT=1
and the agent's environment) or without, alternating, R runs each, in one
invocation.

    .venvs/taskiq/bin/python benchmarks/taskiq_overhead.py            # table
    .venvs/taskiq/bin/python benchmarks/taskiq_overhead.py --json
    .venvs/taskiq/bin/python benchmarks/taskiq_overhead.py --tasks 5000 --runs 3

tasks/s: N divided by the time from the start of a marker task queued before
the N (the first one taken) to the end of one queued after them (the last
taken; the list is FIFO). After an agent run the script checks that the
collector stored every task as succeeded. CPU: the worker's process group
(supervisor, worker processes, the agents' threads) between the two
markers, per task.

This module is also the taskiq app the worker runs (``taskiq_overhead:broker``).
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
import uuid
from pathlib import Path

from taskiq_redis import ListQueueBroker

ROOT = Path(__file__).resolve().parent.parent
BROKER = os.environ.get("Z4J_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
QUEUE = "bench"
WORKERS = 2

broker = ListQueueBroker(BROKER, queue_name=QUEUE, socket_timeout=None)
if os.environ.get("Z4J_BENCH_AGENT") == "1":
    from z4j_agents.taskiq import Z4JMiddleware

    broker.add_middlewares(Z4JMiddleware())


@broker.task(task_name="bench.noop")
async def noop() -> None:
    return None


@broker.task(task_name="bench.mark")
async def mark(key: str, edge: str) -> None:
    """``start``: stamp when it begins (the first task taken); ``end``: when it is done (the last)."""
    import redis

    redis.Redis.from_url(BROKER).set(f"{key}:{edge}", repr(time.time()))


# ------------------------------------------------------------------ the driver


def _message(name: str, *args: str) -> bytes:
    from taskiq.message import TaskiqMessage

    return broker.formatter.dumps(TaskiqMessage(task_id=uuid.uuid4().hex, task_name=name, labels={},
                                                labels_types={}, args=list(args), kwargs={})).message


def _enqueue(redis_client, n: int, key: str) -> None:
    """The messages a kicker would push, pushed in bulk (LPUSH; workers BRPOP: first in, first out)."""
    redis_client.lpush(QUEUE, _message("bench.mark", key, "start"))
    for start in range(0, n, 1000):
        redis_client.lpush(QUEUE, *(_message("bench.noop") for _ in range(min(1000, n - start))))
    redis_client.lpush(QUEUE, _message("bench.mark", key, "end"))


def _worker(env: dict[str, str], log: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "taskiq", "worker", "taskiq_overhead:broker", "--workers", str(WORKERS),
           "--log-level", "WARNING"]
    return subprocess.Popen(cmd, env=env, cwd=Path(__file__).parent, stdout=open(log, "ab"),
                            stderr=subprocess.STDOUT, start_new_session=True)


def _group_cpu(pgid: int) -> float:
    """User + system CPU of every live process of a process group (Linux /proc)."""
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


def run_once(n: int, agent_env: dict[str, str] | None, redis_client, workdir: Path, timeout: float = 600.0) -> dict:
    redis_client.flushall()
    key = f"run-{time.time_ns()}"
    _enqueue(redis_client, n, key)
    env = {k: v for k, v in os.environ.items() if not k.startswith("Z4J_") or k == "Z4J_HOME"}
    env.update(agent_env or {})
    env.update(Z4J_BENCH_REDIS_URL=BROKER, PYTHONPATH=f"{ROOT}{os.pathsep}{Path(__file__).parent}")
    if agent_env:
        env["Z4J_BENCH_AGENT"] = "1"
    proc = _worker(env, workdir / "worker.log")
    deadline = time.monotonic() + timeout
    cpu_at_start = None
    try:
        while redis_client.get(f"{key}:end") is None:
            if proc.poll() is not None:
                raise RuntimeError(f"taskiq worker exited {proc.returncode}: see {workdir / 'worker.log'}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the run did not finish within {timeout} s")
            if cpu_at_start is None and redis_client.get(f"{key}:start") is not None:
                cpu_at_start = _group_cpu(proc.pid)
            time.sleep(0.02)
        worker_cpu = _group_cpu(proc.pid) - (cpu_at_start or 0.0)
    finally:
        os.kill(proc.pid, signal.SIGTERM)  # the workers shut their brokers down: the agents flush
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    start = float(redis_client.get(f"{key}:start"))
    end = float(redis_client.get(f"{key}:end"))
    return {"agent": agent_env is not None, "tasks_per_s": round(n / (end - start), 1),
            "seconds": round(end - start, 3), "worker_cpu_ms_per_task": round(worker_cpu * 1000 / n, 3)}


def _stored(api, n: int, timeout: float = 120.0) -> int:
    """Wait until the collector holds n tasks as succeeded; how many it holds."""
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

    with tempfile.TemporaryDirectory(prefix="z4j-taskiq-bench-") as tmp, RedisServer() as server:
        workdir = Path(tmp)
        BROKER = server.url
        redis_client = redis.Redis.from_url(BROKER)
        collector = Collector(f"sqlite:///{workdir}/z4j.db", workdir).start()
        try:
            agent_env = collector.agent_env(collector.create_agent("bench"))
            api = httpx.Client(base_url=collector.url, timeout=30,
                               headers={"Authorization": f"Bearer {collector.create_token('viewer')}"})
            runs: dict[str, list[dict]] = {"without": [], "with": []}
            stored_total = 0
            for i in range(args.runs):
                for label in ("without", "with"):
                    print(f"run {i + 1}/{args.runs} {label} the agent: {args.tasks:,} no-op tasks", file=sys.stderr)
                    result = run_once(args.tasks, agent_env if label == "with" else None, redis_client, workdir)
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
        "tasks": args.tasks, "runs": args.runs, "workers": WORKERS, "broker": "ListQueueBroker",
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
