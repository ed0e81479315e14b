"""The task list at scale: ten million tasks (and their events) in PostgreSQL
and in SQLite, every filter of the task list (PRODUCT.md §3: state, name,
queue, worker, engine, time range, free text, and "what failed last Friday"),
first page and a deep keyset page, through a real collector process.

    python benchmarks/scale.py                          # 10,000,000 tasks, both databases
    python benchmarks/scale.py --tasks 1000000 --db sqlite

The history is written straight into the tables by SQL (the database makes
the rows: ingest's own speed is benchmarks/ingest.py's business), with the
task list's indexes built after the load, as a restore would, then the
free-text index switched on as ``z4j db text-index on`` does, then ANALYZE.
It is the schema of the migrations, unchanged. At the end, with the text
index switched off again, one rare text is searched once more: what free
text costs without it. Twenty-eight days of tasks, newest
last; per task two events (received, then its end) in task_events.

The mix: six engines (celery 70 %, rq 12 %, dramatiq 8 %, huey 5 %, arq 4 %,
taskiq 1 %); states success 87 %, failure 10 %, revoked 2 %, lost 1 % (the
last hour also has retry, started and received tasks); 200 task names, 12 queues, 40
workers, each also with one rare value (a few hundred tasks among millions);
args, kwargs (an order id, a customer, an e-mail), a result or an exception.

Each filter is asked ``--samples`` times (the values vary where the filter
has several), for the first page (50 tasks, as the console asks) and for a
page deep in history (a keyset cursor twelve days back). The figure is the
p95 of the wall time of the HTTP request, client included. Goal (issue 9):
p95 < 50 ms for every one.

What the OS holds in its page cache matters to SQLite's free text (a
customer's hundred tasks are a hundred pages across the table, and each
trigram's list is read from the file): a freshly written database is
mostly not in it. ``--warm-cache`` measures SQLite twice, as loaded and
then after reading the file once, as a host with the memory for its
database holds it.
"""

from __future__ import annotations

import argparse
import base64
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

import ingest  # noqa: E402

from tests.support.collector import Collector, mint_tokens, with_store  # noqa: E402
from tests.support.servers import PostgresServer  # noqa: E402
from z4j_collector.store import migrate  # noqa: E402

DAY = 86_400.0
SPAN_DAYS = 28
"""Inside the default retention (30 days): nothing is deleted while it runs."""
CHUNK = 500_000
PAGE = 50
ENGINES = [(700, "celery"), (820, "rq"), (900, "dramatiq"), (950, "huey"), (990, "arq"), (1000, "taskiq")]
STATES = [(870, "success"), (970, "failure"), (990, "revoked"), (1000, "lost")]
OPEN_STATES = [(850, "success"), (930, "failure"), (950, "retry"), (970, "started"), (985, "received"),
               (995, "revoked"), (1000, "lost")]
"""Tasks of the last hour may still be open; older ones have ended (the
reconciler would otherwise spend the run on them)."""
MODULES = ["billing", "emails", "reports", "search", "media", "sync", "auth", "orders", "ml", "etl"]
QUEUES = ["default", "high", "low", "emails", "reports", "billing", "media", "sync", "etl", "ml", "search",
          "webhooks"]
RARE = {"name": "billing.refund_disputed", "queue": "audit", "worker": "worker-99@host-rare"}
"""One rare value per column: x % 100,000 == 7 (name), 50,000 == 3 (queue),
200,000 == 11 (worker)."""


class Dialect:
    def __init__(self, kind: str) -> None:
        self.kind = kind

    def hexpad(self, expr: str, width: int) -> str:
        if self.kind == "postgres":
            return f"lpad(to_hex({expr}), {width}, '0')"
        return f"printf('%0{width}x', {expr})"

    def real(self, expr: str) -> str:
        return f"CAST({expr} AS {'double precision' if self.kind == 'postgres' else 'REAL'})"

    def series(self, lo: int, hi: int) -> tuple[str, str]:
        """(a WITH prefix, a FROM clause) giving x = lo … hi."""
        if self.kind == "postgres":
            return "", f"generate_series({lo}::bigint, {hi}::bigint) AS g(x)"
        return f"WITH RECURSIVE g(x) AS (SELECT {lo} UNION ALL SELECT x + 1 FROM g WHERE x < {hi}) ", "g"


def pick(expr: str, table: list[tuple[int, str]]) -> str:
    """CASE over cumulative thresholds of ``expr`` in 0…999."""
    arms = " ".join(f"WHEN {expr} < {limit} THEN '{value}'" for limit, value in table[:-1])
    return f"CASE {arms} ELSE '{table[-1][1]}' END"


def one_of(expr: str, values: list[str]) -> str:
    arms = " ".join(f"WHEN {i} THEN '{v}'" for i, v in enumerate(values[:-1]))
    return f"CASE {expr} {arms} ELSE '{values[-1]}' END"


def task_sql(d: Dialect, n: int, start: float, lo: int, hi: int) -> str:
    """INSERT … SELECT of tasks lo…hi (of n), the x-th created at start + x/n of the span."""
    h = "((x * 2654435761) % 4294967296)"
    created = f"({start} + {d.real('x')} * {SPAN_DAYS * DAY / n})"
    recent = n - n // (SPAN_DAYS * 24)
    state = (f"CASE WHEN x > {recent} THEN {pick(f'(({h} / 1024) % 1000)', OPEN_STATES)} "
             f"ELSE {pick(f'(({h} / 1024) % 1000)', STATES)} END")
    rank = f"CASE {state} WHEN 'lost' THEN 1 WHEN 'success' THEN 2 WHEN 'failure' THEN 2 WHEN 'revoked' THEN 2 ELSE 0 END"
    runtime = f"({d.real('x % 5000')} / 1000.0)"
    name = (f"CASE WHEN x % 100000 = 7 THEN '{RARE['name']}' ELSE "
            f"{one_of(f'({h} / 1048576) % 10', MODULES)} || '.job_' || (({h} / 16) % 20) END")
    queue = f"CASE WHEN x % 50000 = 3 THEN '{RARE['queue']}' ELSE {one_of(f'(({h} / 64) % 12)', QUEUES)} END"
    worker = (f"CASE WHEN x % 200000 = 11 THEN '{RARE['worker']}' "
              f"ELSE 'worker-' || ((x * 7919) % 40) || '@host-' || ((x * 7919) % 40 / 4) END")
    ms = f"CAST({created} * 1000 AS BIGINT)"
    event1 = f"{d.hexpad(ms, 12)} || {d.hexpad('x', 20)}"
    event2 = f"{d.hexpad(f'{ms} + 1', 12)} || {d.hexpad(f'x + {n + 1}', 20)}"
    failed = f"({state}) = 'failure'"
    columns = {
        "project_id": "1",
        "engine": pick(f"({h} % 1000)", ENGINES),
        "task_id": f"{d.hexpad(h, 8)} || '-' || x",
        "name": name,
        "state": state,
        "state_rank": rank,
        "state_ts": f"{created} + {runtime}",
        "queue": queue,
        "worker": worker,
        "args": "'[\"order-' || x || '\", ' || (x % 997) || ']'",
        "kwargs": "'{\"customer\": \"cust-' || (x % 100003) || '\", \"email\": \"user' || (x % 5003) || '@example.com\"}'",
        "result": f"CASE WHEN ({state}) = 'success' THEN '{{\"ok\": true, \"rows\": ' || (x % 1000) || '}}' END",
        "exception": (f"CASE WHEN {failed} AND x % 20011 = 5 THEN 'CardDeclined(''insufficient funds'')' "
                      f"WHEN {failed} THEN 'TimeoutError(''upstream 503 from payments-' || (x % 50) || ''')' END"),
        "traceback": f"CASE WHEN {failed} THEN 'Traceback (most recent call last):\n  File \"app/tasks.py\", line 42, in run\nTimeoutError' END",
        "runtime": runtime,
        "retries": "0",
        "redacted": "false" if d.kind == "postgres" else "0",
        "created_at": created,
        "received_at": created,
        "started_at": created,
        "finished_at": f"{created} + {runtime}",
        "updated_at": f"{created} + {runtime}",
        "event_ids": f"{event1} || ',' || {event2}",
    }
    with_, from_ = d.series(lo, hi)
    return (f"{with_}INSERT INTO tasks ({', '.join(columns)}) "
            f"SELECT {', '.join(columns.values())} FROM {from_}")


def event_sql(d: Dialect, n: int, start: float, lo: int, hi: int) -> str:
    """Each task's two events, as task_sql names them in event_ids."""
    created = f"({start} + {d.real('x')} * {SPAN_DAYS * DAY / n})"
    ms = f"CAST({created} * 1000 AS BIGINT)"
    h = "((x * 2654435761) % 4294967296)"
    engine = pick(f"({h} % 1000)", ENGINES)
    task_id = f"{d.hexpad(h, 8)} || '-' || x"
    with_, from_ = d.series(lo, hi)
    out = []
    for offset, kind, id_x, ts in (("0", "received", "x", created), ("1", "succeeded", f"x + {n + 1}",
                                                                     f"{created} + 0.001")):
        event_id = f"{d.hexpad(f'{ms} + {offset}', 12)} || {d.hexpad(id_x, 20)}"
        data = (f"'{{\"id\": \"' || {event_id} || '\", \"task_id\": \"' || {task_id} || '\", \"kind\": \"{kind}\", "
                f"\"engine\": \"' || {engine} || '\", \"ts\": ' || {ts} || '}}'")
        out.append(f"{with_}INSERT INTO task_events (id, project_id, engine, task_id, kind, ts, ingested_at, data) "
                   f"SELECT {event_id}, 1, {engine}, {task_id}, '{kind}', {ts}, {ts}, {data} FROM {from_}")
    return "; ".join(out)


def seed_postgres(db_url: str, n: int, start: float) -> None:
    import psycopg

    d = Dialect("postgres")
    with psycopg.connect(db_url, autocommit=True) as conn:
        indexes = [r for r in conn.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'tasks' AND indexname <> 'pk_tasks'")]
        for name, _ in indexes:
            conn.execute(f"DROP INDEX {name}")
        for lo in range(1, n + 1, CHUNK):
            hi = min(lo + CHUNK - 1, n)
            conn.execute(task_sql(d, n, start, lo, hi))
            for statement in event_sql(d, n, start, lo, hi).split("; "):
                conn.execute(statement)
            print(f"  postgres: {hi:,} tasks", file=sys.stderr, flush=True)
        conn.execute("SET maintenance_work_mem = '1GB'")
        for name, definition in indexes:
            t0 = time.perf_counter()
            conn.execute(definition)
            print(f"  postgres: {name} built in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
        conn.execute("VACUUM ANALYZE tasks")
        conn.execute("ANALYZE task_events")


def seed_sqlite(path: Path, n: int, start: float) -> None:
    import sqlite3

    d = Dialect("sqlite")
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute("PRAGMA cache_size=-1000000")
    rebuilt = [r for r in conn.execute(
        "SELECT type, name, sql FROM sqlite_master WHERE tbl_name = 'tasks' AND type IN ('index', 'trigger') "
        "AND sql IS NOT NULL")]
    for kind, name, _ in rebuilt:
        conn.execute(f"DROP {kind.upper()} {name}")
    for lo in range(1, n + 1, CHUNK):
        hi = min(lo + CHUNK - 1, n)
        conn.execute("BEGIN")
        conn.execute(task_sql(d, n, start, lo, hi))
        for statement in event_sql(d, n, start, lo, hi).split("; "):
            conn.execute(statement)
        conn.execute("COMMIT")
        print(f"  sqlite: {hi:,} tasks", file=sys.stderr, flush=True)
    for kind, name, sql in rebuilt:
        t0 = time.perf_counter()
        conn.execute(sql)
        print(f"  sqlite: {name} built in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    conn.execute("ANALYZE")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


def last_friday(now: float) -> tuple[float, float]:
    """Last week's Friday, 00:00 to 24:00 UTC (at least three days back)."""
    day = int(now // DAY)
    # 1970-01-01 was a Thursday: day % 7 == 1 is a Friday
    back = (day - 1) % 7 or 7
    if back < 3:
        back += 7
    friday = (day - back) * DAY
    return friday, friday + DAY


def cases(now: float, start: float, n: int) -> list[tuple[str, list[dict[str, str]]]]:
    """(label, parameter sets to cycle through) for every filter."""
    friday, saturday = last_friday(now)
    ten = start + (SPAN_DAYS - 10) * DAY
    x = random.Random(7)
    return [
        ("no filter", [{}]),
        ("state: failure", [{"state": "failure"}]),
        ("state: lost (1 %)", [{"state": "lost"}]),
        ("state: not success", [{"not_state": "success"}]),
        ("name: one of 200", [{"name": f"{m}.job_{j}"} for m in MODULES[:4] for j in (1, 7)]),
        ("name: rare (100 tasks)", [{"name": RARE["name"]}]),
        ("name: prefix of 20 names", [{"name": f"{m}.*"} for m in MODULES]),
        ("queue: one of 12", [{"queue": q} for q in QUEUES]),
        ("queue: rare (200 tasks)", [{"queue": RARE["queue"]}]),
        ("worker: one of 40", [{"worker": f"worker-{w}@host-{w // 4}"} for w in range(0, 40, 3)]),
        ("worker: rare (50 tasks)", [{"worker": RARE["worker"]}]),
        ("engine: celery (70 %)", [{"engine": "celery"}]),
        ("engine: taskiq (1 %)", [{"engine": "taskiq"}]),
        ("time: last hour", [{"since": "1h"}]),
        ("time: one day, 10 days ago", [{"since": str(ten), "until": str(ten + DAY)}]),
        ("failed last Friday", [{"state": "failure", "since": str(friday), "until": str(saturday)}]),
        ("text: an order id", [{"search": f"order-{x.randrange(1, n)}"} for _ in range(8)]),
        ("text: a customer (~100)", [{"search": f"cust-{x.randrange(10000, 100003)}\""} for _ in range(8)]),
        ("text: a rare exception", [{"search": "insufficient funds"}]),
        ("text: common (every task)", [{"search": "example.com"}]),
        ("text: mid (2 % of failures)", [{"search": "payments-7'"}]),
        ("state + queue + rare text", [{"state": "failure", "queue": "billing", "search": "insufficient funds"}]),
        ("state + queue + mid text", [{"state": "failure", "queue": "billing", "search": "payments-7'"}]),
        ("engine + state", [{"engine": "rq", "state": "failure"}]),
    ]


def cursor(created_at: float) -> str:
    """A keyset position in history (the API's own cursor form)."""
    raw = json.dumps([created_at, "~", ""]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def measure(client: httpx.Client, params: list[dict[str, str]], samples: int, deep: str | None) -> tuple[float, int]:
    times, rows = [], 0
    for i in range(samples + 1):
        query = {**params[i % len(params)], "limit": str(PAGE)}
        if deep:
            query["cursor"] = deep
        t0 = time.perf_counter()
        r = client.get("/api/v1/projects/default/tasks", params=query)
        elapsed = time.perf_counter() - t0
        r.raise_for_status()
        if i:  # the first is not counted: it warms the cache, as an open console has
            times.append(elapsed)
            rows = max(rows, len(r.json()["tasks"]))
    times.sort()
    return times[max(0, round(0.95 * len(times)) - 1)] * 1000, rows


def text_index(db_url: str, on: bool) -> None:
    async def switch(store) -> None:
        await store.set_text_index(on)
        if on and store.dialect == "postgresql":
            await store.fetchall("ANALYZE tasks")  # statistics of the index's expression
        elif on:
            # the index went in as one transaction: fold its WAL back now, not
            # in the collector's first commits while the clock runs
            await store.fetchall("PRAGMA wal_checkpoint(TRUNCATE)")

    with_store(db_url, switch)


def measure_all(client: httpx.Client, kind: str, now: float, start: float, n: int, samples: int) -> list[dict]:
    """Every filter, first page and deep page: a line each, and the rows."""
    deep = cursor(now - 12 * DAY)
    out = []
    print(f"{kind}: {'filter':32} {'first page p95':>15} {'deep page p95':>15}  rows", flush=True)
    for label, params in cases(now, start, n):
        first, rows = measure(client, params, samples, None)
        deep_ms, deep_rows = measure(client, params, samples, deep)
        flag = "" if max(first, deep_ms) < 50 else "   over 50 ms"
        print(f"{kind}: {label:32} {first:12.1f} ms {deep_ms:12.1f} ms  {rows}/{deep_rows}{flag}", flush=True)
        out.append({"db": kind, "filter": label, "first_p95_ms": round(first, 1),
                    "deep_p95_ms": round(deep_ms, 1), "rows": rows, "deep_rows": deep_rows})
    return out


def read_through(path: Path) -> float:
    """Read a file once, start to end (into the OS page cache, as a host
    with the memory for it holds a database it serves); the seconds it took."""
    t0 = time.perf_counter()
    with path.open("rb", buffering=0) as f:
        while f.read(8 << 20):
            pass
    return time.perf_counter() - t0


def run(kind: str, db_url: str, workdir: Path, n: int, samples: int, seed, warm: Path | None = None) -> list[dict]:
    migrate.upgrade(db_url)
    now = time.time()
    start = now - SPAN_DAYS * DAY
    t0 = time.perf_counter()
    seed(n, start)
    print(f"{kind}: {n:,} tasks and {2 * n:,} events loaded in {time.perf_counter() - t0:.0f} s", flush=True)
    t0 = time.perf_counter()
    text_index(db_url, True)
    print(f"{kind}: text index built in {time.perf_counter() - t0:.0f} s", flush=True)
    collector = Collector(db_url, workdir).start(timeout=120)
    out = []
    try:
        token = mint_tokens(collector, "viewer")["viewer"]
        with httpx.Client(base_url=collector.url, headers={"Authorization": f"Bearer {token}"}, timeout=60) as client:
            out += measure_all(client, kind, now, start, n, samples)
            if warm is not None:
                size = warm.stat().st_size
                print(f"{kind}: {warm.name} ({size / 1e9:.1f} GB) read once into the OS page cache in "
                      f"{read_through(warm):.0f} s", flush=True)
                out += measure_all(client, f"{kind} (in the OS cache)", now, start, n, samples)
            text_index(db_url, False)
            # the collector notices within textindex.RECHECK_S
            time.sleep(32)
            rare = {"search": "insufficient funds"}
            t0 = time.perf_counter()
            # a walk of the whole table: a minute or more on a slow machine
            client.get("/api/v1/projects/default/tasks", params={**rare, "limit": str(PAGE)},
                       timeout=600).raise_for_status()
            print(f"{kind}: without the text index, {rare['search']!r} once: "
                  f"{(time.perf_counter() - t0) * 1000:.0f} ms", flush=True)
    finally:
        collector.stop()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=10_000_000)
    parser.add_argument("--samples", type=int, default=40)
    parser.add_argument("--db", choices=("sqlite", "postgres", "both"), default="both")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--warm-cache", action="store_true",
                        help="SQLite: after the pass as loaded, read the database file once and measure again")
    args = parser.parse_args()
    results = []
    for kind in ("sqlite", "postgres") if args.db == "both" else (args.db,):
        with tempfile.TemporaryDirectory(prefix="z4j-scale-") as tmp:
            workdir = Path(tmp)
            if kind == "sqlite":
                path = workdir / "z4j.db"
                results += run(kind, f"sqlite:///{path}", workdir, args.tasks, args.samples,
                               lambda n, start: seed_sqlite(path, n, start), path if args.warm_cache else None)
            else:
                settings = (*ingest.PG_SETTINGS, "maintenance_work_mem = 1GB")
                with PostgresServer(durable=True, settings=settings) as pg:
                    url = pg.create_database("bench")
                    results += run(kind, url, workdir, args.tasks, args.samples,
                                   lambda n, start: seed_postgres(url, n, start))
    worst = max(max(r["first_p95_ms"], r["deep_p95_ms"]) for r in results)
    print(f"worst p95: {worst:.1f} ms (goal < 50 ms)")
    if args.json:
        print(json.dumps(results))


if __name__ == "__main__":
    main()
