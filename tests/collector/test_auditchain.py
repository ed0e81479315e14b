"""The audit chain verifier on its own (z4j_collector/auditchain.py): each kind
of tampering an attacker with database access but without the audit key can
do, and the row and kind the verifier names. The same cases run end to end,
on a real collector's log and through `z4j audit verify`, in test_audit.py."""

from __future__ import annotations

import secrets

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from z4j_collector import auditchain as ac

KEY = secrets.token_bytes(32)
SIGNER = Ed25519PrivateKey.generate()
PUBLIC = SIGNER.public_key()


def chain(n: int, project_id: int = 1, first_id: int = 100) -> list[dict]:
    """A chain of ``n`` rows sealed as the collector seals them (ids as stored)."""
    rows, prev = [], ac.GENESIS
    for seq in range(1, n + 1):
        row = {"id": first_id + seq, "project_id": project_id, "seq": seq, "ts": 1_700_000_000.0 + seq,
               "actor": "ops@example.com", "actor_user_id": 1, "source": "127.0.0.1", "action": "token.create",
               "target": f"token:{seq}", "outcome": "ok", "detail": "{}", "prev_hash": prev}
        row["hash"] = prev = ac.seal(KEY, prev, row)
        rows.append(row)
    return rows


def head_of(rows: list[dict]) -> tuple[int, str]:
    return rows[-1]["seq"], rows[-1]["hash"]


def checkpoint(row: dict, signer: Ed25519PrivateKey = SIGNER) -> dict:
    ts = 1_700_000_500.0
    return {"project_id": row["project_id"], "seq": row["seq"], "hash": row["hash"], "ts": ts,
            "signature": ac.sign_checkpoint(signer, row["project_id"], row["seq"], row["hash"], ts)}


def run(rows, head=None, checkpoints=()) -> ac.Report:
    return ac.verify(1, [dict(r) for r in rows], KEY, PUBLIC, checkpoints, head)


def kinds(report: ac.Report) -> list[tuple[int, int | None, str]]:
    return [(p.seq, p.row_id, p.kind) for p in report.problems]


def test_an_untouched_chain_verifies():
    rows = chain(12)
    report = run(rows, head_of(rows), [checkpoint(rows[5]), checkpoint(rows[11])])
    assert report.ok, report.problems
    assert (report.rows, report.first_seq, report.last_seq, report.checkpoints_checked) == (12, 1, 12, 2)


def test_changed_field_of_a_middle_row():
    rows = chain(10)
    head = head_of(rows)
    rows[4]["target"] = "token:999"
    report = run(rows, head)
    assert kinds(report) == [(5, 105, "changed")]
    assert "row seq 5 (id 105) does not match its MAC" in report.problems[0].message


def test_changed_row_and_its_hash():
    rows = chain(10)
    head = head_of(rows)
    rows[4]["outcome"] = "refused"
    rows[4]["hash"] = "f" * 64
    assert kinds(run(rows, head)) == [(5, 105, "changed")]


def test_deleted_middle_row():
    rows = chain(10)
    head = head_of(rows)
    del rows[4]
    report = run(rows, head)
    assert kinds(report) == [(5, 106, "deleted")]
    assert report.problems[0].message == "seq 5 missing before row seq 6 (id 106): rows deleted"


def test_deleted_rows_then_renumbered():
    rows = chain(10)
    del rows[4:6]
    for row in rows[4:]:
        row["seq"] -= 2
    report = run(rows, head_of(rows))
    assert kinds(report) == [(5, 107, "deleted"), (5, 107, "renumbered")]
    assert report.problems[0].message == "seq 5–6 missing before row seq 5 (id 107): rows deleted"
    assert report.problems[1].message == ("rows seq 5–8 (ids 107–110) were written as seq 7–10: renumbered after "
                                          "rows were deleted before them")


def forged(after: dict, seq: int, row_id: int) -> dict:
    return {**after, "id": row_id, "seq": seq, "target": "user:mallory", "prev_hash": after["hash"],
            "hash": secrets.token_hex(32)}


def test_forged_row_appended():
    rows = chain(8)
    head = head_of(rows)
    rows.append(forged(rows[-1], 9, 109))
    assert kinds(run(rows, head)) == [(9, 109, "inserted")]


def test_forged_row_in_the_middle_with_later_rows_renumbered():
    rows = chain(8)
    for row in rows[4:]:
        row["seq"] += 1
    rows.insert(4, forged(rows[3], 5, 200))
    report = run(rows, head_of(rows))
    assert kinds(report) == [(5, 200, "inserted"), (6, 105, "renumbered")]
    assert report.problems[1].message.startswith("rows seq 6–9 (ids 105–108) were written as seq 5–8")


def test_copied_row_appended():
    rows = chain(6)
    rows.append({**rows[2], "id": 107, "seq": 7})
    report = run(rows, head_of(rows))
    assert (7, 107, "inserted") in kinds(report)
    assert any("repeats the row written as seq 3 (row seq 3 (id 103))" in p.message for p in report.problems)


@pytest.mark.parametrize("a,b", [(3, 7), (4, 5), (8, 9)])
def test_two_rows_with_swapped_seqs(a, b):
    rows = chain(9)
    head = head_of(rows)
    rows[a - 1]["seq"], rows[b - 1]["seq"] = b, a
    report = run(rows, head)
    assert sorted(kinds(report)) == [(a, 100 + b, "reordered"), (b, 100 + a, "reordered")]
    assert any(p.message == f"row seq {a} (id {100 + b}) was written as seq {b}: rows reordered"
               for p in report.problems)


def test_two_rows_with_swapped_contents():
    rows = chain(9)
    head = head_of(rows)
    (rows[2], rows[6]) = ({**rows[6], "id": rows[2]["id"]}, {**rows[2], "id": rows[6]["id"]})
    report = run(rows, head)
    assert kinds(report) == [(3, 107, "reordered"), (7, 103, "reordered")]
    assert report.problems[0].message == ("row seq 3 (id 107) is out of storage order (row seq 7 (id 103) was "
                                          "stored here): rows reordered")


def test_truncated_tail_against_the_head_and_against_a_checkpoint():
    rows = chain(10)
    cp = checkpoint(rows[-1])
    head = head_of(rows)
    del rows[7:]
    assert kinds(run(rows, head)) == [(8, None, "truncated")]
    rewound = head_of(rows)
    assert run(rows, rewound).ok, "a rewound head alone cannot tell"
    report = run(rows, rewound, [cp])
    assert kinds(report) == [(8, None, "truncated")]
    assert report.problems[0].message == ("the log ends at seq 7 but a signed checkpoint covers seq 10: "
                                          "rows seq 8–10 were removed")


def test_truncated_then_written_again_differs_from_the_checkpoint():
    rows = chain(10)
    cp = checkpoint(rows[-1])
    rows = rows[:7]
    prev = rows[-1]["hash"]
    for seq in range(8, 11):  # the collector appends again after the rewound head
        row = {**rows[-1], "id": 200 + seq, "seq": seq, "target": f"new:{seq}", "prev_hash": prev}
        row["hash"] = prev = ac.seal(KEY, prev, row)
        rows.append(row)
    assert kinds(run(rows, head_of(rows), [cp])) == [(10, 210, "truncated")]


def test_bad_and_foreign_checkpoint_signatures():
    rows = chain(5)
    good = checkpoint(rows[-1])
    bad = {**good, "signature": good["signature"][:10] + ("A" if good["signature"][10] != "A" else "B")
           + good["signature"][11:]}
    foreign = checkpoint(rows[-1], Ed25519PrivateKey.generate())
    report = run(rows, head_of(rows), [bad, foreign])
    assert kinds(report) == [(5, None, "checkpoint"), (5, None, "checkpoint")]
    assert "bad signature" in report.problems[0].message


def test_retention_anchors_on_a_checkpoint_and_without_one_is_reported():
    rows = chain(10)
    cp = checkpoint(rows[5])
    kept = rows[6:]
    assert run(kept, head_of(rows), [cp]).ok
    assert run(kept, head_of(rows), [cp]).anchored_on == 6
    report = run(kept, head_of(rows))
    assert kinds(report) == [(7, 107, "deleted")]
    assert report.problems[0].message == ("rows seq 1–6 are missing and no signed checkpoint at seq 6 anchors "
                                          "row seq 7 (id 107)")


def test_wrong_key_is_one_line():
    rows = chain(6)
    report = ac.verify(1, rows, secrets.token_bytes(32), PUBLIC, (), head_of(rows))
    assert len(report.problems) == 1 and "wrong audit chain key" in report.problems[0].message


def test_empty_log_under_a_checkpoint_is_truncated():
    rows = chain(4)
    report = run([], head_of(rows), [checkpoint(rows[-1])])
    assert kinds(report) == [(4, None, "truncated")]
