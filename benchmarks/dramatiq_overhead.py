"""Agent overhead: no-op message throughput of a real `dramatiq` worker with and without Z4JMiddleware.

A private redis-server is the broker; a real collector (``z4j serve``,
SQLite) receives the agent's events. Each run enqueues N no-op messages
before the clock (from a plain broker without the middleware), then starts a
fresh ``dramatiq`` CLI (2 processes x 4 threads) on them: with the middleware
(this module adds it when Z4J_BENCH_AGENT=1, with Z4J_BRAIN_URL and friends
set) or without, alternating, R runs each, in one invocation.

    .venvs/dramatiq/bin/python benchmarks/dramatiq_overhead.py            # table
    .venvs/dramatiq/bin/python benchmarks/dramatiq_overhead.py --json
    .venvs/dramatiq/bin/python benchmarks/dramatiq_overhead.py --messages 5000 --runs 3

messages/s: N divided by the time from the start of a marker message
enqueued before the N (the first one taken) to the end of one enqueued after
them (the last one taken; with 8 threads a few no-ops may still be finishing,
the same for both sides). After an agent run the script checks that the
collector stored every message as succeeded. CPU: the worker's process group
(main process, worker processes, the agent's threads) between the markers,
per message.

This module is also the broker module the worker runs (``dramatiq dramatiq_overhead``).
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

import dramatiq
from dramatiq.brokers.redis import RedisBroker

ROOT = Path(__file__).resolve().parent.parent
BROKER = os.environ.get("Z4J_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
QUEUE = "bench"

broker = RedisBroker(url=BROKER)
if os.environ.get("Z4J_BENCH_AGENT") == "1":
    from z4j_agents.dramatiq import Z4JMiddleware

    broker.add_middleware(Z4JMiddleware())
dramatiq.set_broker(broker)


@dramatiq.actor(queue_name=QUEUE, max_retries=0)
def noop():
    return None


@dramatiq.actor(queue_name=QUEUE, max_retries=0)
def mark(key: str, edge: str):
    """``start``: stamp when it begins (the first message taken); ``end``: when it is done (the last)."""
    broker.client.set(f"{key}:{edge}", repr(time.time()))


# ------------------------------------------------------------------ the driver


def _enqueue(plain: RedisBroker, n: int, key: str) -> None:
    from dramatiq import Message

    def message(actor: str, *args: str) -> Message:
        return Message(queue_name=QUEUE, actor_name=actor, args=args, kwargs={}, options={})

    plain.enqueue(message("mark", key, "start"))
    for _ in range(n):
        plain.enqueue(message("noop"))
    plain.enqueue(message("mark", key, "end"))


def _worker(env: dict[str, str], log: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "dramatiq", "dramatiq_overhead", "--processes", "2", "--threads", "4",
           "--queues", QUEUE]
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


def run_once(n: int, agent_env: dict[str, str] | None, plain: RedisBroker, workdir: Path,
             timeout: float = 600.0) -> dict:
    client = plain.client
    client.flushall()
    key = f"run-{time.time_ns()}"
    _enqueue(plain, n, key)
    env = {k: v for k, v in os.environ.items() if not k.startswith("Z4J_") or k == "Z4J_HOME"}
    env.update(agent_env or {})
    env.update(Z4J_BENCH_REDIS_URL=BROKER, Z4J_BENCH_AGENT="1" if agent_env else "0",
               PYTHONPATH=f"{ROOT}{os.pathsep}{Path(__file__).parent}")
    proc = _worker(env, workdir / "worker.log")
    deadline = time.monotonic() + timeout
    cpu_at_start = None
    try:
        while client.get(f"{key}:end") is None:
            if proc.poll() is not None:
                raise RuntimeError(f"dramatiq exited {proc.returncode}: see {workdir / 'worker.log'}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the run did not finish within {timeout} s")
            if cpu_at_start is None and client.get(f"{key}:start") is not None:
                cpu_at_start = _group_cpu(proc.pid)
            time.sleep(0.02)
        worker_cpu = _group_cpu(proc.pid) - (cpu_at_start or 0.0)
    finally:
        os.kill(proc.pid, signal.SIGTERM)  # warm shutdown: the agents flush what they hold
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    start = float(client.get(f"{key}:start"))
    end = float(client.get(f"{key}:end"))
    return {"agent": agent_env is not None, "messages_per_s": round(n / (end - start), 1),
            "seconds": round(end - start, 3), "worker_cpu_ms_per_message": round(worker_cpu * 1000 / n, 3)}


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
    global BROKER
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=5000, help="no-op messages per run")
    parser.add_argument("--runs", type=int, default=3, help="runs with and runs without the middleware")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    sys.path[:0] = [str(ROOT)]
    import httpx

    from tests.support.collector import Collector
    from tests.support.servers import RedisServer

    with tempfile.TemporaryDirectory(prefix="z4j-dramatiq-bench-") as tmp, RedisServer() as server:
        workdir = Path(tmp)
        BROKER = server.url
        plain = RedisBroker(url=BROKER)
        collector = Collector(f"sqlite:///{workdir}/z4j.db", workdir).start()
        try:
            agent_env = collector.agent_env(collector.create_agent("bench"))
            api = httpx.Client(base_url=collector.url, timeout=30,
                               headers={"Authorization": f"Bearer {collector.create_token('viewer')}"})
            runs: dict[str, list[dict]] = {"without": [], "with": []}
            stored_total = 0
            for i in range(args.runs):
                for label in ("without", "with"):
                    print(f"run {i + 1}/{args.runs} {label} the middleware: {args.messages:,} no-op messages",
                          file=sys.stderr)
                    result = run_once(args.messages, agent_env if label == "with" else None, plain, workdir)
                    if label == "with":
                        stored_total += args.messages + 2
                        result["stored"] = _stored(api, stored_total) - (stored_total - args.messages - 2)
                    runs[label].append(result)
                    print(f"  {result}", file=sys.stderr)
        finally:
            collector.stop()

    without = statistics.median(r["messages_per_s"] for r in runs["without"])
    with_agent = statistics.median(r["messages_per_s"] for r in runs["with"])
    out = {
        "messages": args.messages, "runs": args.runs, "processes": 2, "threads": 4,
        "without_agent": {"messages_per_s": without, "runs": runs["without"]},
        "with_agent": {"messages_per_s": with_agent, "runs": runs["with"]},
        "ratio": round(with_agent / without, 3),
        "worker_cpu_ms_per_message": {label: statistics.median(r["worker_cpu_ms_per_message"] for r in runs[label])
                                      for label in ("without", "with")},
        "overhead_pct": round((1 - with_agent / without) * 100, 1),
    }
    if args.json:
        print(json.dumps(out, indent=2))
        return
    print(f"{'':16}{'messages/s (median)':>21}   runs")
    for label, key in (("without agent", "without_agent"), ("with agent", "with_agent")):
        print(f"{label:16}{out[key]['messages_per_s']:>21,.0f}   "
              + " · ".join(f"{r['messages_per_s']:,.0f}" for r in out[key]["runs"]))
    print(f"ratio with/without: {out['ratio']:.3f} (overhead {out['overhead_pct']:.1f} %)")
    cpu = out["worker_cpu_ms_per_message"]
    print(f"worker CPU per message: {cpu['without']:.3f} ms without, {cpu['with']:.3f} ms with the middleware")


if __name__ == "__main__":
    main()
