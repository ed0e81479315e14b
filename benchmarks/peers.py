"""How fast the in-memory peers absorb the same event stream z4j persists.

Celery's ``celery.events.state.State`` and Flower's ``EventsState`` (State plus
a search index, per-worker counters and Prometheus metrics) are fed the
identical list of events; only the feeding loop is timed.

Both run with ``max_tasks_in_memory=100_000``: Flower's default, and what a
Flower user actually runs.  Celery's own default (10,000) would evict most
tasks of a large run and so do less work per event than Flower and z4j,
which keep every task.
"""

from __future__ import annotations

import gc
import statistics
import time

FLOWER_MAX_TASKS = 100_000


def _measure(make_state, events: list[dict], repeat: int) -> dict:
    runs, tasks = [], 0
    for _ in range(max(1, repeat)):
        state = make_state()
        # State writes 'state' into the dict of the event it is handed, and
        # the receiver hands it a fresh dict per message; copy outside the timer.
        batch = [dict(ev) for ev in events]
        gc.collect()
        feed = state.event
        start = time.perf_counter()
        for ev in batch:
            feed(ev)
        elapsed = time.perf_counter() - start
        runs.append(len(batch) / elapsed if elapsed > 0 else float("inf"))
        tasks = len(state.tasks)
        del state, batch
    return {"events_per_s": statistics.median(runs), "runs": runs, "tasks": tasks}


def celery_state_rate(events: list[dict], repeat: int = 3, max_tasks: int = FLOWER_MAX_TASKS) -> dict:
    """Feed ``events`` into a fresh ``celery.events.state.State`` per run."""
    try:
        from celery.events.state import State
    except ImportError as exc:
        raise RuntimeError(f"celery is not installed: {exc}; install the 'bench' group") from exc
    return _measure(lambda: State(max_tasks_in_memory=max_tasks), events, repeat)


def flower_state_rate(events: list[dict], repeat: int = 3, max_tasks: int = FLOWER_MAX_TASKS) -> dict:
    """Feed ``events`` into a fresh Flower ``EventsState`` per run, built as flower.app does."""
    try:
        from flower.events import EventsState
    except ImportError as exc:
        raise RuntimeError(f"flower is not installed: {exc}; install the 'bench' group") from exc
    # Flower keeps its Prometheus metrics in a module-level singleton, so a
    # second EventsState reuses them instead of re-registering.
    return _measure(
        lambda: EventsState(max_workers_in_memory=5_000, max_tasks_in_memory=max_tasks), events, repeat
    )


def main(argv: list[str] | None = None) -> None:
    import argparse
    import json
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from workload import generate, task_count

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)

    events = generate(args.events, seed=args.seed)
    results = {
        "events": len(events),
        "tasks": task_count(events),
        "max_tasks_in_memory": FLOWER_MAX_TASKS,
        "celery_state": celery_state_rate(events, args.repeat),
        "flower_events_state": flower_state_rate(events, args.repeat),
    }
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"{results['events']:,} events, {results['tasks']:,} tasks, "
          f"max_tasks_in_memory={FLOWER_MAX_TASKS:,}, median of {args.repeat}")
    print(f"{'peer':<22}{'events/s':>12}{'tasks kept':>12}  runs (events/s)")
    for label, key in (("Celery State", "celery_state"), ("Flower EventsState", "flower_events_state")):
        r = results[key]
        runs = ", ".join(f"{x:,.0f}" for x in r["runs"])
        print(f"{label:<22}{r['events_per_s']:>12,.0f}{r['tasks']:>12,}  {runs}")


if __name__ == "__main__":
    main()
