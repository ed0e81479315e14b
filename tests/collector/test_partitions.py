"""task_events partitioned by day on PostgreSQL (migration 0010,
store/partitions.py): events stored before the upgrade keep their place and
timelines, new events land in their day's partition, odd ids in the default
one, partitions are made ahead, and retention drops a whole day no project
keeps while the rest goes by batched deletes; SQLite keeps one table."""

from __future__ import annotations

import secrets
import time

import psycopg
import pytest

from z4j_agents import protocol as p
from z4j_collector.services.trends import Trends
from z4j_collector.store import migrate
from z4j_collector.store.base import IngestItem

from tests.support.collector import with_store

DAY = 86_400.0


def event(task_id: str, ts: float, kind: str = "received", event_id: str | None = None) -> p.TaskEvent:
    if event_id is None:
        event_id = f"{int(ts * 1000):012x}{secrets.token_hex(10)}"
    return p.TaskEvent(id=event_id, task_id=task_id, engine="bare", kind=kind, ts=ts, name="app.work", queue="q")


def where(db_url: str) -> dict[str, str]:
    """event id -> the partition that holds it."""
    with psycopg.connect(db_url) as conn:
        return {r[0]: r[1] for r in conn.execute("SELECT id, tableoid::regclass::text FROM task_events")}


def test_upgrade_keeps_old_events_and_retention_drops_whole_days(postgres_server):
    name = f"t_parts_{secrets.token_hex(6)}"
    db_url = postgres_server.create_database(name)
    now = time.time()
    today = now // DAY * DAY
    try:
        migrate.upgrade(db_url, "0009")
        old = [event("old-1", now - 3 * DAY), event("old-1", now - 3 * DAY + 1, "succeeded"),
               event("odd", now - DAY, event_id="custom-id-not-hex-time")]

        async def before(store):
            pid = await store.project_id("default")
            await store.ingest([IngestItem(pid, None, old)])

        with_store(db_url, before)
        migrate.upgrade(db_url)

        async def after(store):
            assert store.partitioned_events
            parts = {part["name"]: part for part in await store.event_partitions()}
            days = [time.strftime("%Y%m%d", time.gmtime(today + d * DAY)) for d in range(8)]
            assert {"task_events_before", *(f"task_events_{d}" for d in days)} == set(parts)
            assert parts["task_events_before"]["from"] is None and parts["task_events_before"]["to"] == today
            pid = await store.project_id("default")
            # the old task's timeline still reads through the ids kept on its row
            assert [e["kind"] for e in await store.task_events(pid, "bare", "old-1")] == ["received", "succeeded"]
            fresh = [event("new-1", now), event("new-1", now + 1, "started"), event("ahead", today + 3 * DAY + 5)]
            await store.ingest([IngestItem(pid, None, fresh)])
            return pid, fresh

        pid, fresh = with_store(db_url, after)
        placed = where(db_url)
        assert placed[old[0].id] == placed[old[1].id] == "task_events_before"
        assert placed["custom-id-not-hex-time"] == "task_events_other"
        assert placed[fresh[0].id] == "task_events_" + time.strftime("%Y%m%d", time.gmtime(today))
        assert placed[fresh[2].id] == "task_events_" + time.strftime("%Y%m%d", time.gmtime(today + 3 * DAY))

        # Retention: keep 2 days. Nothing newer than that may go, and the
        # partition of the days before goes whole (with "old-1").
        async def retain(store):
            async def tx_fn(tx):
                await store.set_retention(tx, pid, {"events_days": 2, "tasks_days": 30, "rollups_days": 30})

            await store.write(tx_fn)
            trends = Trends(store)
            # two days after the upgrade: "before" ended two days ago
            deleted = await trends.retention_pass(now=today + 2 * DAY + 1)
            names = {part["name"] for part in await store.event_partitions()}
            # made ahead from "now" again: a week after the later day too
            ahead = "task_events_" + time.strftime("%Y%m%d", time.gmtime(today + 9 * DAY))
            return deleted, names, ahead, trends.partitions_dropped

        deleted, names, ahead, dropped = with_store(db_url, retain)
        assert dropped == 1 and "task_events_before" not in names and ahead in names
        placed = where(db_url)
        assert old[0].id not in placed and old[1].id not in placed
        # the odd id (a day old) and everything newer are kept
        assert {"custom-id-not-hex-time", *(e.id for e in fresh)} <= set(placed)
        assert deleted["task_events"] == 0
    finally:
        postgres_server.drop_database(name)


def test_sqlite_keeps_one_table(tmp_path):
    db_url = f"sqlite:///{tmp_path}/z4j.db"
    migrate.upgrade(db_url)

    async def check(store):
        assert not store.partitioned_events
        pid = await store.project_id("default")
        await store.ingest([IngestItem(pid, None, [event("t", time.time())])])
        return await store.fetchall("SELECT count(*) FROM task_events")

    assert with_store(db_url, check) == [(1,)]


pytestmark = pytest.mark.timeout(120)
