"""Behaviour of the benchmark workload generator and the peer measurements."""

from __future__ import annotations

import importlib.util
import sys
from collections import defaultdict
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def _load(name: str):
    # benchmarks/ is a folder of scripts, not a package on sys.path.
    spec = importlib.util.spec_from_file_location(f"z4j_bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


workload = _load("workload")
peers = _load("peers")

COMMON = {"type", "hostname", "timestamp", "utcoffset", "pid", "clock", "local_received"}
EXTRA = {
    "task-received": {"uuid", "name", "args", "kwargs", "root_id", "parent_id", "retries", "eta", "expires"},
    "task-started": {"uuid"},
    "task-succeeded": {"uuid", "result", "runtime"},
    "task-failed": {"uuid", "exception", "traceback"},
    "task-retried": {"uuid", "exception", "traceback"},
    "worker-heartbeat": {"freq", "active", "processed", "loadavg", "sw_ident", "sw_ver", "sw_sys"},
}
# A task's lifecycle: (received, started, retried)* then received, started, succeeded|failed.
NEXT = {
    None: {"task-received"},
    "task-received": {"task-started"},
    "task-started": {"task-succeeded", "task-failed", "task-retried"},
    "task-retried": {"task-received"},
    "task-succeeded": set(),
    "task-failed": set(),
}


@pytest.fixture(scope="module")
def events():
    return workload.generate(20_000)


def test_same_seed_same_stream_other_seed_differs():
    assert workload.generate(3_000, seed=3) == workload.generate(3_000, seed=3)
    assert workload.generate(3_000, seed=3) != workload.generate(3_000, seed=4)


@pytest.mark.parametrize("n", [0, 1, 17, 5_000])
def test_exact_length(n):
    assert len(workload.generate(n)) == n
    assert len(workload.generate(n, heartbeats=False, workers=2)) == n


def test_fields_match_celery_event_types(events):
    for ev in events:
        assert set(ev) == COMMON | EXTRA[ev["type"]], ev["type"]
        assert ev["hostname"].startswith("celery@worker-")
    received = [ev for ev in events if ev["type"] == "task-received"]
    assert all(isinstance(ev["args"], str) and ev["args"].startswith("(") for ev in received)
    assert all(isinstance(ev["kwargs"], str) and ev["kwargs"].startswith("{") for ev in received)
    assert any("'api_key': 'sk_live_" in ev["kwargs"] for ev in received)


def test_timestamps_and_clock_increase(events):
    for before, after in zip(events, events[1:]):
        assert after["timestamp"] > before["timestamp"]
        assert after["clock"] > before["clock"]


def test_every_task_follows_a_valid_lifecycle(events):
    last = defaultdict(lambda: None)
    for ev in events:
        if ev["type"].startswith("task-"):
            assert ev["type"] in NEXT[last[ev["uuid"]]], (ev["uuid"], last[ev["uuid"]], ev["type"])
            last[ev["uuid"]] = ev["type"]
    finals = [state for state in last.values() if state in ("task-succeeded", "task-failed")]
    assert len(finals) > 0.9 * len(last)


def test_mix_interleaves_and_includes_failures_retries_heartbeats(events):
    types = [ev["type"] for ev in events]
    tasks = workload.task_count(events)
    assert 0.05 * tasks < types.count("task-failed") < 0.15 * tasks
    assert 0.02 * tasks < types.count("task-retried") < 0.08 * tasks
    assert types.count("worker-heartbeat") > 0
    assert "worker-heartbeat" not in {ev["type"] for ev in workload.generate(5_000, heartbeats=False)}
    # Concurrent lifecycles overlap: the first 200 task events span many tasks.
    first = [ev["uuid"] for ev in events[:200] if "uuid" in ev]
    assert len(set(first)) > 30


def test_failures_carry_a_traceback_with_the_database_url(events):
    failed = [ev for ev in events if ev["type"] in ("task-failed", "task-retried")]
    assert failed
    for ev in failed:
        assert workload.DSN in ev["traceback"]
        assert ev["traceback"].startswith("Traceback (most recent call last):\n")
        assert ev["traceback"].count("\n") > 10
    assert all(800 <= len(ev["traceback"]) <= 1500 for ev in failed if ev["type"] == "task-failed")


def test_task_count_counts_distinct_uuids():
    events = [{"type": "task-received", "uuid": "a"}, {"type": "task-started", "uuid": "a"},
              {"type": "worker-heartbeat"}, {"type": "task-received", "uuid": "b"}]
    assert workload.task_count(events) == 2


@pytest.mark.parametrize("measure", ["celery_state_rate", "flower_state_rate"])
def test_peers_report_rate_and_task_count(measure):
    pytest.importorskip("celery" if measure.startswith("celery") else "flower")
    events = workload.generate(2_000)
    before = [dict(ev) for ev in events]
    result = getattr(peers, measure)(events, repeat=2)
    assert result["events_per_s"] > 0
    assert len(result["runs"]) == 2 and all(rate > 0 for rate in result["runs"])
    assert result["tasks"] == workload.task_count(events)
    assert events == before, "the caller's events must not be mutated"
