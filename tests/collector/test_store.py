"""The store on both databases: ingest, dedupe, state precedence, filters."""

from __future__ import annotations

import sys
import time

import pytest

from z4j_agents import protocol as p
from z4j_collector.store import make_store, migrate
from z4j_collector.store.base import IngestItem, TaskQuery


@pytest.fixture
async def store(db_url):
    migrate.upgrade(db_url)
    s = make_store(db_url)
    await s.open()
    yield s
    await s.close()


def ev(task_id: str, kind: str, ts: float, **fields) -> p.TaskEvent:
    return p.TaskEvent(id=p.new_id(), task_id=task_id, engine=fields.pop("engine", "bare"), kind=kind, ts=ts, **fields)


async def ingest(store, *events):
    agent = await store.create_agent(1, p.new_id(), p.new_id(), b"k" * 32)
    return await store.ingest([IngestItem(1, agent, list(events))])


async def test_migration_creates_default_project_and_is_at_head(db_url):
    assert migrate.current(db_url) is None or migrate.current(db_url) != migrate.head()
    migrate.upgrade(db_url)
    assert migrate.current(db_url) == migrate.head()
    migrate.upgrade(db_url)  # idempotent
    s = make_store(db_url)
    await s.open()
    try:
        assert [pr["slug"] for pr in await s.list_projects()] == ["default"]
    finally:
        await s.close()


async def test_every_kind_moves_the_task(store):
    t = time.time()
    await ingest(store,
           ev("a", "sent", t, name="n", queue="q"), ev("a", "received", t + 1), ev("a", "started", t + 2),
           ev("a", "retried", t + 3, exception="E()"), ev("a", "received", t + 4), ev("a", "started", t + 5),
           ev("a", "succeeded", t + 6, runtime=0.5, result=[1]),
           ev("b", "revoked", t), ev("c", "rejected", t), ev("d", "lost", t), ev("e", "failed", t, exception="X"))
    states = {r["task_id"]: r["state"] for r in (await store.list_tasks(1, TaskQuery(), 50))}
    assert states == {"a": "success", "b": "revoked", "c": "rejected", "d": "lost", "e": "failure"}
    a = (await store.get_task(1, "a"))
    assert (a["sent_at"], a["finished_at"], a["runtime"], a["result"]) == (t, t + 6, 0.5, [1])
    assert a["created_at"] == t and a["updated_at"] == t + 6
    assert [e["kind"] for e in (await store.task_events(1, "bare", "a"))] == [
        "sent", "received", "started", "retried", "received", "started", "succeeded"]


async def test_a_task_and_its_timeline_are_read_as_of_one_row(store, monkeypatch):
    """An event committed between reading the task and reading its timeline
    (the producer's "sent" of a task that the worker already ran: two agents)
    is in neither: never a "sent" in the timeline beside a null sent_at."""
    t = time.time()
    await ingest(store, ev("late", "started", t + 1, name="n"), ev("late", "succeeded", t + 2))
    read = store.fetchall

    async def fetchall(sql, params=()):
        rows = await read(sql, params)
        if " FROM tasks WHERE" in sql and not committed:  # the first read of the task
            committed.append(True)
            await ingest(store, ev("late", "sent", t, name="n"))
        return rows

    committed: list[bool] = []
    monkeypatch.setattr(store, "fetchall", fetchall)
    task = await store.get_task(1, "late", events=True)
    assert committed, "the late event was committed while the task was read"
    assert task["sent_at"] is None and [e["kind"] for e in task["events"]] == ["started", "succeeded"]
    monkeypatch.setattr(store, "fetchall", read)
    task = await store.get_task(1, "late", events=True)
    assert task["sent_at"] == t and [e["kind"] for e in task["events"]] == ["sent", "started", "succeeded"]


async def test_duplicates_are_dropped_by_event_id(store):
    t = time.time()
    events = [ev("x", "received", t), ev("x", "succeeded", t + 1)]
    first = await ingest(store, *events)
    again = await ingest(store, *events, ev("y", "received", t))
    assert (first.outcomes[0].accepted, first.outcomes[0].duplicates) == (2, 0)
    assert (again.outcomes[0].accepted, again.outcomes[0].duplicates) == (1, 2)
    assert (await store.status_counts())["task_events"] == 3


async def test_same_event_in_two_batches_of_one_commit(store):
    t = time.time()
    e = ev("z", "received", t)

    agent = await store.create_agent(1, "dup", "h" * 64, b"k" * 32)
    result = await store.ingest([IngestItem(1, agent, [e]), IngestItem(1, agent, [e, ev("z", "started", t + 1)])])
    assert [(o.accepted, o.duplicates) for o in result.outcomes] == [(1, 0), (1, 1)]
    assert (await store.get_task(1, "z"))["state"] == "started"


async def test_terminal_state_is_never_demoted_by_late_events(store):
    t = time.time()
    await ingest(store, ev("s", "succeeded", t + 10))
    await ingest(store, ev("s", "started", t + 5))            # older, late
    await ingest(store, ev("s", "started", t + 20))           # newer, still not terminal
    await ingest(store, ev("s", "received", t + 1, name="late.name", args=[1]))
    task = (await store.get_task(1, "s"))
    assert task["state"] == "success"
    assert task["name"] == "late.name" and task["args"] == [1]  # fields still fill in
    assert task["created_at"] == t + 1


async def test_lost_yields_to_a_real_terminal_state(store):
    t = time.time()
    await ingest(store, ev("l", "started", t), ev("l", "lost", t + 100))
    assert (await store.get_task(1, "l"))["state"] == "lost"
    await ingest(store, ev("l", "failed", t + 50, exception="RuntimeError()"))
    assert (await store.get_task(1, "l"))["state"] == "failure"
    await ingest(store, ev("l", "lost", t + 200))
    assert (await store.get_task(1, "l"))["state"] == "failure"


async def test_filters_and_keyset_paging(store):
    base = time.time() - 86400
    events = []
    for i in range(60):
        events.append(ev(f"t{i:02d}", "received", base + i, name=f"{'billing' if i % 2 else 'mail'}.job{i % 3}",
                         queue=f"q{i % 4}", worker=f"w{i % 5}", engine="bare" if i < 50 else "other",
                         kwargs={"note": f"needle-{i}" if i == 33 else "hay"}))
        events.append(ev(f"t{i:02d}", "failed" if i % 7 == 0 else "succeeded", base + i + 0.5,
                         engine="bare" if i < 50 else "other"))
    await ingest(store, *events)

    async def ids(**query):
        return [r["task_id"] for r in await store.list_tasks(1, TaskQuery(**query), 100)]

    assert len(await ids()) == 60
    assert await ids() == sorted(await ids(), reverse=True)
    assert set(await ids(states=("failure",))) == {f"t{i:02d}" for i in range(0, 60, 7)}
    assert len(await ids(not_states=("failure",))) == 60 - 9
    assert all(i.startswith("t") for i in await ids(name="billing.*")) and len(await ids(name="billing.*")) == 30
    assert await ids(name="mail.job0") == [f"t{i:02d}" for i in range(59, -1, -1) if i % 2 == 0 and i % 3 == 0]
    assert len(await ids(queue="q1")) == 15 and len(await ids(worker="w2")) == 12 and len(await ids(engine="other")) == 10
    assert await ids(since=base + 10, until=base + 13) == ["t12", "t11", "t10"]
    assert await ids(search="NEEDLE-33") == ["t33"]
    assert await ids(search="100%") == []  # LIKE wildcards in the needle are literal
    assert set(await ids(states=("failure",), since=base + 20, until=base + 40)) == {"t21", "t28", "t35"}

    async def pages(query):
        seen, after = [], None
        while True:
            page = await store.list_tasks(1, query, 7, after)
            if not page:
                return seen
            seen += [r["task_id"] for r in page]
            last = page[-1]
            after = (last["created_at"], last["engine"], last["task_id"])

    assert await pages(TaskQuery()) == await ids()
    # inside a time range (the cursor or the range's end is the upper bound, whichever is lower)
    in_range = TaskQuery(since=base + 10, until=base + 40)
    assert await pages(in_range) == await ids(since=base + 10, until=base + 40) == [
        f"t{i:02d}" for i in range(39, 9, -1)]
    assert await store.list_tasks(1, in_range, 7, (base + 50, "bare", "t50")) == (
        await store.list_tasks(1, in_range, 7))  # a cursor above the range: its first page
    assert await store.list_tasks(1, in_range, 7, (base + 5, "bare", "t05")) == []  # below it: nothing


async def test_workers_and_queues_keep_the_latest_report(store):
    t = time.time()

    agent = await store.create_agent(1, "wq", "w" * 64, b"k" * 32)
    await store.ingest([IngestItem(1, agent, [
        p.WorkerEvent(id=p.new_id(), worker="w1", engine="bare", kind="online", ts=t, info={"pid": 1}),
        p.WorkerEvent(id=p.new_id(), worker="w1", engine="bare", kind="offline", ts=t + 5),
        p.QueueEvent(id=p.new_id(), queue="q", engine="bare", ts=t + 1, depth=9),
    ], dropped=3)])
    await store.ingest([IngestItem(1, agent, [
        p.WorkerEvent(id=p.new_id(), worker="w1", engine="bare", kind="heartbeat", ts=t + 2),  # late
        p.QueueEvent(id=p.new_id(), queue="q", engine="bare", ts=t, depth=1),  # late
    ])])
    workers, queues, agents = await store.list_workers(1), await store.list_queues(1), await store.list_agents(1)
    assert [(w["name"], w["state"], w["info"]) for w in workers] == [("w1", "offline", {"pid": 1})]
    assert [(q["name"], q["depth"]) for q in queues] == [("q", 9)]
    assert agents[0]["dropped_events"] == 3


async def test_agent_names_are_unique_per_project(store):
    from z4j_collector.errors import Conflict

    await store.create_agent(1, "same", "a" * 64, b"k")
    with pytest.raises(Conflict, match="same"):
        await store.create_agent(1, "same", "b" * 64, b"k")


async def test_tasks_by_id_reads_the_given_tasks_through_the_primary_key(store):
    """The lookup of tasks by id that trends and live watchers make after ingest: unknown ids and
    other engines left out, a repeated id read once, more ids than one statement's list takes. On
    PostgreSQL a young table gets statistics from ingest itself, and with them the lookup probes
    the primary key (without, any index on project_id could be read whole for every id)."""
    now = time.time()
    events = [ev(f"k-{i}", "received", now, name="t") for i in range(1200)]
    await store.ingest([IngestItem(1, None, events[i:i + 600]) for i in range(0, 1200, 600)])
    await ingest(store, ev("k-7", "received", now, engine="other", name="elsewhere"))
    asked = [f"k-{i}" for i in range(0, 1200, 2)] + ["k-0", "nope"]
    rows = await store.tasks_by_id(store, 1, "bare", asked, ("task_id", "name"))
    assert sorted(rows) == sorted((f"k-{i}", "t") for i in range(0, 1200, 2))
    assert await store.tasks_by_id(store, 1, "other", ["k-7", "k-8"], ("task_id", "name")) == [("k-7", "elsewhere")]
    if store.dialect == "postgresql":
        store.note_ingest()
        await store._stats_task
        assert (await store.fetchall("SELECT reltuples FROM pg_class WHERE relname = 'tasks'"))[0][0] > 1000
        store.note_ingest()
        assert store._stats_task.done()  # at most one check every STATS_CHECK_S
        from z4j_collector.store.postgres import TASKS_BY_ID_SQL

        plan = await store.fetchall("EXPLAIN " + TASKS_BY_ID_SQL.format(columns="task_id"), [asked, 1, "bare"])
        text = "\n".join(r[0] for r in plan)
        assert "pk_tasks" in text and "Nested Loop" in text, text


async def test_the_task_list_reads_a_rare_value_through_its_own_index(store, monkeypatch):
    """A rare queue, a rare state and their combinations with common ones. On SQLite the store
    picks the index itself: without statistics (SQLite's default) or with ANALYZE's averages
    (ten million tasks in thirteen queues: every queue "is" 770,000 tasks), the planner walked
    all ten million newest first for a queue of two hundred. Its plan is read back from the very
    query the store runs, under both kinds of statistics."""
    from z4j_collector.store import sqlite as sqlite_store

    monkeypatch.setattr(sqlite_store, "INDEX_LIST_MAX", 5)
    now = time.time() - 3600
    events = []
    for i in range(120):
        state = "lost" if i % 40 == 0 else "failed" if i % 5 == 0 else "succeeded"
        events += [ev(f"r-{i:03d}", "received", now + i, name="job", queue="audit" if i % 60 == 7 else "default"),
                   ev(f"r-{i:03d}", state, now + i + 0.5)]
    await ingest(store, *events)
    sqls: list[str] = []
    fetchall = store.fetchall

    async def recording(sql, params=()):
        if sql.startswith("SELECT engine, task_id"):
            sqls.append((sql, list(params)))
        return await fetchall(sql, params)

    monkeypatch.setattr(store, "fetchall", recording)
    cases = [  # (query, tasks found, SQLite's index)
        (TaskQuery(queue="audit"), ["r-067", "r-007"], "ix_tasks_queue"),
        (TaskQuery(states=("lost",)), ["r-080", "r-040", "r-000"], "ix_tasks_state"),
        (TaskQuery(), 120, "ix_tasks_created"),
        (TaskQuery(since=now + 10, until=now + 20), 10, "ix_tasks_created"),
        (TaskQuery(states=("lost",), queue="default"), ["r-080", "r-040", "r-000"], "ix_tasks_state"),  # 3 ≤ 5
        (TaskQuery(states=("failure",), queue="default"), 21, "ix_tasks_queue"),  # both > 5: the queue's
        (TaskQuery(states=("failure", "lost")), 24, "ix_tasks_created"),  # several states, > 5: the walk
        (TaskQuery(states=("lost", "revoked")), ["r-080", "r-040", "r-000"], "ix_tasks_state"),
    ]
    for statistics in ("none", "ten million"):
        if store.dialect == "sqlite" and statistics != "none":
            async def misleading(tx):
                await tx.execute("ANALYZE")
                await tx.execute("DELETE FROM sqlite_stat1 WHERE tbl = 'tasks'")
                n = 10_000_000
                for index, per in (("ix_tasks_created", 1), ("ix_tasks_state", n // 8), ("ix_tasks_queue", n // 13),
                                   ("ix_tasks_name", n // 200), ("ix_tasks_worker", n // 41),
                                   ("ix_tasks_engine", n // 6)):
                    await tx.execute("INSERT INTO sqlite_stat1 VALUES ('tasks', ?, ?)", (index, f"{n} {n} {per} 1"))
            await store.write(misleading)
            await fetchall("ANALYZE sqlite_schema")  # the reader loads them
        for query, found, index in cases:
            sqls.clear()
            rows = await store.list_tasks(1, query, 200)
            got = [r["task_id"] for r in rows]
            assert (got if isinstance(found, list) else len(got)) == found, (query, got)
            if store.dialect == "sqlite":
                sql, params = sqls[-1]
                plan = " ".join(r[3] for r in await fetchall("EXPLAIN QUERY PLAN " + sql, params))
                assert f"USING INDEX {index} " in plan or plan.endswith(f"USING INDEX {index}"), (statistics, query, plan)


async def test_a_bulk_write_of_many_rows_applies_them_in_order(store):
    # SQLite sends an INSERT … VALUES of many rows as statements of up to
    # ROWS_PER_STATEMENT rows; an upsert that meets its own earlier row, in
    # the same statement or the next, must update it, as row by row would:
    # here the last row of a name wins.
    last_wins = ("INSERT INTO queues (project_id, engine, name, depth, updated_at, agent_id) "
                 "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (project_id, engine, name) DO UPDATE SET depth = excluded.depth")
    rows = [(1, "bare", f"q{i % 700}", i, 1.0, None) for i in range(2500)]
    await store.write(lambda tx: tx.executemany(last_wins, rows))
    depths = {r["name"]: r["depth"] for r in await store.list_queues(1)}
    assert len(depths) == 700
    assert depths == {f"q{n}": max(i for i in range(2500) if i % 700 == n) for n in range(700)}


async def test_an_inline_write_that_awaits_anything_else_is_refused_and_stores_nothing(store):
    # Ingest's transaction runs whole in SQLite's writer thread: it may await
    # its own statements only. Anything else is a programming error, said
    # plainly, and the transaction rolls back.
    import asyncio

    async def strays(tx):
        await tx.execute("UPDATE projects SET name = 'changed' WHERE id = 1")
        await asyncio.sleep(0)

    name = (await store.fetchone("SELECT name FROM projects WHERE id = 1"))[0]
    if store.dialect == "sqlite":
        with pytest.raises(RuntimeError, match="awaited something other than its statements"):
            await store.write_inline(strays)
    else:
        await store.write_inline(strays)  # PostgreSQL: an ordinary transaction
        await store.execute("UPDATE projects SET name = ? WHERE id = 1", (name,))
    assert (await store.fetchone("SELECT name FROM projects WHERE id = 1"))[0] == name
    await ingest(store, ev("x", "received", time.time(), name="n"))  # the writer still works
    assert (await store.get_task(1, "x"))["name"] == "n"


async def test_sqlite_checkpoints_its_log_in_the_background(store, tmp_path):
    # The writer's commits never copy the log into the database below 80 MB
    # of log; a connection of its own does, after ingest commits.
    if store.dialect != "sqlite":
        pytest.skip("SQLite's write-ahead log")
    import asyncio
    from z4j_collector.store import sqlite

    t = time.time()
    await ingest(store, *(ev(f"t{i}", "received", t, name="n", args=["x" * 500]) for i in range(3000)))
    assert await store._writer.call(
        lambda: store._writer.conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0]
    ) == sqlite.WRITER_AUTOCHECKPOINT_PAGES
    assert sys.getswitchinterval() <= sqlite.SWITCH_INTERVAL_S  # the writer takes the GIL back sooner
    path = tmp_path / "z4j.db"
    before = path.stat().st_size  # the commit left its pages in the log
    store.note_ingest()
    first = store._checkpoint
    assert first is not None
    await asyncio.wait_for(first, 30)
    assert path.stat().st_size > before + 1_000_000  # copied into the database
    store.note_ingest()  # within CHECKPOINT_EVERY_S of the last: none now
    assert store._checkpoint is first


async def test_a_command_answered_before_it_is_marked_sent_keeps_its_result_and_its_send_time(store):
    # The agent may answer before the collector has noted the send: the
    # command stays closed with its result, and still says when it went out.
    agent = await store.create_agent(1, p.new_id(), p.new_id(), b"k" * 32)
    t0 = time.time()
    for command_id in ("fast", "usual"):
        await store.write(lambda tx, c=command_id: store.insert_command(tx, c, 1, agent, "echo", {"x": 1}, "op"))
    sent_at = time.time()
    assert await store.write(lambda tx: store.command_finished(tx, "fast", "succeeded", {"ok": 1}, None, agent))
    await store.command_dispatched("fast", sent_at)
    await store.command_dispatched("usual", sent_at)
    fast, usual = await store.get_command(1, "fast"), await store.get_command(1, "usual")
    assert fast["state"] == "succeeded" and fast["result"] == {"ok": 1}
    assert fast["finished_at"] >= fast["dispatched_at"] == sent_at >= fast["created_at"] >= t0
    assert usual["state"] == "dispatched" and usual["dispatched_at"] == sent_at and usual["finished_at"] is None
    await store.command_dispatched("usual", sent_at + 5)  # noted once
    assert (await store.get_command(1, "usual"))["dispatched_at"] == sent_at
