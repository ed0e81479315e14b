"""Must show: the tamper-evident audit log (issue 3, item 7).

A real collector writes the log: a superuser made with `z4j admin
create-user` logs in and changes things through the API. Then, as an
attacker with access to the database but not to the audit key, each test
tampers with the rows (SQL through the store) and `z4j audit verify` must
exit 1 naming the row and the kind, and exit 0 once the log is restored.
Also: retention anchored on a checkpoint, concurrent writers (two collectors
on one PostgreSQL), checkpoints on a timer that an auditor checks with the
public key alone, and what every row says."""

from __future__ import annotations

import base64
import json
import os
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from tests.support.collector import Collector, module_collector, wait_until, with_store, z4j

PASSWORD = "correct horse battery staple"
DEFAULT = 1  # the default project's id: its chain holds the project's changes
COLUMNS = ("id", "project_id", "seq", "ts", "actor", "actor_user_id", "source", "action", "target", "outcome",
           "detail", "prev_hash", "hash")
DBS = [d.strip() for d in os.environ.get("Z4J_TEST_DBS", "sqlite,postgres").split(",") if d.strip()]


# ------------------------------------------------------------------ helpers


def superuser(collector: Collector, email: str = "root@example.com") -> httpx.Client:
    """A superuser made from the server's shell, logged in through the API."""
    z4j("admin", "create-user", "--email", email, "--password-stdin", "--superuser", "--db", collector.db_url,
        input=PASSWORD + "\n")
    r = httpx.post(f"{collector.url}/api/v1/auth/login", json={"email": email, "password": PASSWORD}, timeout=30)
    assert r.status_code == 200, r.text
    return collector.api(r.json()["token"])


def make_changes(api: httpx.Client, tag: str = "") -> None:
    """Audited changes of every kind the API offers a project's admin."""
    base = "/api/v1/projects/default"
    agents = [api.post(f"{base}/agents", json={"name": f"worker{tag}-{i}"}).raise_for_status().json()
              for i in range(3)]
    tokens = [api.post(f"{base}/tokens", json={"name": f"ci{tag}-{i}", "role": "viewer"}).raise_for_status().json()
              for i in range(3)]
    api.post(f"{base}/invitations", json={"email": f"ann{tag}@example.com", "role": "operator"}).raise_for_status()
    api.post(f"{base}/invitations", json={"email": f"bob{tag}@example.com", "role": "viewer"}).raise_for_status()
    api.delete(f"{base}/tokens/{tokens[0]['id']}").raise_for_status()
    agent_id = agents[1].get("id", agents[1].get("agent_id"))
    api.post(f"{base}/agents/{agent_id}/rotate").raise_for_status()
    refused = api.post(f"{base}/commands", json={"action": "retry", "args": {"task_id": f"t{tag}"}})
    assert refused.status_code == 409, refused.text  # no agent connected: refused, and audited


def sql(db_url: str, *statements: tuple[str, tuple]) -> list:
    """Run statements in one transaction, as an attacker with database access would."""

    async def fn(store):
        async def tx_fn(tx):
            out = []
            for statement, params in statements:
                if statement.lstrip().upper().startswith("SELECT"):
                    out.append(await tx.fetchall(statement, params))
                else:
                    out.append(await tx.execute(statement, params))
            return out

        return await store.write(tx_fn)

    return with_store(db_url, fn)


def rows_of(db_url: str, project_id: int = DEFAULT) -> list[dict]:
    return with_store(db_url, lambda store: store.audit_rows(project_id))


def insert_row(row: dict) -> tuple[str, tuple]:
    cols = [c for c in COLUMNS if c in row]
    return (f"INSERT INTO audit_log ({', '.join(cols)}) VALUES ({', '.join('?' for _ in cols)})",
            tuple(row[c] for c in cols))


def verify(db_url: str, *args: str) -> tuple[int, list[str], dict | None]:
    """`z4j audit verify`: exit code, its text lines, and the --json report when asked."""
    proc = z4j("audit", "verify", "--db", db_url, *args, check=False)
    if "--json" in args:
        return proc.returncode, proc.stderr.strip().splitlines(), json.loads(proc.stdout) if proc.stdout else None
    return proc.returncode, proc.stdout.strip().splitlines() + proc.stderr.strip().splitlines(), None


def problems(report: dict, project: str = "default") -> list[tuple[int, int | None, str]]:
    chain = next(c for c in report["chains"] if c["project"] == project)
    return [(p["seq"], p["row_id"], p["kind"]) for p in chain["problems"]]


class Log:
    """A log written by a real collector, and a copy of it to restore after each tampering."""

    def __init__(self, collector: Collector, api: httpx.Client, checkpoint_file: Path) -> None:
        self.collector, self.api, self.checkpoint_file = collector, api, checkpoint_file
        self.db_url = collector.db_url
        self.saved = sql(self.db_url, (f"SELECT {', '.join(COLUMNS)} FROM audit_log", ()),
                         ("SELECT project_id, seq, hash FROM audit_heads", ()),
                         ("SELECT project_id, seq, hash, ts, key_id, signature FROM audit_checkpoints", ()))
        self.rows = rows_of(self.db_url)
        self.by_seq = {r["seq"]: r for r in self.rows}

    def restore(self) -> None:
        log, heads, cps = self.saved
        sql(self.db_url, ("DELETE FROM audit_log", ()), ("DELETE FROM audit_heads", ()),
            ("DELETE FROM audit_checkpoints", ()),
            *[insert_row(dict(zip(COLUMNS, r))) for r in log],
            *[("INSERT INTO audit_heads (project_id, seq, hash) VALUES (?, ?, ?)", tuple(h)) for h in heads],
            *[("INSERT INTO audit_checkpoints (project_id, seq, hash, ts, key_id, signature) "
               "VALUES (?, ?, ?, ?, ?, ?)", tuple(c)) for c in cps])


@pytest.fixture(scope="module", params=DBS, ids=DBS)
def log(request, tmp_path_factory):
    """One real log per database, with a checkpoint file exported while it was untouched."""
    collector = module_collector(request, tmp_path_factory, "audit")
    api = superuser(collector)
    make_changes(api)
    checkpoint_file = tmp_path_factory.mktemp("audit-export") / "checkpoints.json"
    z4j("audit", "checkpoint", "export", "--out", str(checkpoint_file), "--db", collector.db_url)
    made = Log(collector, api, checkpoint_file)
    assert len(made.rows) >= 10, "the default project's chain is long enough to tamper in its middle"
    return made


def problems_in_process(db_url: str) -> list[str]:
    """What `z4j audit verify` finds, found in this process (the audit service
    the command runs, over every chain; the command costs seconds): its problems."""
    from z4j_collector.keys import AuditKeys
    from z4j_collector.services.audit import Audit

    async def fn(store) -> list[str]:
        audit = Audit(store, AuditKeys.load())
        return [f"chain {chain}: {p.kind}: {p.message}"
                for chain in await store.audit_chains() for p in (await audit.verify(chain)).problems]

    return with_store(db_url, fn)


@pytest.fixture
def fresh(log):
    """The log as the collector wrote it (verified after each restore); restored after the test tampered with it."""
    yield log
    log.restore()
    assert problems_in_process(log.db_url) == [], "restoring the log failed"


# ------------------------------------------------------------------ the untouched log


def test_untouched_log_verifies_with_and_without_the_checkpoint_file(fresh):
    code, lines, _ = verify(fresh.db_url)
    assert code == 0, lines
    assert any(line.startswith("ok   default: ") for line in lines), lines
    assert any(line.startswith("ok   (instance): ") for line in lines), lines
    code, _, report = verify(fresh.db_url, "--checkpoint", str(fresh.checkpoint_file), "--json")
    assert code == 0 and report["ok"] is True
    default = next(c for c in report["chains"] if c["project"] == "default")
    assert default["rows"] == len(fresh.rows) and default["first_seq"] == 1
    assert default["last_seq"] == len(fresh.rows) and default["checkpoints_checked"] >= 2  # stored + file


def test_every_row_says_who_from_where_what_and_how_it_went(fresh):
    instance = rows_of(fresh.db_url, 0)
    for row in fresh.rows + instance:
        assert row["actor"] and row["source"] and row["target"] and row["outcome"] and row["ts"], row
    actions = {r["action"] for r in fresh.rows}
    assert {"agent.create", "agent.rotate", "token.create", "token.revoke", "invitation.create",
            "command.retry"} <= actions
    assert {"user.create"} <= {r["action"] for r in instance}
    api_rows = [r for r in fresh.rows if r["action"] != "command.retry.result"]
    assert all(r["actor"] == "root@example.com" and r["source"] == "127.0.0.1" for r in api_rows), api_rows
    refused = [r for r in fresh.rows if r["action"] == "command.retry"]
    assert len(refused) == 1 and refused[0]["outcome"] == "refused" and refused[0]["target"] == "task:t"
    assert "no connected agent" in json.loads(refused[0]["detail"])["reason"]


def test_audit_api_filters_and_pages(fresh):
    api, base = fresh.api, "/api/v1/projects/default/audit"

    def entries(**params) -> list[dict]:
        r = api.get(base, params=params)
        assert r.status_code == 200, r.text
        return r.json()["entries"]

    everything = entries(limit=1000)
    assert [e["seq"] for e in everything] == sorted((r["seq"] for r in fresh.rows), reverse=True)
    assert {e["action"] for e in entries(action="agent.*")} == {"agent.create", "agent.rotate"}
    assert [e["action"] for e in entries(action="token.revoke")] == ["token.revoke"]
    assert entries(action="token.") == []  # no "*": an exact action
    assert {e["seq"] for e in entries(outcome="refused")} == {r["seq"] for r in fresh.rows if r["outcome"] == "refused"}
    assert len(entries(actor="root@example.com")) == len([r for r in fresh.rows if r["actor"] == "root@example.com"])
    assert entries(actor="nobody@example.com") == []
    middle = fresh.by_seq[5]["ts"]
    assert {e["seq"] for e in entries(since=repr(middle))} == {r["seq"] for r in fresh.rows if r["ts"] >= middle}
    assert {e["seq"] for e in entries(until=repr(middle))} == {r["seq"] for r in fresh.rows if r["ts"] < middle}
    seen, before = [], None
    while True:
        page = api.get(base, params={"limit": 3, **({"before": before} if before else {})}).json()
        seen += [e["seq"] for e in page["entries"]]
        before = page["next_before"]
        if before is None:
            break
    assert seen == [e["seq"] for e in everything]
    bad = api.get(base, params={"since": "yesterday-ish"})
    assert bad.status_code == 400 and bad.json()["code"] == "bad_time"


# ------------------------------------------------------------------ tampering, one kind per test


def test_changed_row_is_named(fresh):
    row = fresh.by_seq[5]
    sql(fresh.db_url, ("UPDATE audit_log SET target = ? WHERE project_id = ? AND seq = ?", ("user:mallory", DEFAULT, 5)))
    code, lines, _ = verify(fresh.db_url)
    assert code == 1
    assert [line for line in lines if line.startswith("FAIL")] == [
        f"FAIL default: changed: row seq 5 (id {row['id']}) does not match its MAC: changed after it was written"]
    code, _, report = verify(fresh.db_url, "--json")
    assert code == 1 and report["ok"] is False
    assert problems(report) == [(5, row["id"], "changed")]


def test_deleted_row_is_named(fresh):
    after = fresh.by_seq[6]
    sql(fresh.db_url, ("DELETE FROM audit_log WHERE project_id = ? AND seq = ?", (DEFAULT, 5)))
    code, lines, _ = verify(fresh.db_url)
    assert code == 1
    assert f"FAIL default: deleted: seq 5 missing before row seq 6 (id {after['id']}): rows deleted" in lines, lines
    _, _, report = verify(fresh.db_url, "--json")
    assert problems(report) == [(5, after["id"], "deleted")]


def forged_after(row: dict, seq: int) -> dict:
    """A row an attacker writes: plausible content, but no key to seal it."""
    return {**{k: v for k, v in row.items() if k != "id"}, "seq": seq, "action": "member.add",
            "target": "user:mallory@example.com", "prev_hash": row["hash"], "hash": secrets.token_hex(32)}


def new_id(db_url: str, seq: int) -> int:
    return sql(db_url, ("SELECT id FROM audit_log WHERE project_id = ? AND seq = ?", (DEFAULT, seq)))[0][0][0]


@pytest.mark.parametrize("head", ["head untouched", "head moved"])
def test_row_inserted_at_the_tail_is_named(fresh, head):
    last = fresh.rows[-1]
    n = last["seq"] + 1
    row = forged_after(last, n)
    statements = [insert_row(row)]
    if head == "head moved":
        statements.append(("UPDATE audit_heads SET seq = ?, hash = ? WHERE project_id = ?", (n, row["hash"], DEFAULT)))
    sql(fresh.db_url, *statements)
    forged_id = new_id(fresh.db_url, n)
    code, lines, report = verify(fresh.db_url, "--json")
    assert code == 1
    if head == "head untouched":
        assert problems(report) == [(n, forged_id, "inserted")]
    else:  # the head is not sealed: moved along, it vouches for the forged row, which still fails its MAC
        assert problems(report) == [(n, forged_id, "changed")]
        chain = next(c for c in report["chains"] if c["project"] == "default")
        assert "or forged and appended" in chain["problems"][0]["message"]
    code, lines, _ = verify(fresh.db_url)
    assert code == 1 and any(line.startswith("FAIL default: ") and f"row seq {n} (id {forged_id})" in line
                             for line in lines), lines


def test_row_inserted_in_the_middle_with_later_rows_renumbered(fresh):
    n = len(fresh.rows)
    sql(fresh.db_url,
        ("UPDATE audit_log SET seq = seq + 1000 WHERE project_id = ? AND seq >= 5", (DEFAULT,)),
        ("UPDATE audit_log SET seq = seq - 999 WHERE project_id = ? AND seq >= 1000", (DEFAULT,)),
        insert_row(forged_after(fresh.by_seq[4], 5)),
        ("UPDATE audit_heads SET seq = ? WHERE project_id = ?", (n + 1, DEFAULT)))
    forged_id = new_id(fresh.db_url, 5)
    code, lines, report = verify(fresh.db_url, "--json")
    assert code == 1
    assert problems(report) == [(5, forged_id, "inserted"), (6, fresh.by_seq[5]["id"], "renumbered")]
    code, lines, _ = verify(fresh.db_url)
    assert f"FAIL default: inserted: row seq 5 (id {forged_id}) does not match its MAC and stands where the row " \
           f"written as seq 5 belongs: forged row inserted" in lines, lines
    assert any(line.startswith(f"FAIL default: renumbered: rows seq 6–{n + 1} ") and f"written as seq 5–{n}" in line
               for line in lines), lines


def test_two_rows_with_swapped_seqs_are_named(fresh):
    a, b = fresh.by_seq[4], fresh.by_seq[8]
    sql(fresh.db_url,
        ("UPDATE audit_log SET seq = -1 WHERE id = ?", (a["id"],)),
        ("UPDATE audit_log SET seq = 4 WHERE id = ?", (b["id"],)),
        ("UPDATE audit_log SET seq = 8 WHERE id = ?", (a["id"],)))
    code, lines, report = verify(fresh.db_url, "--json")
    assert code == 1 and problems(report) == [(4, b["id"], "reordered"), (8, a["id"], "reordered")]
    code, lines, _ = verify(fresh.db_url)
    assert f"FAIL default: reordered: row seq 4 (id {b['id']}) was written as seq 8: rows reordered" in lines, lines
    assert f"FAIL default: reordered: row seq 8 (id {a['id']}) was written as seq 4: rows reordered" in lines, lines


def test_two_rows_with_swapped_contents_are_named(fresh):
    a, b = fresh.by_seq[4], fresh.by_seq[8]
    cols = [c for c in COLUMNS if c != "id"]
    assign = ", ".join(f"{c} = ?" for c in cols)
    sql(fresh.db_url,
        ("UPDATE audit_log SET seq = -1 WHERE id = ?", (a["id"],)),
        (f"UPDATE audit_log SET {assign} WHERE id = ?", (*[a[c] for c in cols], b["id"])),
        (f"UPDATE audit_log SET {assign} WHERE id = ?", (*[b[c] for c in cols], a["id"])))
    code, lines, report = verify(fresh.db_url, "--json")
    assert code == 1 and problems(report) == [(4, b["id"], "reordered"), (8, a["id"], "reordered")]
    code, lines, _ = verify(fresh.db_url)
    assert (f"FAIL default: reordered: row seq 4 (id {b['id']}) is out of storage order (row seq 8 (id {a['id']}) "
            f"was stored here): rows reordered") in lines, lines


def test_truncated_tail_with_the_head_rewound_is_caught_by_the_exported_checkpoint(fresh):
    n = len(fresh.rows)
    keep = fresh.by_seq[n - 2]
    sql(fresh.db_url,
        ("DELETE FROM audit_log WHERE project_id = ? AND seq > ?", (DEFAULT, n - 2)),
        ("UPDATE audit_heads SET seq = ?, hash = ? WHERE project_id = ?", (n - 2, keep["hash"], DEFAULT)),
        ("DELETE FROM audit_checkpoints WHERE project_id = ? AND seq > ?", (DEFAULT, n - 2)))
    code, lines, _ = verify(fresh.db_url)
    assert code == 0, "a consistent-looking database alone cannot show a cut tail: that is the exported file's job"
    code, lines, report = verify(fresh.db_url, "--checkpoint", str(fresh.checkpoint_file), "--json")
    assert code == 1 and problems(report) == [(n - 1, None, "truncated")]
    code, lines, _ = verify(fresh.db_url, "--checkpoint", str(fresh.checkpoint_file))
    assert (f"FAIL default: truncated: the log ends at seq {n - 2} but a signed checkpoint covers seq {n}: "
            f"rows seq {n - 1}–{n} were removed") in lines, lines


def test_truncated_tail_without_the_head_rewound(fresh):
    n = len(fresh.rows)
    sql(fresh.db_url, ("DELETE FROM audit_log WHERE project_id = ? AND seq > ?", (DEFAULT, n - 2)),
        ("DELETE FROM audit_checkpoints WHERE project_id = ?", (DEFAULT,)))
    code, lines, _ = verify(fresh.db_url)
    assert code == 1
    assert (f"FAIL default: truncated: the chain head says seq {n} but the log ends at seq {n - 2}: "
            f"rows seq {n - 1}–{n} were removed") in lines, lines


def test_checkpoint_file_of_another_key_is_refused_and_a_bad_signature_reported(fresh, tmp_path):
    from z4j_collector import auditchain

    data = json.loads(fresh.checkpoint_file.read_text())
    other = Ed25519PrivateKey.generate()
    resigned = {**data, "public_key": base64.b64encode(other.public_key().public_bytes_raw()).decode(),
                "checkpoints": [{**cp, "signature": auditchain.sign_checkpoint(
                    other, cp["project_id"], cp["seq"], cp["hash"], cp["ts"])} for cp in data["checkpoints"]]}
    foreign = tmp_path / "foreign.json"
    foreign.write_text(json.dumps(resigned))
    proc = z4j("audit", "verify", "--db", fresh.db_url, "--checkpoint", str(foreign), check=False)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert proc.stderr.startswith(f"z4j: {foreign} was signed by another key"), proc.stderr

    target = next(cp for cp in data["checkpoints"] if cp["project"] == "default")
    sig = bytearray(base64.b64decode(target["signature"]))
    sig[7] ^= 0x01
    target["signature"] = base64.b64encode(bytes(sig)).decode()
    corrupt = tmp_path / "corrupt.json"
    corrupt.write_text(json.dumps(data))
    code, lines, _ = verify(fresh.db_url, "--checkpoint", str(corrupt))
    assert code == 1
    assert (f"FAIL default: checkpoint: checkpoint at seq {target['seq']} has a bad signature: altered, or not "
            f"signed by this collector's key") in lines, lines

    garbage = tmp_path / "garbage.json"
    garbage.write_text("{not json")
    proc = z4j("audit", "verify", "--db", fresh.db_url, "--checkpoint", str(garbage), check=False)
    assert proc.returncode == 1 and proc.stderr.startswith(f"z4j: cannot read checkpoint file {garbage}")


# ------------------------------------------------------------------ retention


def test_prune_keeps_the_chain_verifiable_from_a_checkpoint(collector, tmp_path):
    from z4j_collector.keys import AuditKeys
    from z4j_collector.services.audit import Audit

    api = superuser(collector)
    db = collector.db_url
    make_changes(api, "a")
    first_cp = api.post("/api/v1/projects/default/audit/checkpoints").raise_for_status().json()["checkpoints"][0]
    make_changes(api, "b")
    export = tmp_path / "cp.json"
    z4j("audit", "checkpoint", "export", "--out", str(export), "--db", db)
    second_cp = next(c for c in json.loads(export.read_text())["checkpoints"] if c["project"] == "default")
    make_changes(api, "c")
    rows = rows_of(db)
    a, b = first_cp["seq"], second_cp["seq"]
    assert 1 < a < b < len(rows)

    # A cut between the two checkpoints drops rows only through the older one.
    cut = rows[a + 2]["ts"]
    result = with_store(db, lambda store: Audit(store, AuditKeys.load()).prune(DEFAULT, cut))
    assert (result["through_seq"], result["deleted"]) == (a, a)
    kept = rows_of(db)
    assert kept[0]["seq"] == a + 1 and kept[-1]["action"] == "audit.prune"
    assert json.loads(kept[-1]["detail"])["through_seq"] == a and kept[-1]["outcome"] == "ok"
    code, lines, report = verify(db, "--json")
    assert code == 0, lines
    assert next(c for c in report["chains"] if c["project"] == "default")["anchored_on"] == a

    # The command line: bad input changes nothing; a cut of now drops through the newest checkpoint.
    proc = z4j("audit", "prune", "--older-than-days", "-1", "--db", db, check=False)
    assert proc.returncode == 1 and proc.stderr.strip() == "z4j: --older-than-days must be 0 or more, got -1.0"
    proc = z4j("audit", "prune", "--older-than-days", "30", "--project", "default", "--db", db)
    assert proc.stdout.strip() == "default: nothing pruned: no signed checkpoint covers rows older than the cut"
    proc = z4j("audit", "prune", "--older-than-days", "0", "--project", "default", "--db", db)
    assert proc.stdout.strip() == f"default: deleted {b - a} rows through seq {b} (anchored on a signed checkpoint)"
    assert rows_of(db)[0]["seq"] == b + 1
    code, lines, _ = verify(db, "--checkpoint", str(export))
    assert code == 0, lines
    listed = api.get("/api/v1/projects/default/audit", params={"action": "audit.prune"}).json()["entries"]
    assert [json.loads(json.dumps(e["detail"]))["through_seq"] for e in listed] == [b, a]

    # Rows dropped without a checkpoint to anchor on are reported.
    sql(db, ("DELETE FROM audit_log WHERE project_id = ? AND seq <= ?", (DEFAULT, b + 2)))
    first = rows_of(db)[0]
    code, lines, _ = verify(db)
    assert code == 1
    assert (f"FAIL default: deleted: rows seq 1–{b + 2} are missing and no signed checkpoint at seq {b + 2} "
            f"anchors row seq {b + 3} (id {first['id']})") in lines, lines


# ------------------------------------------------------------------ concurrent writers


def test_concurrent_writers_never_fork_the_chain(db_url, tmp_path):
    """PostgreSQL: two collector processes on one database; SQLite: one collector.
    Many audited changes at once; the chain stays 1..N with no gap, no repeat."""
    collectors = [Collector(db_url, tmp_path).start()]
    if db_url.startswith("postgresql"):
        collectors.append(Collector(db_url, tmp_path).start())
    try:
        api = superuser(collectors[0])
        token = api.headers["Authorization"].split()[1]
        before = len(rows_of(db_url))
        per_thread = 12
        jobs = [(c, t) for c in collectors for t in range(8 // len(collectors))]

        def work(job) -> int:
            c, t = job
            with c.api(token) as client:
                for i in range(per_thread):
                    if i % 3 == 0:
                        client.post("/api/v1/projects/default/agents", json={"name": f"w-{c.port}-{t}-{i}"}
                                    ).raise_for_status()
                    else:
                        client.post("/api/v1/projects/default/tokens", json={"name": f"t-{t}-{i}", "role": "viewer"}
                                    ).raise_for_status()
            return per_thread

        with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
            made = sum(pool.map(work, jobs))
        rows = rows_of(db_url)
        assert made == 8 * per_thread
        assert [r["seq"] for r in rows] == list(range(1, before + made + 1))
        assert len({r["prev_hash"] for r in rows}) == len(rows), "two rows follow the same row: a fork"
        head = with_store(db_url, lambda store: store.audit_head(DEFAULT))
        assert head == (rows[-1]["seq"], rows[-1]["hash"])
        code, lines, _ = verify(db_url, "--project", "default")
        assert code == 0, lines
    finally:
        for c in collectors:
            c.stop()


# ------------------------------------------------------------------ checkpoints on a timer


def test_checkpoints_on_a_timer_verify_with_the_public_key_alone(db_url, tmp_path, monkeypatch):
    monkeypatch.setenv("Z4J_AUDIT_CHECKPOINT_S", "0.3")
    collector = Collector(db_url, tmp_path).start()
    try:
        api = superuser(collector)
        make_changes(api)
        head = len(rows_of(db_url))

        def signed_head():
            data = api.get("/api/v1/projects/default/audit/checkpoints").raise_for_status().json()
            return data if any(cp["seq"] == head for cp in data["checkpoints"]) else None

        exported = wait_until(signed_head, what="a checkpoint of the head signed by the timer")
        make_changes(api, "2")
        head = len(rows_of(db_url))
        exported = wait_until(signed_head, what="a checkpoint of the new head")
        # Several timer passes happened; an unchanged head is not signed again.
        stored = [(cp["seq"], cp["hash"]) for cp in exported["checkpoints"]]
        assert len(stored) == len(set(stored)) >= 2, stored
    finally:
        collector.stop()

    # The auditor's side: only the file, the documented message format and the public key.
    public = Ed25519PublicKey.from_public_bytes(base64.b64decode(exported["public_key"]))

    def message(cp: dict, seq: int) -> bytes:
        return f"z4j-audit-checkpoint-v1\n{cp['project_id']}\n{seq}\n{cp['hash']}\n{cp['ts']!r}\n".encode()

    rows = {r["seq"]: r["hash"] for r in rows_of(db_url)}
    for cp in exported["checkpoints"]:
        public.verify(base64.b64decode(cp["signature"]), message(cp, cp["seq"]))  # raises when wrong
        assert rows[cp["seq"]] == cp["hash"]
        with pytest.raises(InvalidSignature):
            public.verify(base64.b64decode(cp["signature"]), message(cp, cp["seq"] + 1))
    assert time.time() > max(cp["ts"] for cp in exported["checkpoints"])
