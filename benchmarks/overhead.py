"""The harness of the agent-overhead benchmarks (benchmarks/<engine>_overhead.py).

Each script says only what is its engine's (:class:`Bench`): the worker's
command with and without the agent, how N no-op tasks go into the queue
between two marker tasks, how its worker stops. The harness starts a private
redis-server and a real collector (``z4j serve``, SQLite), then runs R times
without and R times with the agent, alternating, in one invocation:

- throughput: N divided by the time from the start of the marker enqueued
  before the N (the first one taken: it stamps ``<key>:start`` in Redis) to
  the end of the one enqueued after them (the last: ``<key>:end``); the queue
  is FIFO, so the clock spans the N and no worker start-up or shutdown;
- CPU per task of the worker's process tree (every live process under it,
  and the children it reaped) between the two markers, which shows the
  agent's cost even when the machine is busy; the collector's CPU too;
- after an agent run, how many of the run's tasks the collector stores as
  succeeded (the agent really worked);
- medians of the R runs, the ratio with/without, a table or ``--json``.

``--collector-core N`` runs the collector alone on core N and everything else
(redis-server, the worker, this script) on the other cores, in both kinds of
run: the collector's CPU then stays out of the worker's way, as it does when
the collector has its own host. Without it every process shares every core.
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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


@dataclass
class Bench:
    """One engine's part of an overhead benchmark."""

    engine: str
    """The engine's name in z4j (the collector's task counts are filtered by it)."""
    command: Callable[[argparse.Namespace, bool], list[str]]
    """The worker's command line (run in benchmarks/), without (False) or with (True) the agent;
    ``args.redis_url`` is the private redis-server's (the worker also has it as Z4J_BENCH_REDIS_URL)."""
    enqueue: Callable[[str, int, str], None]
    """(redis_url, n, key): the ``mark(key, "start")`` task, n no-op tasks, ``mark(key, "end")``, in that order."""
    doc: str
    """The script's docstring: its first paragraph is the command line's description."""
    unit: str = "task"
    """What a task is called for this engine (task, job, message): the option --<unit>s and the figures' names."""
    default_n: int = 5000
    worker: str = "worker"
    """What the worker is called (worker, consumer): in the CPU figure's name."""
    agent: str = "agent"
    """What is installed (agent, middleware): in the progress lines and the table."""
    env: Callable[[bool], dict[str, str]] = lambda agent: {}
    """Extra environment of the worker, without or with the agent."""
    stop: signal.Signals | None = signal.SIGTERM
    """The warm shutdown signal (the agent flushes what it holds); None: the worker stops by itself (--burst)."""
    stored_before_stop: bool = False
    """Count what the collector stores while the worker still runs (not after its shutdown flush)."""
    options: Callable[[argparse.ArgumentParser], None] = lambda parser: None
    """The script's own command-line options."""
    settings: Callable[[argparse.Namespace], dict] = lambda args: {}
    """The figures' context in the JSON (pool, concurrency, …)."""
    title: Callable[[argparse.Namespace], str] = lambda args: ""
    """The table's corner."""
    names: dict = field(init=False)

    def __post_init__(self) -> None:
        self.names = {"rate": f"{self.unit}s_per_s", "cpu": f"{self.worker}_cpu_ms_per_{self.unit}"}


def tree_cpu(root: int) -> float:
    """User + system CPU seconds of a process, its live descendants and the children each reaped (Linux /proc)."""
    stats: dict[int, list[str]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    stats[int(entry)] = f.read().rpartition(")")[2].split()
            except OSError:
                continue
    children: dict[int, list[int]] = {}
    for pid, fields in stats.items():
        children.setdefault(int(fields[1]), []).append(pid)
    total, todo = 0, [root] if root in stats else []
    while todo:
        pid = todo.pop()
        total += sum(int(x) for x in stats[pid][11:15])  # utime stime cutime cstime
        todo.extend(children.get(pid, ()))
    return total / os.sysconf("SC_CLK_TCK")


def pin(pid: int, cores: set[int]) -> None:
    """Every thread of process ``pid`` on ``cores`` (threads it starts later inherit it)."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            os.sched_setaffinity(int(tid), cores)
        except ProcessLookupError:
            pass  # a thread that just ended


def worker_env(bench: Bench, agent_env: dict[str, str] | None, redis_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("Z4J_") or k == "Z4J_HOME"}
    env.update(agent_env or {})
    env.update(bench.env(agent_env is not None))
    env.update(Z4J_BENCH_REDIS_URL=redis_url, PYTHONPATH=f"{ROOT}{os.pathsep}{HERE}")
    return env


def run_once(bench: Bench, args: argparse.Namespace, agent_env: dict[str, str] | None, redis_url: str,
             redis_client, workdir: Path, collector, stored: Callable[[], int] | None,
             timeout: float = 900.0) -> dict:
    """One run: the tasks enqueued, a fresh worker on them, its figures (and ``stored()`` after an agent run)."""
    n = args.n
    redis_client.flushall()
    key = f"run-{time.time_ns()}"
    bench.enqueue(redis_url, n, key)
    log = workdir / "worker.log"
    proc = subprocess.Popen(bench.command(args, agent_env is not None), env=worker_env(bench, agent_env, redis_url),
                            cwd=HERE, stdout=open(log, "ab"), stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + timeout
    cpu_at_start = None
    count = None
    try:
        # Both markers: with several worker processes the one that took the
        # start marker may run it after another has run the end marker.
        while redis_client.get(f"{key}:end") is None or redis_client.get(f"{key}:start") is None:
            if proc.poll() is not None:
                raise RuntimeError(f"the {bench.engine} {bench.worker} exited {proc.returncode}: see {log}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the run did not finish within {timeout} s")
            if cpu_at_start is None and redis_client.get(f"{key}:start") is not None:
                cpu_at_start = tree_cpu(proc.pid), tree_cpu(collector.proc.pid)
            time.sleep(0.02)
        cpu_at_start = cpu_at_start or (0.0, 0.0)
        worker_cpu = tree_cpu(proc.pid) - cpu_at_start[0]
        collector_cpu = tree_cpu(collector.proc.pid) - cpu_at_start[1]
        if stored is not None and bench.stored_before_stop:
            count = stored()
        if bench.stop is None:
            proc.wait(60)  # it stops by itself (its teardown flushes the agent)
        else:
            os.kill(proc.pid, bench.stop)
            proc.wait(60)
    except subprocess.TimeoutExpired:
        pass
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    if stored is not None and count is None:
        count = stored()
    start = float(redis_client.get(f"{key}:start"))
    end = float(redis_client.get(f"{key}:end"))
    if end <= start:
        raise RuntimeError(f"the start marker ran {start - end:.3f} s after the end marker: the run measures nothing")
    result = {"agent": agent_env is not None, bench.names["rate"]: round(n / (end - start), 1),
              "seconds": round(end - start, 3), bench.names["cpu"]: round(worker_cpu * 1000 / n, 3),
              "collector_cpu_s": round(collector_cpu, 2)}
    if count is not None:
        result["stored"] = count
    return result


def stored_count(api, engine: str, n: int, timeout: float = 120.0) -> int:
    """Wait until the collector holds n succeeded tasks of the engine; how many it holds."""
    deadline = time.monotonic() + timeout
    count = 0
    while time.monotonic() < deadline:
        count = api.get("/api/v1/projects/default/tasks/counts",
                        params={"engine": engine}).raise_for_status().json().get("success", 0)
        if count >= n:
            break
        time.sleep(0.5)
    return count


def parse(bench: Bench, argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=bench.doc.split("\n\n")[0])
    parser.add_argument(f"--{bench.unit}s", dest="n", type=int, default=bench.default_n,
                        help=f"no-op {bench.unit}s per run")
    parser.add_argument("--runs", type=int, default=3, help=f"runs with and runs without the {bench.agent}")
    parser.add_argument("--collector-core", type=int, metavar="N",
                        help="the collector alone on core N, every other process on the other cores")
    bench.options(parser)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    cores = os.sched_getaffinity(0)
    if args.collector_core is not None and (args.collector_core not in cores or len(cores) < 2):
        parser.error(f"--collector-core must be one of this machine's cores {sorted(cores)}, and not its only one")
    return args


def measure(bench: Bench, args: argparse.Namespace) -> dict:
    """Every run, on a private redis-server and a collector; the figures as the JSON prints them."""
    sys.path[:0] = [str(ROOT)]
    import httpx
    import redis

    from tests.support.collector import Collector
    from tests.support.servers import RedisServer

    runs: dict[str, list[dict]] = {"without": [], "with": []}
    with tempfile.TemporaryDirectory(prefix=f"z4j-{bench.engine}-bench-") as tmp, RedisServer() as server:
        workdir = Path(tmp)
        args.redis_url = server.url
        redis_client = redis.Redis.from_url(server.url)
        collector = Collector(f"sqlite:///{workdir}/z4j.db", workdir).start()
        if args.collector_core is not None:
            others = os.sched_getaffinity(0) - {args.collector_core}
            pin(collector.proc.pid, {args.collector_core})
            pin(server.proc.pid, others)
            pin(os.getpid(), others)  # the workers started from here inherit it
        try:
            agent_env = collector.agent_env(collector.create_agent("bench"))
            api = httpx.Client(base_url=collector.url, timeout=30,
                               headers={"Authorization": f"Bearer {collector.create_token('viewer')}"})
            stored_total = 0
            for i in range(args.runs):
                for label in ("without", "with"):
                    print(f"run {i + 1}/{args.runs} {label} the {bench.agent}: {args.n:,} no-op {bench.unit}s",
                          file=sys.stderr)
                    stored = None
                    if label == "with":
                        stored_total += args.n + 2  # and the two markers
                        stored = (lambda total=stored_total: stored_count(api, bench.engine, total)
                                  - (total - args.n - 2))
                    result = run_once(bench, args, agent_env if label == "with" else None, server.url,
                                      redis_client, workdir, collector, stored)
                    runs[label].append(result)
                    print(f"  {result}", file=sys.stderr)
        finally:
            collector.stop()

    rate, cpu = bench.names["rate"], bench.names["cpu"]
    without = statistics.median(r[rate] for r in runs["without"])
    with_agent = statistics.median(r[rate] for r in runs["with"])
    return {
        f"{bench.unit}s": args.n, "runs": args.runs, **bench.settings(args),
        "without_agent": {rate: without, "runs": runs["without"]},
        "with_agent": {rate: with_agent, "runs": runs["with"]},
        "collector_core": args.collector_core,
        "ratio": round(with_agent / without, 3),
        cpu: {label: statistics.median(r[cpu] for r in runs[label]) for label in ("without", "with")},
        "overhead_pct": round((1 - with_agent / without) * 100, 1),
    }


def table(bench: Bench, args: argparse.Namespace, out: dict) -> str:
    rate, cpu = bench.names["rate"], bench.names["cpu"]
    corner, header = bench.title(args), f"{bench.unit}s/s (median)"
    left, right = max(16, len(corner) + 2), max(18, len(header) + 2)
    lines = [f"{corner:{left}}{header:>{right}}   runs"]
    for label, key in (("without agent", "without_agent"), ("with agent", "with_agent")):
        lines.append(f"{label:{left}}{out[key][rate]:>{right},.0f}   "
                     + " · ".join(f"{r[rate]:,.0f}" for r in out[key]["runs"]))
    lines.append(f"ratio with/without: {out['ratio']:.3f} (overhead {out['overhead_pct']:.1f} %)")
    lines.append(f"{bench.worker} CPU per {bench.unit}: {out[cpu]['without']:.3f} ms without, "
                 f"{out[cpu]['with']:.3f} ms with the {bench.agent}")
    return "\n".join(lines)


def main(bench: Bench, argv: list[str] | None = None) -> None:
    args = parse(bench, argv)
    out = measure(bench, args)
    print(json.dumps(out, indent=2) if args.json else table(bench, args, out))
