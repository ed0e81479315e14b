"""Free-text search of the task list, without and with its optional text
index (``z4j db text-index``: a pg_trgm GIN index on PostgreSQL, an FTS5
trigram table kept in step by triggers on SQLite): found in every searched
column, kept in step as a task's text changes and when retention deletes it,
the same answer whether the text is rare (read from the index) or common (the
newest-first walk), whether the index was there from the start or built over
stored tasks, and short texts the trigram index cannot take still answered;
name prefixes likewise. The CLI switches the index with a one-line answer."""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from z4j_agents import protocol as p
from z4j_collector.services.trends import Trends
from z4j_collector.store import migrate
from z4j_collector.store.base import IngestItem, TaskQuery
from tests.support.collector import Z4J, with_store
from z4j_collector.store.textindex import SEARCH_TEXT
from z4j_collector.store.sqlite import INDEX_LIST_MAX

DAY = 86_400.0


def ev(i: int, task_id: str, kind: str, ts: float, **fields) -> p.TaskEvent:
    return p.TaskEvent(id=f"{int(ts * 1000):012x}{i:020x}", task_id=task_id, engine="bare", kind=kind, ts=ts,
                       name=fields.pop("name", "app.work" if kind == "received" else None), queue="q", **fields)


async def ids(store, pid: int, text: str, limit: int = 100, **filters) -> list[str]:
    rows = await store.list_tasks(pid, TaskQuery(search=text, **filters), limit)
    return [r["task_id"] for r in rows]


@pytest.mark.parametrize("text_index", [False, True], ids=["walk", "text-index"])
def test_search_follows_the_task_through_its_life(db_url, text_index):
    migrate.upgrade(db_url)
    now = time.time()

    async def run(store):
        pid = await store.project_id("default")
        assert await store.has_text_index() is False  # off after the migrations
        if text_index:
            assert await store.set_text_index(True) is True
            assert await store.has_text_index() is True
        common = [ev(i, f"bulk-{i}", "received", now - 3600 + i * 0.01, args=["common-word", i])
                  for i in range(INDEX_LIST_MAX + 100)]
        for start in range(0, len(common), 1000):
            await store.ingest([IngestItem(pid, None, common[start:start + 1000])])
        await store.ingest([IngestItem(pid, None, [
            ev(10_001, "pay-1", "received", now - 60, name="billing.charge", args=["inv-ZX81"],
               kwargs={"email": "alice@example.com"}),
            ev(10_002, "old-1", "received", now - 40 * DAY, args=["ancient-text"]),
        ])])
        assert await ids(store, pid, "zx81") == ["pay-1"]  # args, any case
        assert await ids(store, pid, "ALICE@EXAMPLE") == ["pay-1"]  # kwargs
        assert await ids(store, pid, "billing.ch") == ["pay-1"]  # name
        assert await ids(store, pid, "pay-") == ["pay-1"]  # task id
        assert await ids(store, pid, "result-77") == []
        # a rare text made mostly of common trigrams ("bul", "ulk", "lk-" are in 2,100 rows), a
        # row holding every trigram of a text but not the text, a trigram no row has
        assert await ids(store, pid, "bulk-1234") == ["bulk-1234"]
        await store.ingest([IngestItem(pid, None, [ev(10_100, "scatter-1", "received", now - 61, name="misc.scatter",
                                                      args=["qwe", "wer", "ert", "rty"])])])
        assert await ids(store, pid, "qwerty") == []
        assert await ids(store, pid, "wer") == ["scatter-1"]
        assert await ids(store, pid, "bulk-12345678") == []
        # a state change alone leaves the text as it was; the result and the
        # exception that arrive later are found
        await store.ingest([IngestItem(pid, None, [ev(10_003, "pay-1", "started", now - 59)])])
        assert await ids(store, pid, "zx81") == ["pay-1"]
        await store.ingest([IngestItem(pid, None, [
            ev(10_004, "pay-1", "failed", now - 58, exception="CardDeclined('first-refusal')")])])
        assert await ids(store, pid, "first-refusal") == ["pay-1"]
        # a later failure replaces the exception: the old text is no longer found
        await store.ingest([IngestItem(pid, None, [
            ev(10_005, "pay-1", "retried", now - 57), ev(10_006, "pay-1", "started", now - 56),
            ev(10_007, "pay-1", "failed", now - 55, exception="CardDeclined('second-refusal')")])])
        assert await ids(store, pid, "second-refusal") == ["pay-1"]
        assert await ids(store, pid, "first-refusal") == []
        await store.ingest([IngestItem(pid, None, [
            ev(10_008, "pay-1", "retried", now - 54), ev(10_009, "pay-1", "started", now - 53),
            ev(10_010, "pay-1", "succeeded", now - 52, result={"receipt": "result-77"})])])
        assert (await store.get_task(pid, "pay-1", "bare"))["state"] == "success"
        assert await ids(store, pid, "result-77") == ["pay-1"]
        # a common text (more matches than the index list takes) and a short
        # one (under three characters) give the same newest-first answer as
        # the rare path: the walk
        page = await ids(store, pid, "common-word", limit=50)
        assert page == [f"bulk-{i}" for i in range(INDEX_LIST_MAX + 99, INDEX_LIST_MAX + 49, -1)]
        assert len(await ids(store, pid, "common-word", limit=5000)) == INDEX_LIST_MAX + 100
        assert (await ids(store, pid, "X8"))[:1] == ["pay-1"]
        # a name prefix of many tasks (the walk) and of few (the name index)
        by_prefix = await store.list_tasks(pid, TaskQuery(name="app.w*"), 50)
        assert [r["task_id"] for r in by_prefix] == page
        assert [r["task_id"] for r in await store.list_tasks(pid, TaskQuery(name="billing.*"), 50)] == ["pay-1"]
        assert await ids(store, pid, "ZX8", states=("failure",)) == []
        assert await ids(store, pid, "ZX8", states=("success",)) == ["pay-1"]
        # retention deletes the forty-day-old task, and its text with it
        assert await ids(store, pid, "ancient-text") == ["old-1"]

        async def keep(tx):
            await store.set_retention(tx, pid, {"events_days": 30, "tasks_days": 30, "rollups_days": 30})

        await store.write(keep)
        deleted = await Trends(store).retention_pass(now=now)
        assert deleted["tasks"] == 1
        assert await ids(store, pid, "ancient-text") == []
        if not text_index:
            # built over the stored tasks, then dropped again: same answers
            assert await store.set_text_index(True) is True
            assert await ids(store, pid, "zx81") == ["pay-1"]
            assert await ids(store, pid, "common-word", limit=50) == page
            assert await store.set_text_index(False) is True
            assert await store.set_text_index(False) is False
            assert await ids(store, pid, "second-refusal") == ["pay-1"]
            return
        if store.dialect == "sqlite":
            # FTS5 compares its index with the rows of tasks: raises if they differ
            await store.execute("INSERT INTO tasks_text (tasks_text) VALUES ('integrity-check')")
        else:
            # the store's expression is the one the index was built on: with
            # sequential scans off, only that index can answer it
            async def explain(tx):
                await tx.execute("SET LOCAL enable_seqscan = off")
                return await tx.fetchall(f"EXPLAIN SELECT task_id FROM tasks WHERE ({SEARCH_TEXT}) ILIKE ?",
                                         ("%zx81%",))

            plan = await store.write(explain)
            assert "ix_tasks_text" in "\n".join(r[0] for r in plan), plan

    with_store(db_url, run)


def cap_the_index_list(db_url, monkeypatch) -> None:
    """A text in more than 3 tasks is common to SQLite's search (INDEX_LIST_MAX)."""
    import z4j_collector.store.sqlite as sqlite_store

    monkeypatch.setattr(sqlite_store, "INDEX_LIST_MAX", 3)
    migrate.upgrade(db_url)


async def seed_texts(store, texts: list[str], now: float) -> int:
    """Task t-i received with args [texts[i]], oldest first; the project's id."""
    pid = await store.project_id("default")
    await store.ingest([IngestItem(pid, None, [ev(i, f"t-{i}", "received", now - 100 + i, args=[text])
                                               for i, text in enumerate(texts)])])
    return pid


def test_a_rare_text_of_common_trigrams_and_a_common_one(db_url, monkeypatch):
    """With the index list capped at 3 rows: a text every trigram of which is common
    ("abc", "bc-", "c-x", "-xy", "xyz" are each in 4 or more tasks) but that one task holds
    is found (SQLite asks FTS5 for all its trigrams together and checks the text on what
    they find), and a common text walks; both answers match the walk's."""
    cap_the_index_list(db_url, monkeypatch)
    now = time.time()
    texts = ["abc-xyz"] + [f"abc-{i}" for i in range(4)] + [f"{i}-xyz" for i in range(4)] + ["zc-xq"] * 4

    async def run(store):
        pid = await seed_texts(store, texts, now)
        answers = []
        for indexed in (False, True):
            await store.set_text_index(indexed)
            answers.append((await ids(store, pid, "abc-xyz"), await ids(store, pid, "-xy"),
                            await ids(store, pid, "abc-xyq")))
        assert answers[0] == answers[1] == (["t-0"], ["t-8", "t-7", "t-6", "t-5", "t-0"], [])
        if store.dialect == "sqlite":  # the trigrams were read from the index, the common text walked
            assert (await store.search_condition("abc-xyz"))[0].startswith("rowid IN")
            assert "LIKE" in (await store.search_condition("-xy"))[0]

    with_store(db_url, run)


def test_a_rare_text_found_by_its_sparsest_trigrams_is_checked_against_the_text(db_url, monkeypatch):
    """Every trigram of "abc-xyz" is common (list capped at 3 rows), so SQLite
    samples their densities and intersects the sparsest: that finds t-0 and
    t-1, which holds every trigram but not the text ("abc-x -xyz"); the text
    itself is checked on what they find, so the answer is exactly the walk's."""
    cap_the_index_list(db_url, monkeypatch)
    now = time.time()
    texts = ["abc-xyz", "abc-x -xyz"] + [f"abc-{i}" for i in range(4)] + [f"{i}-xyz" for i in range(4)] + ["zc-xq"] * 4

    async def run(store):
        pid = await seed_texts(store, texts, now)
        answers = []
        for indexed in (False, True):
            await store.set_text_index(indexed)
            answers.append((await ids(store, pid, "abc-xyz"), await ids(store, pid, "abc-x -xyz")))
        assert answers[0] == answers[1] == (["t-0"], ["t-1"])
        if store.dialect == "sqlite":  # the sparse trigrams were read from the index, the text checked
            condition, params = await store.search_condition("abc-xyz")
            assert condition.startswith("rowid IN") and "LIKE" in condition
            assert sorted(json.loads(params[0])) == sorted(
                r[0] for r in await store.fetchall("SELECT rowid FROM tasks WHERE task_id IN ('t-0', 't-1')"))

    with_store(db_url, run)


def test_a_text_in_many_tasks_walks_probing_its_trigrams_set_and_a_rare_one_asks_them_all(db_url, monkeypatch):
    """With the index list capped at 3 rows: "abc-xyz" is in six tasks, so it
    is not rare; its two sparsest trigrams' set (those six, and "abc-x -xyz", which
    holds every trigram but not the text) is probed by the newest-first walk,
    and the text checked on what it finds. "abc-xyq" is in one task, two more
    hold all its trigrams and four its rarest ("xyq"): its trigrams together
    find the three, and the text is checked on them. A keyset page goes on
    where the first ended. Every answer is the walk's without the index (the
    index keeps no positions: no phrase is ever asked)."""
    cap_the_index_list(db_url, monkeypatch)
    now = time.time()
    texts = (["abc-xyz", "abc-x -xyz"] * 3 + ["abc-xyz"] * 3 + ["abc-xyq"] + ["abc-xy -xyq"] * 2 + ["q-xyq"] * 4
             + [f"abc-{i}" for i in range(4)] + [f"{i}-xyz" for i in range(4)] + ["zc-xq"] * 4)
    holding = [f"t-{i}" for i, text in reversed(list(enumerate(texts))) if text == "abc-xyz"]

    async def run(store):
        pid = await seed_texts(store, texts, now)
        answers = []
        for indexed in (False, True):
            await store.set_text_index(indexed)
            first = await store.list_tasks(pid, TaskQuery(search="abc-xyz"), 4)
            last = first[-1]
            rest = await store.list_tasks(pid, TaskQuery(search="abc-xyz"), 4,
                                          (last["created_at"], last["engine"], last["task_id"]))
            answers.append(([r["task_id"] for r in first + rest], await ids(store, pid, "abc-xyq")))
        assert answers[0] == answers[1] == (holding, ["t-9"])
        if store.dialect == "sqlite":
            condition, params = await store.search_condition("abc-xyz")
            assert condition.startswith("rowid IN (SELECT rowid FROM tasks_text WHERE tasks_text MATCH ?) AND (")
            # the two sparsest trigrams, intersected; the text checked on their rows
            pair = params[0].split(" AND ")
            assert "LIKE" in condition and len(pair) <= 2
            assert set(pair) <= {'"abc"', '"bc-"', '"c-x"', '"-xy"', '"xyz"'}
            condition, params = await store.search_condition("abc-xyq")
            assert condition.startswith("rowid IN (SELECT value FROM json_each(?)) AND (") and "LIKE" in condition
            assert sorted(json.loads(params[0])) == [r[0] for r in await store.fetchall(
                "SELECT rowid FROM tasks WHERE task_id IN ('t-9', 't-10', 't-11') ORDER BY rowid")]

    with_store(db_url, run)


def test_sqlite_index_keeps_no_positions_and_one_built_with_them_answers_the_same(tmp_path, monkeypatch):
    """SQLite only (PostgreSQL's index is pg_trgm): ``z4j db text-index on``
    builds the FTS5 table with ``detail=none`` (rowids only), and one built
    with positions by an older z4j answers every route the same (rare, common,
    a rare text of common trigrams), with the list capped at 3 rows."""
    import z4j_collector.store.textindex as textindex

    cap_the_index_list(f"sqlite:///{tmp_path}/a.db", monkeypatch)
    now = time.time()
    texts = (["abc-xyz"] + [f"abc-{i}" for i in range(4)] + [f"{i}-xyz" for i in range(4)] + ["zc-xq"] * 4
             + ["abc-xy -xyq"] * 2 + ["abc-xyq"] + ["q-xyq"] * 4)
    queries = ("abc-xyz", "-xy", "abc-xyq", "zc-xq", "nowhere")

    async def answers(store):
        pid = await seed_texts(store, texts, now)
        walked = [await ids(store, pid, q) for q in queries]
        await store.set_text_index(True)
        schema = (await store.fetchall("SELECT sql FROM sqlite_master WHERE name = 'tasks_text'"))[0][0]
        return walked, [await ids(store, pid, q) for q in queries], schema

    walked, indexed, schema = with_store(f"sqlite:///{tmp_path}/a.db", answers)
    assert "detail=none" in schema and indexed == walked
    assert walked[0] == ["t-0"] and walked[2] == ["t-15"] and walked[4] == []
    old = tuple(sql.replace(", detail=none", "") for sql in textindex._SQLITE_CREATE)
    assert old != textindex._SQLITE_CREATE
    monkeypatch.setattr(textindex, "_SQLITE_CREATE", old)
    migrate.upgrade(f"sqlite:///{tmp_path}/b.db")
    walked_b, indexed_b, schema_b = with_store(f"sqlite:///{tmp_path}/b.db", answers)
    assert "detail" not in schema_b and indexed_b == walked_b == walked


def test_cli_switches_the_text_index(db_url):
    migrate.upgrade(db_url)

    def z4j(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*Z4J, "db", "text-index", *args, "--db", db_url],
                              capture_output=True, text=True, timeout=120)

    assert z4j().stdout.startswith("text index off: ")
    on = z4j("on")
    assert on.returncode == 0 and on.stdout.startswith("text index on: "), on
    assert "(it already was)" in z4j("on").stdout
    assert z4j("status").stdout.startswith("text index on: ")
    bad = z4j("sideways")
    assert bad.returncode != 0 and bad.stderr.strip().splitlines() == [
        "z4j: text-index takes on, off or status, got 'sideways'"], bad
    assert z4j("status").stdout.startswith("text index on: ")  # the refusal changed nothing
    assert z4j("off").stdout.startswith("text index off: ")


pytestmark = pytest.mark.timeout(120)
